"""Fine-tuning on several processes with torch.distributed, launched by torchrun (NCCL on GPUs, gloo on CPUs).

    torchrun --nproc_per_node 2 -m clip_helpers.training.finetune ...

Contrastive training has one catch that a plain DistributedDataParallel wrapper gets wrong: each process
must score its images against the captions of the *whole* global batch, so features are gathered across
processes (gather_with_grad), the gradient of every slice flowing back to the process that made it.
With that, distributed_clip_loss is the single-process clip_loss on the global batch, and DDP's averaged
gradients are the single-process gradients on it (tests/test_distributed.py checks both, every parameter).

The global batch: the loader's batch_size stays the *global* batch, split into equal contiguous chunks, one
per process in rank order (batches.shard, batches.ShardedSampler), so adding processes leaves the optimisation, the
negatives and the learning-rate schedule unchanged; only the work per process shrinks. train.fine_tune
uses all of this under torchrun; clip_helpers.training.main_process makes rank 0 the one writer.
"""
import os
import warnings
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..losses import clip_loss
from ..text import encode_texts

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Processes(NamedTuple):
    """Where this process stands among the ones torchrun started."""
    rank: int
    world_size: int
    local_rank: int
    device: str
    is_main: bool


SINGLE = Processes(rank=0, world_size=1, local_rank=0, device="cpu", is_main=True)


def init_from_env(device: str | None = None, timeout_s: float = 1800) -> Processes:
    """Join the process group torchrun describes in the environment; one process when there is none.

    `device`: "cuda" or "cpu" (default: cuda when a GPU is visible). Each process takes the GPU of its
    LOCAL_RANK and NCCL; CPU processes use gloo. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing
    is initialised and the result says world_size 1.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE._replace(device="cuda:0" if device.startswith("cuda") else device)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: start the processes "
                           f"with torchrun (torchrun --nproc_per_node N -m clip_helpers.training.finetune ...), which sets them all.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                               f"start at most that many processes per node (--nproc_per_node).")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s),
                                device_id=torch.device(device) if backend == "nccl" else None)
    return Processes(rank, world_size, local_rank, device, rank == 0)


def cleanup() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True in the main process (rank 0), and in a single process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def processes_for(model: nn.Module) -> Processes:
    """The processes torchrun started, joining their group on first use, or one process without torchrun."""
    device = next(model.parameters()).device
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE._replace(device=str(device))
    processes = init_from_env(device.type)
    if torch.device(processes.device) != device:
        raise ValueError(f"The model is on {device} but process {processes.rank} (LOCAL_RANK {processes.local_rank}) "
                         f"trains on {processes.device}: move it there first (model.to(init_from_env().device)).")
    return processes


# ---------------------------------------------------------------- gathering features

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
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all processes concatenated in rank order, without gradients (labels)."""
    if world_size() == 1:
        return tensor
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
    if world_size() == 1:
        return clip_loss(image_features, text_features, logit_scale, labels)
    check_same_length(image_features)
    if labels is not None:
        labels = gather(torch.as_tensor(labels, device=image_features.device))
    return clip_loss(gather_with_grad(image_features), gather_with_grad(text_features), logit_scale, labels)


# ---------------------------------------------------------------- the model

class CLIPFeatures(nn.Module):
    """CLIP's two towers behind one forward, the call DistributedDataParallel needs to synchronise gradients
    (DDP only prepares its gradient all-reduce in its own forward; calling model.encode_image skips it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, texts: list[str]):
        """(image_features, text_features, logit_scale): unnormalised features and the multiplier."""
        return clip_features(self.model, images, texts)


def clip_features(model: nn.Module, images: torch.Tensor, texts: list[str]):
    """(image_features, text_features, logit_scale) of a CLIP model or of wrap_model's result."""
    if isinstance(model, (CLIPFeatures, DistributedDataParallel)):
        return model(images, texts)  # through DDP's forward, which readies its gradient all-reduce
    return model.encode_image(images), encode_texts(model, texts), model.logit_scale.exp()


def wrap_model(model: nn.Module, processes: Processes) -> nn.Module:
    """CLIPFeatures(model), inside DistributedDataParallel when there are several processes.

    The CLIP model stays reachable as .module.model (DDP) or .model. A ResNet tower's BatchNorm normalises
    over the local batch; on GPUs it becomes SyncBatchNorm (global statistics, as one process would have),
    on CPUs torch has no SyncBatchNorm, so the run is then not the single-process run: a warning says so.
    """
    features = CLIPFeatures(model)
    if processes.world_size == 1:
        return features
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

def all_labels(labels: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The labels of the whole global batch, in rank order (the loader's labels in one process)."""
    if processes.world_size == 1:
        return labels
    return gather(labels.to(processes.device)).cpu()


def own_part(items: list, processes: Processes) -> list:
    """This process's contiguous share of a global batch's `items` (batches.ShardedSampler's rule)."""
    size = len(items) // processes.world_size
    return items[processes.rank * size:(processes.rank + 1) * size]
