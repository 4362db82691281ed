"""Retrieval: similarity -> ranks -> recall@k, text-to-image and image-to-text, as the CLIP benchmarks define it.

A query is found at k when ANY of its true partners is among its k most similar gallery items (the COCO /
Flickr30k protocol of the CLIP paper and open_clip: an image with five captions is found when one of the
five is in the top k; a caption has one image).

Ties: open_clip and clip_benchmark sort with torch.argsort / torch.topk, whose order among equal scores is
not specified. Here ties are broken by gallery index, lower first, always: the order of a stable descending
sort (`np.argsort(-scores, kind="stable")`). A true partner tied with an earlier distractor therefore ranks
after it, one tied with a later distractor before it. Exact ties are real here, not theoretical:
the same caption string written for several images gives identical text features.
"""
import numpy as np
import pandas as pd
import torch

from .similarity import similarity_matrix

RECALL_AT = (1, 5, 10)


def check_similarity(similarity) -> torch.Tensor:
    similarity = torch.as_tensor(similarity).detach().cpu()
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be a [n_queries, n_gallery] matrix, got shape {tuple(similarity.shape)}")
    if not torch.isfinite(similarity).all():
        raise ValueError("similarity has NaN or infinite entries (features with zero length?); "
                         "recompute the features before ranking")
    return similarity


def partners(text_image_ids, n_images: int) -> torch.Tensor:
    """[n_texts, n_images] bool: text t's true partner is image text_image_ids[t] (transpose for image->text)."""
    text_image_ids = torch.as_tensor(text_image_ids).long().cpu()
    if len(text_image_ids) and (text_image_ids.min() < 0 or text_image_ids.max() >= n_images):
        raise ValueError(f"text_image_ids must index the {n_images} images (0..{n_images - 1}), got values from "
                         f"{int(text_image_ids.min())} to {int(text_image_ids.max())}")
    return text_image_ids[:, None] == torch.arange(n_images)[None, :]


def ranks(similarity, positives, chunk_size: int = 1024) -> torch.Tensor:
    """[n_queries] long: the 0-based rank of each query's best-placed true partner (0 = top hit).

    similarity [n_queries, n_gallery] (higher = more similar); positives the same shape, bool. With ties broken
    by gallery index (module docstring) the rank of gallery item p is #{j: s_j > s_p} + #{j < p: s_j == s_p};
    the best-placed partner is the highest-scoring one, the lowest index among equals.
    """
    similarity = check_similarity(similarity)
    positives = torch.as_tensor(positives, dtype=torch.bool).cpu()
    if positives.shape != similarity.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must have the shape of "
                         f"similarity {tuple(similarity.shape)}")
    lonely = torch.nonzero(~positives.any(dim=1)).flatten()
    if len(lonely):
        raise ValueError(f"queries {lonely[:10].tolist()} have no true partner in the gallery; "
                         "drop them or fix the partner ids")
    result = []
    gallery = torch.arange(similarity.shape[1])
    for start in range(0, len(similarity), chunk_size):  # chunks keep the [n, n_gallery] temporaries small
        scores, found = similarity[start:start + chunk_size], positives[start:start + chunk_size]
        best_score = scores.masked_fill(~found, float("-inf")).max(dim=1, keepdim=True).values
        best_index = (found & (scores == best_score)).int().argmax(dim=1, keepdim=True)  # first such index
        above = (scores > best_score).sum(dim=1)
        tied_before = ((scores == best_score) & (gallery[None, :] < best_index)).sum(dim=1)
        result.append(above + tied_before)
    return torch.cat(result) if result else torch.zeros(0, dtype=torch.long)


def recall_at_k(similarity, positives, ks=RECALL_AT) -> dict[int, float]:
    """{k: percent of queries with a true partner among their top k} (k beyond the gallery counts as all)."""
    query_ranks = ranks(similarity, positives)
    if len(query_ranks) == 0:
        raise ValueError("recall_at_k got no queries (a similarity matrix with 0 rows): a recall over nothing is "
                         "undefined; give at least one query")
    return {k: 100 * (query_ranks < k).float().mean().item() for k in ks}


def same_class(text_labels, image_labels) -> torch.Tensor:
    """[n_texts, n_images] bool: a caption written for a class (not for one image) describes every image of it."""
    text_labels, image_labels = torch.as_tensor(text_labels).long().cpu(), torch.as_tensor(image_labels).long().cpu()
    return text_labels[:, None] == image_labels[None, :]


def retrieval_scores(image_features, text_features, text_image_ids, ks=RECALL_AT, text_to_image=None) -> pd.DataFrame:
    """Recall@k (percent) both ways: rows "text->image" and "image->text", one column per k ("R@1", ...).

    text_image_ids[t] is the image that text t describes; an image may have several texts, and every image
    needs at least one. Or pass text_image_ids=None and text_to_image, a [n_texts, n_images] bool matrix of
    true partners (e.g. `same_class`), where a text may have several images.
    """
    # similarity_matrix refuses non-finite features, naming the rows, before any ranking
    similarity = similarity_matrix(torch.as_tensor(image_features).float(), torch.as_tensor(text_features).float())
    if text_to_image is None:
        text_to_image = partners(text_image_ids, len(similarity))
    rows = {"text->image": recall_at_k(similarity.T, text_to_image, ks),
            "image->text": recall_at_k(similarity, text_to_image.T, ks)}
    return pd.DataFrame({direction: {f"R@{k}": value for k, value in row.items()}
                         for direction, row in rows.items()}).T


def top_hits(similarity, query: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery indices, scores) of the k most similar items to row `query`, best first, ties by index."""
    scores = check_similarity(similarity)[query]
    order = np.argsort(-scores.double().numpy(), kind="stable")[:k]
    order = torch.from_numpy(order.copy())
    return order, scores[order]
