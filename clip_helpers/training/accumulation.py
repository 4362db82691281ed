"""Gradient accumulation that keeps the negatives (GradCache, Gao et al. 2021; open_clip's --accum-freq).

A contrastive loss does not split over a batch: every image's loss depends on every caption. Summing the
losses of N chunks of B pairs (naive accumulation) scores each image against B captions, not N x B: a
different, weaker objective with a different gradient. GradCache gets the gradient of the N x B loss while
holding one chunk's activations at a time:
1. encode every chunk without autograd and keep only the features (N x B x dim numbers, small);
2. compute the full-batch loss on those features, with gradients w.r.t. the features and logit_scale;
3. encode each chunk again, now with autograd, and push the cached feature gradients through it
   (`torch.autograd.backward(features, grads)`); the parameter gradients add up over chunks to the
   one-pass gradient, by the chain rule.
Step 3 must reproduce step 1's features exactly, or the cached gradients belong to another point:
- random layers (dropout): the RNG state of each chunk is saved in step 1 and replayed in step 3. CLIP's
  towers have no dropout (its attention's dropout is 0), so this costs nothing there, but a model with
  dropout stays exact;
- BatchNorm in train mode (the ResNet image tower of MINI_CLIP and RN50) normalises with the statistics of
  the batch it sees: a chunk's, not the global batch's. Steps 1 and 3 agree with each other (same chunk),
  so the result is the exact gradient of the loss *with per-chunk BatchNorm statistics*, which differs
  from one pass over N x B (as it does across torchrun processes without SyncBatchNorm). The running
  statistics are restored after step 1, so they are updated once per chunk, as in plain chunked training.
  A ViT tower (LayerNorm only) has none of this: GradCache equals the one pass up to rounding.
The cost: every chunk is encoded twice (benchmarks/accumulation.py measures the time and memory); the memory is one chunk's.

`grad_cache_backward` is the whole step up to `optimizer.step()` (step.train_step calls it when
TrainConfig.accum_steps > 1). Under torchrun each process calls it on its share with a loss that gathers the
features (distributed_clip_loss, SigmoidLoss) and the DDP wrapper as `forward`: N processes x K chunks,
the loss over all N x K chunks' features, and all but the last chunk's backward in DDP's no_sync.
"""
import contextlib

import torch
from torch import nn

from ..device import amp_context
from ..losses import clip_loss
from .step import clip_features


def chunk_slices(batch_size: int, num_chunks: int) -> list[slice]:
    """`num_chunks` contiguous slices covering range(batch_size), sizes differing by at most one."""
    if not (isinstance(num_chunks, int) and not isinstance(num_chunks, bool) and num_chunks >= 1):
        raise ValueError(f"num_chunks must be a whole number >= 1, not {num_chunks!r}")
    if num_chunks > batch_size:
        raise ValueError(f"cannot cut a batch of {batch_size} pairs into {num_chunks} chunks: use at most "
                         f"{batch_size} chunks (or a larger batch)")
    bounds = torch.linspace(0, batch_size, num_chunks + 1).round().long().tolist()
    return [slice(start, end) for start, end in zip(bounds[:-1], bounds[1:])]


