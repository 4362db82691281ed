"""One training step: a caption per image, the loss of the batch, and one AdamW update made safe (autocast with
fp32 master weights, clipped gradients, logit_scale clamped as in the paper, a stop before a NaN/inf update)."""
import math

import torch

from ..device import amp_context
from ..losses import clip_loss
from ..text import encode_texts, fill

LOGIT_SCALE_MAX = 100  # the paper clips logit_scale (the multiplier) so logits are at most 100x the cosine


def texts_for(labels, class_names: list[str], templates: list[str], generator: torch.Generator) -> list[str]:
    """One caption per image, its template drawn at random so the model does not learn one phrasing."""
    picks = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [fill(templates[pick], class_names[int(label)]) for label, pick in zip(labels, picks)]


def clip_features(model, images: torch.Tensor, texts: list[str]):
    """(image_features, text_features, logit_scale) of a CLIP model: unnormalised features and the multiplier."""
    return model.encode_image(images), encode_texts(model, texts), model.logit_scale.exp()


def train_step(model, images: torch.Tensor, labels: torch.Tensor, texts: list[str], optimizer, scaler,
               grad_clip: float = 1.0, amp: str | None = "auto", *, forward=None, loss=clip_loss,
               backward=None) -> float:
    """One optimiser step on a batch; returns the loss as a float. Raises FloatingPointError before a NaN/inf update.

    `model`: the CLIP model. What several processes change comes in as `forward` (the DDP wrapper, called as
    forward(images, texts) for the features; None: the model's own towers) and `loss` (the loss of the global
    batch, distributed.distributed_clip_loss; in one process clip_loss; or siglip.SigmoidLoss(), whose bias the
    optimizer must hold too). `backward`: how the batch's loss and gradients are computed, one_pass_backward
    (None) or accumulation.grad_cache_backward's chunks (accumulation.in_chunks(k)), called as one_pass_backward is.
    Every parameter the optimizer holds is clipped together and updated once.
    """
    device = model.positional_embedding.device
    optimizer.zero_grad(set_to_none=True)  # freeing the gradients is cheaper than writing zeros into them
    images = images.to(device, non_blocking=True)
    value = (backward or one_pass_backward)(model, images, texts, labels.to(device), loss_of=loss, forward=forward,
                                            amp=amp, scale=scaler.scale, check=finite_loss).item()
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    torch.nn.utils.clip_grad_norm_(trained_parameters(model, optimizer), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))  # the parameter is the log
    return value


def trained_parameters(model, optimizer) -> list:
    """The model's parameters, then any other the optimizer holds (SigLIP's bias): clipped as one vector."""
    own = list(model.parameters())
    known = {id(p) for p in own}
    return own + [p for group in optimizer.param_groups for p in group["params"] if id(p) not in known]


def finite_loss(loss: torch.Tensor) -> None:
    """Stop before a NaN/inf loss is backpropagated. On several processes every process computes the loss from
    the same gathered features, so a NaN stops them all at the same step."""
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss is {value}")


def one_pass_backward(model, images, texts, labels, *, loss_of=clip_loss, forward=None, amp=None, scale=None,
                      check=None) -> torch.Tensor:
    """The batch's loss (detached) from one forward over all of it, its gradient left in .grad."""
    with amp_context(images.device, amp):
        image_features, text_features, logit_scale = (forward or model_features(model))(images, texts)
    batch_loss = loss_of(image_features.float(), text_features.float(), logit_scale, labels)
    if check is not None:
        check(batch_loss)
    (batch_loss if scale is None else scale(batch_loss)).backward()
    return batch_loss.detach()


def model_features(model):
    return lambda images, texts: clip_features(model, images, texts)
