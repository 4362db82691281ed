"""The sigmoid loss of SigLIP (Zhai et al. 2023): every image-caption pair an independent binary decision.

    loss = -(1/n) sum_ij log sigmoid(z_ij (t x_i . y_j + b)),   z_ij = +1 for a positive pair, -1 otherwise

with x, y the normalised features, t = exp(t') the learnable temperature (the multiplier, initialised to 10)
and b a learnable bias (initialised to -10). The bias matters at the start: with n - 1 negatives per positive,
b = -10 makes every pair start near "no", so the first steps are not spent pushing n^2 - n negatives down.
No softmax couples the pairs, so the loss of a global batch is a plain sum of blocks (shard i's images
against shard j's captions); under torchrun it is computed here on the gathered features (each process
scores its images against all captions), which equals the single-process loss, with exact gradients
through training.gathering.gather_with_grad (distributed_siglip_loss).
Same-class pairs are positives (z = +1) when labels are given, as in losses.clip_loss's multi-positive form.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .similarity import similarity_matrix

SIGLIP_LOGIT_SCALE = 10.0  # t = exp(t'), t' initialised to log 10
SIGLIP_BIAS = -10.0


def pair_signs(labels, n_images: int, n_texts: int, device=None) -> torch.Tensor:
    """z_ij: +1 where image i and text j are a positive pair (the diagonal, or the same label), -1 elsewhere."""
    if labels is None:
        if n_images != n_texts:
            raise ValueError(f"{n_images} images and {n_texts} texts: without labels the i-th text is the i-th "
                             f"image's caption, so give as many texts as images (or labels for both)")
        positive = torch.eye(n_images, dtype=torch.bool, device=device)
    else:
        labels = torch.as_tensor(labels, device=device)
        if len(labels) != n_images or n_images != n_texts:
            raise ValueError(f"{len(labels)} labels for {n_images} images and {n_texts} texts: give one label per pair")
        positive = labels[:, None] == labels[None, :]
    return positive.float() * 2 - 1


def siglip_loss(image_features, text_features, logit_scale, bias, labels=None):
    """The sigmoid loss of a batch, summed over all pairs and divided by the number of images (the paper's)."""
    logits = logit_scale * similarity_matrix(image_features, text_features) + bias
    signs = pair_signs(labels, len(image_features), len(text_features), logits.device)
    return -F.logsigmoid(signs * logits).sum() / len(image_features)


class SigmoidLoss(nn.Module):
    """The sigmoid loss with its learnable bias, called like losses.clip_loss: (image_features, text_features,
    logit_scale, labels). The temperature stays the model's own logit_scale parameter (reset it with
    use_siglip_temperature); give this module's parameters to the optimiser too (and save them with the model)."""

    def __init__(self, bias: float = SIGLIP_BIAS):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, image_features, text_features, logit_scale, labels=None):
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            from .training.gathering import distributed_siglip_loss  # under torchrun only: one process needs no gathering
            return distributed_siglip_loss(image_features, text_features, logit_scale, self.bias, labels)
        return siglip_loss(image_features, text_features, logit_scale, self.bias, labels)


def use_siglip_temperature(model, logit_scale: float = SIGLIP_LOGIT_SCALE) -> None:
    """Set the model's temperature parameter t' to log(logit_scale), SigLIP's start (CLIP starts at 1/0.07)."""
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale is the multiplier exp(t') and must be a finite number > 0, not {logit_scale!r}")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
