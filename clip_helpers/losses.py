"""CLIP's symmetric contrastive loss (the paper's Figure 3 pseudocode), with multi-positive targets, the floor
that duplicate captions put under it, and how it grows with the batch size."""
import math
import warnings
from collections import Counter

import numpy as np
import pandas as pd
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

    An empty batch, a logit_scale that is not a finite number >= 0, or features with NaN/inf are refused
    (ValueError). One pair has no negatives: its loss is 0 whatever the features, said with a warning.
    """
    check_batch(image_features, text_features, logit_scale)
    logits_per_image = logit_scale * similarity_matrix(image_features, text_features)
    targets = contrastive_targets(labels, logits_per_image)
    loss_images = F.cross_entropy(logits_per_image, targets)
    # Same-label targets are symmetric, so the text->image direction uses the same targets.
    loss_texts = F.cross_entropy(logits_per_image.T, targets)
    return (loss_images + loss_texts) / 2


def check_batch(image_features, text_features, logit_scale) -> None:
    """A ValueError for a batch clip_loss cannot score, a warning for one whose loss says nothing."""
    if len(image_features) == 0 or len(text_features) == 0:
        raise ValueError(f"clip_loss needs at least one image-text pair, got {len(image_features)} images and "
                         f"{len(text_features)} texts (an empty batch): skip empty batches before the loss")
    scale = torch.as_tensor(logit_scale).detach().float()
    if scale.numel() != 1 or not bool(torch.isfinite(scale).all()) or float(scale) < 0:
        raise ValueError(f"logit_scale must be one finite number >= 0 (the multiplier, model.logit_scale.exp()), "
                         f"got {scale.tolist()}: an infinite scale makes every logit inf and the loss NaN; "
                         f"clamp the log-scale parameter (the paper caps the multiplier at 100)")
    if len(image_features) == 1 and len(text_features) == 1:
        warnings.warn("clip_loss of a single image-text pair is 0 whatever the features: a batch of one has no "
                      "negatives to contrast with. Use batches of at least two pairs.", stacklevel=3)


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


def distinct_class_batch(labels, batch_size: int, rng) -> torch.Tensor:
    """Indices of `batch_size` items of `batch_size` different classes (drawn by `rng`): every caption differs."""
    labels = np.asarray(labels)
    chosen = rng.choice(np.unique(labels), batch_size, replace=False)
    return torch.as_tensor([rng.choice(np.flatnonzero(labels == label)) for label in chosen])


def loss_by_batch_size(image_features, labels, caption_features, logit_scale, batch_sizes=(2, 4, 8, 16, 32, 64),
                       n_batches: int = 10, seed: int = 0) -> pd.DataFrame:
    """Mean plain clip_loss of `n_batches` batches at each batch size (rows), of two kinds: one image of each of n
    different classes (while there are n classes), and n images drawn at random, whose duplicate captions put
    loss_floor under the loss. Item i's caption is caption_features[labels[i]]. Sizes above the pool are left out.
    Columns: chance (log n), both kinds, the random batches' floor and how many images share a class."""
    labels = torch.as_tensor(labels)
    n_classes, rng, rows = len(labels.unique()), np.random.default_rng(seed), {}

    def loss(batch):
        return clip_loss(image_features[batch], caption_features[labels[batch]], logit_scale).item()

    for batch_size in [size for size in batch_sizes if size <= len(labels)]:
        distinct, random_losses, floors, duplicates = [], [], [], []
        for _ in range(n_batches):
            if batch_size <= n_classes:
                distinct.append(loss(distinct_class_batch(labels, batch_size, rng)))
            batch = torch.as_tensor(rng.choice(len(labels), batch_size, replace=False))
            random_losses.append(loss(batch))
            floors.append(loss_floor(labels[batch]))
            duplicates.append(batch_size - len(labels[batch].unique()))
        rows[batch_size] = {"chance: log(batch size)": math.log(batch_size),
                            "distinct classes (no duplicate captions)": np.mean(distinct) if distinct else np.nan,
                            "random batches": np.mean(random_losses),
                            "floor of the random batches (duplicate captions)": np.mean(floors),
                            "images sharing a class with another": np.mean(duplicates)}
    return pd.DataFrame(rows).T
