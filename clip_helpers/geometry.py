"""The geometry of the embedding space: the modality gap (Liang et al., 2022) and each modality's cone.

CLIP's image and text features, once normalised, do not mix on the sphere: each modality sits in its own
narrow cone, already at initialisation (a random network maps all inputs to a narrow cone), and the
contrastive loss at a low temperature keeps the two cones apart. Two numbers describe it:
- the gap: the distance between the two modalities' centroids (means of the unit vectors);
- a cone's spread: the mean cosine of its unit vectors to their own centroid (1: one direction; 0: no cone).
A consequence users see: cosines between an image and a text are all small and bunched (e.g. 0.2-0.35 for
ViT-B/32), so "0.3" means nothing alone; only the ranking of a row is meaningful. Removing the gap (each
modality shifted to its own centroid, then re-normalised) spreads the cosines over [-1, 1].
"""
import torch

from .similarity import normalize, similarity_matrix


def as_features(features, name: str) -> torch.Tensor:
    features = torch.as_tensor(features).float() if not torch.is_tensor(features) else features
    if features.dim() != 2 or len(features) < 1:
        raise ValueError(f"{name} must be a [n, dim] matrix with n >= 1, got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} holds NaN or inf values: the features themselves are broken, check the model")
    if (features.norm(dim=-1) == 0).any():
        raise ValueError(f"{name} has an all-zero row, which has no direction: drop it before measuring geometry")
    return features


def centroid(features) -> torch.Tensor:
    """The mean of the unit vectors (not itself a unit vector: its length says how tight the cone is)."""
    return normalize(as_features(features, "features")).mean(dim=0)


def modality_gap(image_features, text_features) -> float:
    """||mean(normalised images) - mean(normalised texts)||: 0 when the modalities share a centroid, at most 2."""
    image_features, text_features = as_features(image_features, "image_features"), as_features(text_features, "text_features")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"image_features have {image_features.shape[1]} dimensions and text_features "
                         f"{text_features.shape[1]}: they must come from the same model")
    return (centroid(image_features) - centroid(text_features)).norm().item()


def cone_spread(features) -> float:
    """The mean cosine of each unit vector to the modality's centroid: 1 for one direction, near 0 for no cone."""
    features = normalize(as_features(features, "features"))
    direction = normalize(features.mean(dim=0, keepdim=True))
    return (features @ direction.T).mean().item()


def without_gap(image_features, text_features) -> tuple[torch.Tensor, torch.Tensor]:
    """Both modalities shifted so their centroids sit at the origin, then re-normalised (unit rows)."""
    image_features, text_features = normalize(as_features(image_features, "image_features")), normalize(
        as_features(text_features, "text_features"))
    if len(image_features) < 2 or len(text_features) < 2:
        raise ValueError("removing the gap needs at least 2 images and 2 texts: one vector minus its own mean is 0")
    return (normalize(image_features - image_features.mean(dim=0)),
            normalize(text_features - text_features.mean(dim=0)))


def geometry_summary(image_features, text_features) -> dict[str, float]:
    """The gap, both cones' spreads, and the image-text cosines a user sees, before and after removing the gap."""
    similarities = similarity_matrix(image_features, text_features)
    shifted = similarity_matrix(*without_gap(image_features, text_features))
    return {"modality_gap": modality_gap(image_features, text_features),
            "image_spread": cone_spread(image_features), "text_spread": cone_spread(text_features),
            "mean_similarity": similarities.mean().item(), "similarity_std": similarities.std().item(),
            "mean_similarity_without_gap": shifted.mean().item(), "similarity_std_without_gap": shifted.std().item()}


def best_threshold(similarities, matches) -> float:
    """Of the observed similarities, the threshold whose rule "a match when similarity >= threshold" is right most
    often on these (held-out) pairs; the smallest such value on a tie. `matches`: True for a matching pair."""
    similarities = torch.as_tensor(similarities, dtype=torch.float64).flatten()
    matches = torch.as_tensor(matches).flatten()
    if len(similarities) != len(matches) or len(similarities) == 0:
        raise ValueError(f"{len(similarities)} similarities and {len(matches)} matches: give one truth value per "
                         f"similarity, at least one pair")
    if matches.dtype != torch.bool:
        raise ValueError(f"matches must be booleans (True: the pair matches), not {matches.dtype}")
    candidates = similarities.unique()  # sorted ascending: argmax keeps the first, smallest, of the best
    accuracy = ((similarities[None, :] >= candidates[:, None]) == matches[None, :]).double().mean(dim=1)
    return candidates[int(accuracy.argmax())].item()
