"""Cosine similarity, first as the report's equation 2, then as the matrix CLIP computes."""
import torch


class NonFiniteError(ValueError, FloatingPointError):
    """Features or classifier rows with NaN or inf: a score from them would be meaningless (an argmax of NaN
    rows is always class 0). A FloatingPointError too, so the training loop reports it with its epoch and step."""


def check_finite(tensor: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """`tensor` unchanged, or a NonFiniteError saying how many of its rows hold NaN/inf and where they came from.

    `source` names where the rows were made (e.g. "the image tower"), so the message points at what to fix.
    """
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return tensor
    rows = finite.reshape(len(tensor), -1).all(dim=1) if tensor.dim() else finite.reshape(1)
    bad = torch.nonzero(~rows).flatten().tolist()
    raise NonFiniteError(f"{len(bad)} of {len(rows)} rows of {name} are not finite, NaN or inf (rows {bad[:10]}"
                         f"{', ...' if len(bad) > 10 else ''}); they came from {source}. A score from them would "
                         f"be meaningless: find why {source} gave them (a diverged model, zero-length features, "
                         f"an fp16 overflow: try fp32) and recompute.")


def cosine_similarity(a, b):
    """cos(a, b) = sum(a_i b_i) / (sqrt(sum a_i^2) sqrt(sum b_i^2)), written out term by term (eq. 2)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"cosine_similarity takes two vectors of the same length, got {tuple(a.shape)} and {tuple(b.shape)}")
    dot = (a * b).sum()
    norm_a = (a * a).sum().sqrt()
    norm_b = (b * b).sum().sqrt()
    return dot / (norm_a * norm_b)


def normalize(features):
    """Each row scaled to unit length, so a dot product between rows is their cosine."""
    return features / features.norm(dim=-1, keepdim=True)


def similarity_matrix(image_features, text_features):
    """[n_images, n_texts] cosines: one matmul of unit vectors does every pair of eq. 2 at once.

    Features with NaN or inf are refused (NonFiniteError); two dtypes (fp32 and fp16) meet in the wider one.
    """
    check_finite(image_features, "image_features", "the image tower")
    check_finite(text_features, "text_features", "the text tower")
    dtype = torch.promote_types(image_features.dtype, text_features.dtype)
    return normalize(image_features.to(dtype)) @ normalize(text_features.to(dtype)).T