def rng_state(device: torch.device):
    """The RNG states a forward pass on `device` may draw from (the CPU's, and the GPU's on CUDA)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def encode_pairs(model: nn.Module, images: torch.Tensor, texts: list[str], forward=None, amp: str | None = None):
    """(image_features, text_features, logit_scale), the features in fp32 and unnormalised, as train_step computes
    them: through `forward` (the DDP wrapper under torchrun; None: the model's own towers), under autocast `amp`."""
    with amp_context(images.device, amp):
        image_features, text_features, logit_scale = (forward or clip_features_of(model))(images, texts)
    return image_features.float(), text_features.float(), logit_scale


def clip_features_of(model):
    return lambda images, texts: clip_features(model, images, texts)


def cached_features(model, images, texts, slices, forward=None, amp=None):
    """Step 1: the features of every chunk without autograd, and the RNG state each chunk started from."""
    device = images.device
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    states, image_parts, text_parts = [], [], []
    with torch.no_grad():
        for part in slices:
            states.append(rng_state(device))
            image_features, text_features, _ = encode_pairs(model, images[part], texts[part], forward, amp)
            image_parts.append(image_features)
            text_parts.append(text_features)
    with torch.no_grad():  # BatchNorm's running statistics: step 3 updates them, step 1 must leave no trace
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
    return torch.cat(image_parts), torch.cat(text_parts), states


def grad_cache_backward(model: nn.Module, images: torch.Tensor, texts: list[str], labels=None,
                        num_chunks: int = 2, loss_of=clip_loss, logit_scale: torch.Tensor | None = None, *,
                        forward=None, amp: str | None = None, scale=None, check=None) -> torch.Tensor:
    """The loss of the whole batch (detached), its gradient left in every parameter's .grad (added to what is there).

    `model`: a CLIP model. `loss_of(image_features, text_features, logit_scale, labels)`:
    clip_loss, siglip.SigmoidLoss(), ... on the whole batch; parameters of the loss itself (SigLIP's bias)
    get their gradient too. `logit_scale`: the multiplier, by default the model's, which then gets its gradient
    through the last chunk's backward (under DDP every parameter must take part in the backward that syncs).
    As train_step calls it: `forward` the DDP wrapper under torchrun (all but the last chunk's backward then run
    in its no_sync, so gradients are all-reduced once per step), `amp` the autocast, `scale` the GradScaler's
    scale (the fp16 loss scaling), `check(loss)` called before any backward (train_step's stop on NaN/inf).
    The result equals loss.backward() on one pass over the batch (see the module docstring for BatchNorm).
    """
    texts = list(texts)
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} texts: give one caption per image")
    slices = chunk_slices(len(images), num_chunks)
    image_cache, text_cache, states = cached_features(model, images, texts, slices, forward, amp)
    image_cache.requires_grad_(True)
    text_cache.requires_grad_(True)
    scale_cache = None
    if logit_scale is None:  # cached like the features: its gradient goes in with the last chunk's
        scale_cache = logit_scale = model.logit_scale.exp().detach().requires_grad_(True)
    loss = loss_of(image_cache, text_cache, logit_scale, labels)
    if check is not None:
        check(loss)
    (loss if scale is None else scale(loss)).backward()  # the gradients of the features (cached) and the loss's own parameters
    chunks_backward(model, images, texts, slices, states, (image_cache, text_cache, scale_cache), forward, amp)
    return loss.detach()


def chunks_backward(model, images, texts, slices, states, caches, forward=None, amp=None) -> None:
    """Step 3: every chunk encoded again with autograd, the cached gradients pushed through it; under DDP all but
    the last chunk in no_sync. logit_scale's cached gradient (if any) goes in once, with the last chunk."""
    image_cache, text_cache, scale_cache = caches
    no_sync = getattr(forward, "no_sync", contextlib.nullcontext)
    for number, (part, state) in enumerate(zip(slices, states), 1):
        last = number == len(slices)
        with contextlib.nullcontext() if last else no_sync():
            set_rng_state(state, images.device)
            image_features, text_features, logit_scale = encode_pairs(model, images[part], texts[part], forward, amp)
            outputs, grads = [image_features, text_features], [image_cache.grad[part], text_cache.grad[part]]
            if last and scale_cache is not None and scale_cache.grad is not None:
                outputs.append(logit_scale)
                grads.append(scale_cache.grad.to(logit_scale.dtype))
            torch.autograd.backward(outputs, grads)


def in_chunks(accum_steps: int):
    """train_step's `backward` for accum_steps > 1: the GradCache step, called as step.one_pass_backward is.
    A batch smaller than accum_steps (a short last batch) is cut into as many chunks as it has pairs: the
    gradient is the whole batch's however it is cut."""
    def backward(model, images, texts, labels, **options):
        return grad_cache_backward(model, images, texts, labels, min(accum_steps, len(images)), **options)
    return backward


def naive_accumulation_backward(model: nn.Module, images: torch.Tensor, texts: list[str], labels=None,
                                num_chunks: int = 2, loss_of=clip_loss) -> torch.Tensor:
    """What plain gradient accumulation does: the mean of the chunks' own losses, each chunk's images scored
    against its own captions only (B - 1 negatives instead of N x B - 1). Returned detached, gradients in .grad.
    For comparison with grad_cache_backward; not the gradient of the whole-batch loss."""
    slices = chunk_slices(len(images), num_chunks)
    total = 0.0
    for part in slices:
        image_features, text_features, _ = encode_pairs(model, images[part], list(texts)[part])
        chunk_labels = None if labels is None else torch.as_tensor(labels)[part]
        loss = loss_of(image_features, text_features, model.logit_scale.exp(), chunk_labels) / len(slices)
        loss.backward()
        total += loss.detach()
    return total
