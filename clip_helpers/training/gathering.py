"""Contrastive training on several processes: features gathered across processes with their gradients, the loss
of the global batch, and the model behind one forward for DistributedDataParallel.

Each process must score its images against the captions of the *whole* global batch, so features are gathered
(gather_with_grad), the gradient of every slice flowing back to the process that made it. With that,
distributed_clip_loss is the single-process clip_loss on the global batch, and DDP's averaged gradients are the
single-process gradients on it (tests/test_distributed.py checks both, every parameter). Used only when there
are several processes (clip_helpers.training.distributed.Several).
"""
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..losses import clip_loss
from ..siglip import siglip_loss
from .step import clip_features


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every process the *sum* over processes of the gradient of its slice.

    Why a sum: every process computes the same global loss L from the same gathered features, but only
    process r can push gradients into the encoder that made slice r. Summing the N processes' gradients
    of slice r (N identical copies of dL/df_r) and letting DDP average the parameter gradients (divide
    by N) gives exactly dL/dtheta, and logit_scale, which every process reaches directly, is averaged
    over N equal values: exact too, with the loss left unscaled.
    The alternatives are not: open_clip's default (gather without grad, put the local tensor back in its
    slot) gives encoder gradients 1/N of the true ones after DDP's mean; multiplying that loss by N fixes
    the encoders but makes logit_scale's gradient N times too large. torch.distributed.nn.all_gather does
    the same sum as this (as a reduce-scatter) but is deprecated and emulated by N scatters on gloo.
    """

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.length = dist.get_rank(), len(tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.length:(ctx.rank + 1) * ctx.length]


def check_same_length(tensor: torch.Tensor) -> None:
    """Refuse to gather batches of different sizes: all_gather needs equal shapes, and NCCL may hang instead of failing."""
    lengths = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, torch.tensor([len(tensor)], device=tensor.device))
    lengths = [int(n) for n in lengths]
    if len(set(lengths)) > 1:
        raise ValueError(f"The processes hold batches of {lengths} items; gathering needs equal ones. Load the "
                         f"training data with clip_helpers.training.batches.sharded_train_loader (equal shards, no short last "
                         f"batch).")


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all processes concatenated in rank order; gradients reach each process's own slice."""
    return _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all processes concatenated in rank order, without gradients (labels)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                          labels: torch.Tensor | None = None) -> torch.Tensor:
    """clip_loss over the global batch: every process's images against every process's captions.

    Every process returns the same value, the single-process loss on the global batch (so it can be
    logged from any of them). Backpropagated through a DistributedDataParallel model it gives exactly the
    single-process gradients (see _GatherWithGrad); no scaling by the number of processes is needed.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return clip_loss(image_features, text_features, logit_scale, labels)
    check_same_length(image_features)
    if labels is not None:
        labels = gather(torch.as_tensor(labels, device=image_features.device))
    return clip_loss(gather_with_grad(image_features), gather_with_grad(text_features), logit_scale, labels)


# ---------------------------------------------------------------- the model

def distributed_siglip_loss(image_features, text_features, logit_scale, bias, labels=None):
    """siglip_loss over the global batch under torchrun (the same value on every process; exact gradients, as
    distributed.distributed_clip_loss); called under torchrun only (one process: siglip.siglip_loss)."""
    check_same_length(image_features)
    if labels is not None:
        labels = gather(torch.as_tensor(labels, device=image_features.device))
    return siglip_loss(gather_with_grad(image_features), gather_with_grad(text_features), logit_scale, bias, labels)


class CLIPFeatures(nn.Module):
    """CLIP's two towers behind one forward, the call DistributedDataParallel needs to synchronise gradients
    (DDP only prepares its gradient all-reduce in its own forward; calling model.encode_image skips it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, texts: list[str]):
        """(image_features, text_features, logit_scale): unnormalised features and the multiplier."""
        return clip_features(self.model, images, texts)


def wrap_model(model: nn.Module, processes) -> nn.Module:
    """CLIPFeatures(model) inside DistributedDataParallel, for one of several processes (distributed.Processes).

    The CLIP model stays reachable as .module.model (unwrap). A ResNet tower's BatchNorm normalises
    over the local batch; on GPUs it becomes SyncBatchNorm (global statistics, as one process would have),
    on CPUs torch has no SyncBatchNorm, so the run is then not the single-process run: a warning says so.
    """
    features = CLIPFeatures(model)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_batchnorm and processes.device.startswith("cuda"):
        features = nn.SyncBatchNorm.convert_sync_batchnorm(features)
    elif has_batchnorm:
        warnings.warn("This model has BatchNorm layers (a ResNet image tower) and torch has no SyncBatchNorm on CPU: "
                      "each process normalises over its own images, so training differs slightly from one process "
                      "on the global batch. A ViT tower has no BatchNorm.", stacklevel=2)
    device_ids = [processes.local_rank] if processes.device.startswith("cuda") else None
    return DistributedDataParallel(features, device_ids=device_ids)


def unwrap(wrapped: nn.Module) -> nn.Module:
    """The CLIP model inside wrap_model's result (what checkpoints save, so they load in one process);
    a CLIP model itself is returned as it is."""
    wrapped = wrapped.module if isinstance(wrapped, DistributedDataParallel) else wrapped
    return wrapped.model if isinstance(wrapped, CLIPFeatures) else wrapped


# ---------------------------------------------------------------- a global batch's parts

def all_labels(labels: torch.Tensor, processes) -> torch.Tensor:
    """The labels of the whole global batch, in rank order."""
    return gather(labels.to(processes.device)).cpu()


def own_part(items: list, processes) -> list:
    """This process's contiguous share of a global batch's `items` (batches.ShardedSampler's rule)."""
    size = len(items) // processes.world_size
    return items[processes.rank * size:(processes.rank + 1) * size]
