"""CLIP's symmetric contrastive loss (the paper's Figure 3 pseudocode), with multi-positive targets."""
import math
from collections import Counter

import torch
import torch.nn.functional as F

from .similarity import similarity_matrix


def contrastive_targets(labels, logits):
    """Row i says which columns are i's partners: the diagonal, or every pair sharing i's label."""
    if labels is None:
        return torch.arange(len(logits), device=logits.device)
    labels = torch.as_tensor(labels, device=logits.device)
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)
    # Two dog photos are not negatives of each other's caption: they share the target mass.
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(image_features, text_features, logit_scale, labels=None):
    """Mean of the image->text and text->image cross-entropies over the in-batch similarity logits.

    `logit_scale` is the multiplier itself (the model's `logit_scale.exp()`). Without `labels` the i-th
    image and i-th text are the only positive pair. With `labels`, every pair that shares a label is a
    positive (soft targets): two dog photos captioned "a photo of a dog." and "a blurry photo of a dog."
    are no longer pushed apart as negatives. (Exact duplicate captions have identical features, so for
    them both versions give the same value, with a floor of log(k) for k duplicates rather than 0.)
    """
    logits_per_image = logit_scale * similarity_matrix(image_features, text_features)
    targets = contrastive_targets(labels, logits_per_image)
    loss_images = F.cross_entropy(logits_per_image, targets)
    # Same-label targets are symmetric, so the text->image direction uses the same targets.
    loss_texts = F.cross_entropy(logits_per_image.T, targets)
    return (loss_images + loss_texts) / 2


def loss_floor(labels) -> float:
    """The infimum of the plain symmetric loss (diagonal targets) when items with equal labels share one caption.

    k identical captions have identical features, so in image->text image i's k caption columns carry the same
    logit: p(own caption) <= 1/k, each of the k rows costs at least log k. In text->image the k identical rows give
    one distribution over images, and their k targets share at most probability 1: again log k per row. Both bounds
    are reached together (images of one class on their caption, logit_scale -> infinity), so the floor of either
    direction, and of their mean, is (1/n) sum over classes of k log k. clip_loss(labels=...) has the same floor
    for exact duplicates (their soft targets spread 1/k over k identical logits).
    """
    counts = Counter(torch.as_tensor(labels).tolist())
    if not counts:
        raise ValueError("loss_floor needs the labels of at least one item")
    return sum(k * math.log(k) for k in counts.values()) / sum(counts.values())


def inbatch_ceiling(labels) -> float:
    """The best in-batch matching accuracy (a fraction) when items with equal labels share one caption: of k
    identical captions at most one can be argmax-matched to its own image, so (number of distinct labels) / n."""
    labels = torch.as_tensor(labels)
    return len(labels.unique()) / len(labels)
