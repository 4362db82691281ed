"""CLIP's symmetric contrastive loss (the paper's Figure 3 pseudocode), with multi-positive targets."""
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
