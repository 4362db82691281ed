"""Check for notebook 05: one training step (zero_grad, loss, backward, clip, step, scheduler) on a tiny CLIP."""
import copy
import functools
import math

import torch
from torch import nn

from .. import losses
from ..similarity import normalize
from .core import ExerciseFailed, call, fail, one_thread, passed

GRAD_CLIP = 0.05  # below this batch's gradient norm, so leaving clipping out changes the update
NO_CLIP = 1e6  # far above it: clipping does nothing, so a loss of the wrong scale changes the update
TOWERS = {"visual.weight": "image", "text_projection.weight": "text", "logit_scale": "logit_scale"}


class TinyCLIP(nn.Module):
    """clip's CLIP interface (encode_image, encode_text, logit_scale, forward) with a few hundred parameters."""

    def __init__(self, vocab_size: int = 32, dim: int = 8):
        super().__init__()
        self.visual = nn.Linear(3 * 4 * 4, dim)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.text_projection = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images):
        return self.visual(images.flatten(1))

    def encode_text(self, tokens):
        return self.text_projection(self.token_embedding(tokens).mean(dim=1))

    def forward(self, images, tokens):
        image_features, text_features = normalize(self.encode_image(images)), normalize(self.encode_text(tokens))
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.T
        return logits_per_image, logits_per_image.T


def reference_step(model, images, tokens, optimizer, scheduler, grad_clip, clip="norm"):
    optimizer.zero_grad()
    loss = losses.clip_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp())
    loss.backward()
    if clip == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    elif clip == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


def setup(model, wrap=lambda method, name: method):
    """SGD and a learning rate halved every step; `wrap` (to log calls) goes round each method the step may call."""
    # SGD, not Adam: Adam's first update ignores the gradient's scale, which would hide a missing clip.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    optimizer.zero_grad, model.zero_grad = wrap(optimizer.zero_grad, "zero_grad"), wrap(model.zero_grad, "zero_grad")
    optimizer.step, scheduler.step = wrap(optimizer.step, "step"), wrap(scheduler.step, "scheduler")
    return optimizer, scheduler


def batches() -> list:
    generator = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 3, 4, 4, generator=generator), torch.randint(32, (6, 5), generator=generator))
            for _ in range(2)]


def run(step, model, exercise=None, log=None, grad_clip=GRAD_CLIP, **options):
    """(losses, parameters after each call, lr after each call, events of each call) for two calls of `step`."""
    events = []

    def logged(method, name):
        @functools.wraps(method)  # keeps the scheduler's mark on optimizer.step, so it does not warn
        def wrapper(*args, **kwargs):
            events[-1].append(name)
            return method(*args, **kwargs)
        return wrapper

    optimizer, scheduler = setup(model, logged) if log else setup(model)
    if log:  # a gradient arriving at a tower marks a backward pass through it
        for name, parameter in model.named_parameters():
            if name in TOWERS:
                parameter.register_post_accumulate_grad_hook(lambda _, tower=TOWERS[name]: events[-1].append(tower))
    results = []
    for images, tokens in batches():
        events.append([])
        args = (model, images.clone(), tokens.clone(), optimizer, scheduler, grad_clip)
        loss = call(exercise, step, *args, repeat=False, inputs=(1, 2)) if exercise else step(*args, **options)
        parameters = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
        results.append((loss, parameters, optimizer.param_groups[0]["lr"]))
    return results, events


def same_parameters(ours, theirs) -> bool:
    return all(ours[name].dtype == theirs[name].dtype and torch.allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
               for name in theirs)


def dtype_hint(results) -> str | None:
    changed = sorted({str(parameter.dtype) for _, parameters, _ in results for parameter in parameters.values()
                      if parameter.dtype != torch.float32})
    if changed:
        return (f"your step changes the model's parameters to {', '.join(changed)}: leave the model in the dtype it "
                f"came in (no model.double() or .to(dtype) inside the step).")
    return None


def tower_hint(events) -> str | None:
    """Which tower the backward pass misses, when it reaches another (encoded under no_grad, or detached)."""
    reached = {name for call_events in events for name in call_events}
    missing = [tower for tower in TOWERS.values() if tower not in reached]
    if missing and len(missing) < len(TOWERS):
        what = {"image": "the image features", "text": "the text features", "logit_scale": "logit_scale"}
        return (f"no gradient reaches {' or '.join(what[tower] for tower in missing)}: computed under "
                f"torch.no_grad(), detached or turned into a number, so that part of the model never learns.")
    return None


def scale_hint(theirs, ours) -> str | None:
    """A loss of the wrong scale (a sum where the paper averages), seen in the returned losses."""
    try:
        ratios = [float(loss) / want for (loss, _, _), (want, _, _) in zip(theirs, ours)]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if all(math.isclose(ratio, ratios[0], rel_tol=1e-4) for ratio in ratios) and not math.isclose(ratios[0], 1,
                                                                                                  rel_tol=1e-4):
        return (f"your loss is {ratios[0]:.3g} times CLIP's: the two directions added instead of averaged, or the "
                f"cross-entropy summed over the batch. Clipping can hide that scale; without clipping every update is "
                f"{ratios[0]:.3g} times too large.")
    return None


