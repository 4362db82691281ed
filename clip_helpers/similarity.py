"""Cosine similarity, first as the report's equation 2, then as the matrix CLIP computes."""
import torch


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
    """[n_images, n_texts] cosines: one matmul of unit vectors does every pair of eq. 2 at once."""
    return normalize(image_features) @ normalize(text_features).T