def order_hint(events: list) -> str | None:
    """What the order of calls inside one step says is wrong, or None."""
    for call_events in events:
        passes = max(call_events.count(tower) for tower in TOWERS.values())
        call_events = ["backward" if name in TOWERS.values() else name for name in call_events]
        first = {name: call_events.index(name) if name in call_events else None
                 for name in ("zero_grad", "backward", "step", "scheduler")}
        if first["backward"] is None:
            return "loss.backward() is never called, so no gradient reaches the parameters."
        if first["step"] is None:
            return "forgot optimizer.step(): the gradients are computed but the parameters never change."
        if first["step"] < first["backward"]:
            return ("optimizer.step() runs before loss.backward(): it updates with stale (or no) gradients. Compute "
                    "the loss and call backward first.")
        if first["zero_grad"] is None:
            return ("forgot zero_grad: backward() adds to the gradients already there, so each step also carries all "
                    "the previous batches' gradients. Call optimizer.zero_grad() at the start of the step.")
        if "zero_grad" in call_events[first["backward"]:first["step"]]:
            return "zero_grad() between backward() and step() erases the gradients just computed: call it first."
        if first["scheduler"] is None:
            return "scheduler not stepped: call scheduler.step() once per batch, after optimizer.step()."
        if first["scheduler"] < first["step"]:
            return ("scheduler.step() runs before optimizer.step(): this batch gets the next batch's learning rate. "
                    "Step the scheduler last.")
        if passes > 1:
            return f"backward happens {passes} times in one step; once per batch."
        for name in ("step", "scheduler"):
            if call_events.count(name) > 1:
                return f"{name} happens {call_events.count(name)} times in one step; once per batch."
    return None


def student_run(train_step, model, grad_clip):
    try:
        with one_thread():
            return run(train_step, copy.deepcopy(model), exercise="train_step", log=True, grad_clip=grad_clip)
    except ExerciseFailed as error:
        if "'TinyCLIP' object has no attribute" not in str(error):
            raise
        raise ExerciseFailed(f"{error}\n  The check's model is a tiny stand-in with only encode_image, encode_text, "
                             f"logit_scale and forward (clip's CLIP interface); take the device from "
                             f"next(model.parameters()).device.") from None


def reference_run(model, grad_clip, clip="norm"):
    with one_thread():
        return run(reference_step, copy.deepcopy(model), grad_clip=grad_clip, clip=clip)[0]


def same_updates(theirs, ours) -> bool:
    return all(same_parameters(parameters, want) and math.isclose(lr, want_lr, rel_tol=1e-9)
               for (_, parameters, lr), (_, want, want_lr) in zip(theirs, ours))


def same_losses(theirs, ours) -> bool:
    return all(isinstance(loss, (float, int, torch.Tensor)) and not isinstance(loss, bool) and math.isclose(
        float(loss), want_loss, rel_tol=1e-5) for (loss, _, _), (want_loss, _, _) in zip(theirs, ours))


def check_train_step(train_step) -> None:
    """Check `train_step(model, images, tokens, optimizer, scheduler, grad_clip)` -> the batch's loss (a float).

    Two calls on a tiny CLIP with SGD and a halving learning rate, compared with the reference step: the same
    losses, the same parameters after each call, the same learning rate; once with a grad_clip that clips and
    once with one that does not, so clipping cannot hide a loss of the wrong scale.
    """
    exercise = "train_step"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCLIP()
    theirs, events = student_run(train_step, model, GRAD_CLIP)
    ours = reference_run(model, GRAD_CLIP)
    if same_updates(theirs, ours):
        if not same_losses(theirs, ours):
            fail(exercise, scale_hint(theirs, ours) or "the update is right, but return the batch's loss as a float "
                                                       "(loss.item()), the value computed before the update.")
        if same_updates(student_run(train_step, model, NO_CLIP)[0], reference_run(model, NO_CLIP)):
            return passed(exercise)
        fail(exercise, "with a grad_clip too large to clip, your update differs from the reference's although the "
                       "loss you return is right: the loss you backpropagate has another scale (a sum, or a factor), "
                       "which clipping hid. Backpropagate the loss you return.")
    for hint in (dtype_hint(theirs), order_hint(events), tower_hint(events), scale_hint(theirs, ours)):
        if hint:
            fail(exercise, hint)
    for clip, message in [("none", "no gradient clipping: scale the gradients down to a total norm of grad_clip "
                                   "after backward() and before step() (before backward there is nothing to clip, "
                                   "after step it is too late)."),
                          ("value", "you clip each gradient value separately; grad_clip bounds the norm of all the "
                                    "gradients together.")]:
        if all(same_parameters(parameters, want) for (_, parameters, _), (_, want, _)
               in zip(theirs, reference_run(model, GRAD_CLIP, clip))):
            fail(exercise, message)
    fail(exercise, "the parameters after one step differ from the reference step's, and none of the usual mistakes "
                   "explains it. Check the loss (CLIP's symmetric loss of the two towers' features, at the model's "
                   "temperature) and that grad_clip bounds the gradients' total norm.")
