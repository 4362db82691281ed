"""Checks for notebook 04: the symmetric contrastive loss, and the floor that duplicate captions impose on it."""
import math
import warnings
from collections import Counter

import torch
import torch.nn.functional as F

from .. import losses
from ..losses import loss_floor  # the formula lives in the package; evaluation reports it per batch
from .core import as_tensor, call, close, fail, fail_on_known_mistake, passed


def loss_cases() -> list:
    """(image_features, text_features, logit_scale): rows of uneven length, several batch sizes and scales."""
    generator = torch.Generator().manual_seed(4)

    def features(n, dim=6):
        return torch.linspace(0.3, 4.0, n)[:, None] * torch.randn(n, dim, generator=generator)

    image_features = features(5)
    aligned = image_features + 0.1 * torch.randn(5, 6, generator=generator)  # matching pairs close: a small loss
    return [(image_features, features(5), torch.tensor(14.3)), (features(4), features(4), torch.tensor(2.5)),
            (image_features, aligned, torch.tensor(30.0)), (features(1), features(1), torch.tensor(14.3))]


LOSS_MISTAKES = {
    "directions": [("both", None),
                   ("images", "only the image->text direction is averaged: add the text->image cross-entropy "
                              "(the same logits transposed) and take the mean of the two."),
                   ("texts", "only the text->image direction is averaged: add the image->text cross-entropy "
                             "and take the mean of the two."),
                   ("sum", "you add the two directions; the paper averages them: (loss_i + loss_t) / 2."),
                   ],
    "targets": [("diagonal", None),
                ("zeros", "the diagonal is not the target: image i's caption is text i, so the targets are "
                          "0, 1, ..., n-1 (torch.arange(n)), not all zeros."),
                ("reversed", "the diagonal is not the target: image i's caption is text i (torch.arange(n)).")],
    "normalised": [(True, None),
                   (False, "features are not normalised: the logits are logit_scale times the cosines, so divide "
                           "each row by its length before the product.")],
    "scale": [("times", None),
              ("none", "logit_scale not applied: multiply the cosines by logit_scale."),
              ("exp", "logit_scale is already the multiplier (the model's logit_scale.exp()): do not exponentiate it."),
              ("log", "logit_scale is the multiplier itself: multiply by it, not by its log."),
              ("divide", "multiply the cosines by logit_scale; dividing makes the softmax flatter instead of sharper.")],
    "probabilities": [("logits", None),
                      ("softmax", "softmax before cross_entropy: cross_entropy takes raw logits and applies its own "
                                  "log-softmax, so a softmax first squashes every row into [0, 1] and the loss "
                                  "barely moves."),
                      ],
    "reduction": [("mean", None),
                  ("sum", "sum instead of mean: the cross-entropy is averaged over the batch, so the loss does not "
                          "grow with the batch size.")],
}


def loss_variant(case, directions, targets, normalised, scale, probabilities, reduction):
    image_features, text_features, logit_scale = case
    if normalised:
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    multiplier = {"times": logit_scale, "none": 1.0, "exp": logit_scale.exp(), "log": logit_scale.log(),
                  "divide": 1 / logit_scale}[scale]
    logits = multiplier * image_features @ text_features.T
    n = len(logits)
    labels = {"diagonal": torch.arange(n), "zeros": torch.zeros(n, dtype=torch.long),
              "reversed": torch.arange(n).flip(0)}[targets]
    squash = (lambda x: x.softmax(dim=-1)) if probabilities == "softmax" else (lambda x: x)
    loss_images = F.cross_entropy(squash(logits), labels, reduction=reduction)
    loss_texts = F.cross_entropy(squash(logits.T), labels, reduction=reduction)
    return {"both": (loss_images + loss_texts) / 2, "images": loss_images, "texts": loss_texts,
            "sum": loss_images + loss_texts}[directions]


def check_clip_loss(clip_loss) -> None:
    """Check `clip_loss(image_features, text_features, logit_scale)` (no labels: the diagonal pairs) on four batches."""
    exercise = "clip_loss"
    cases = loss_cases()
    outputs, graphs = [], []
    for image_features, text_features, logit_scale in cases:
        inputs = [part.clone().requires_grad_() for part in (image_features, text_features, logit_scale)]
        output = call(exercise, clip_loss, *inputs)
        if not isinstance(output, torch.Tensor) or output.numel() != 1:
            fail(exercise, f"return the loss as a torch scalar (one number, still a tensor so it can be "
                           f"backpropagated); you returned {type(output).__name__}"
                           f"{' of shape ' + str(tuple(output.shape)) if isinstance(output, torch.Tensor) else ''}.")
        if not output.requires_grad:
            fail(exercise, "the loss is cut off from the features (no gradient flows back): something inside the "
                           "loss leaves the graph (.item(), .detach(), numpy, torch.no_grad()).")
        graphs.append((output, inputs))
        outputs.append(as_tensor(output).reshape(()))
    with warnings.catch_warnings():  # the one-pair case warns, rightly, but that case is the check's, not the student's
        warnings.simplefilter("ignore", UserWarning)
        expected = [losses.clip_loss(*case) for case in cases]
    right = all(close(output, want) for output, want in zip(outputs, expected))
    if not right:  # a wrong value is named first: a wrong scale can also flatten the gradients to 0
        fail_on_known_mistake(exercise, outputs, cases, LOSS_MISTAKES, loss_variant)
    for (output, inputs), case in zip(graphs, cases):
        if len(case[0]) > 1:  # one pair has nothing to contrast: every gradient is 0 there
            check_gradients(exercise, output, inputs)
    if right:
        return passed(exercise)
    wrong = next(i for i, (output, want) in enumerate(zip(outputs, expected)) if not close(output, want))
    n = len(cases[wrong][0])
    fail(exercise, f"on a batch of {n} pairs with logit_scale {cases[wrong][2].item():g} you return "
                   f"{outputs[wrong].item():.5g}, the reference {expected[wrong].item():.5g}. Follow the pseudocode: "
                   f"normalise, logits = logit_scale * cosines, cross-entropy against the diagonal in both directions, "
                   f"then the mean of the two.")


GRADIENT_HINTS = ["the image features", "the text features", "logit_scale"]


def check_gradients(exercise, output, inputs):
    """Every input that must learn gets a gradient: both towers through their features, the temperature itself."""
    gradients = torch.autograd.grad(output.reshape(()), inputs, allow_unused=True)
    cut = [name for name, gradient in zip(GRADIENT_HINTS, gradients)
           if gradient is None or not torch.isfinite(gradient).all() or not gradient.abs().sum() > 0]
    if cut:
        how = ("a Python float (float(...) or .item()) takes it out of the graph, so training could never change "
               "the temperature" if cut == ["logit_scale"] else "detached, computed under no_grad or turned into "
               "numpy along the way, so that tower would never learn")
        fail(exercise, f"no gradient reaches {' or '.join(cut)}: {how}. Every input must stay a tensor in the graph.")


# ---------------------------------------------------------------- the floor of duplicate captions

# The question of notebook 04: a batch of 32 images from 4 classes, 8 of each, captioned by class name alone.
FLOOR_QUESTION = [label for label in range(4) for _ in range(8)]

FLOOR_LABELS = [[0, 1, 2, 3], [0, 0, 1, 1], [0, 0, 0, 1], [5, 5, 5, 5], [2, 0, 2, 1, 0, 2], FLOOR_QUESTION]


FLOOR_MISTAKES = [
    (lambda counts, n: 0.0, "0 is the floor when every caption is distinct. With k identical captions, how much "
                            "probability can image i put on its own column when k columns have the same logit?"),
    (lambda counts, n: sum(math.log(k) for k in counts) / len(counts),
     "you average log k over the classes; the loss averages over the n rows, and a class of k images has k rows."),
    (lambda counts, n: max(math.log(k) for k in counts), "the largest class sets log k for its rows only; average "
                                                         "over all n rows (a class of k images has k rows)."),
    (lambda counts, n: sum(math.log(k) for k in counts), "you add log k per class; average over the n rows instead."),
    (lambda counts, n: sum(k * math.log(k) for k in counts) / n / 2,
     "half of the floor: the text->image direction has the same floor as image->text (k identical caption rows "
     "share one distribution over images), so the mean of the two is not halved."),
    (lambda counts, n: sum(k * math.log2(k) for k in counts) / n, "use the natural log: cross_entropy is in nats."),
    (lambda counts, n: sum(k * math.log10(k) for k in counts) / n, "use the natural log: cross_entropy is in nats."),
    (lambda counts, n: math.log(n), "log n is the loss of a uniform guess over the whole batch, not the floor."),
    (lambda counts, n: sum(k * (1 / k) for k in counts) / n,
     "1/k is the best in-batch accuracy when k captions are identical; the question asks for the loss."),
]


def floor_hint(answers: list, label_sets: list) -> str | None:
    for formula, hint in FLOOR_MISTAKES:
        if all(close(answer, formula(list(Counter(labels).values()), len(labels)), rtol=1e-3, atol=1e-3)
               for answer, labels in zip(answers, label_sets)):
            return hint
    return None


def check_loss_floor(answer) -> None:
    """Check the floor of the plain loss with duplicate captions: a number for FLOOR_QUESTION, or floor(labels)."""
    exercise = "loss floor"
    label_sets = FLOOR_LABELS if callable(answer) else [FLOOR_QUESTION]
    answers = [call(exercise, answer, list(labels)) for labels in label_sets] if callable(answer) else [answer]
    answers = [as_tensor(value) for value in answers]
    if any(value is None or value.numel() != 1 for value in answers):
        fail(exercise, "the floor is one number (in nats): give a float, or a function of the batch's labels "
                       "that returns one.")
    answers = [value.reshape(()) for value in answers]
    if all(close(value, loss_floor(labels), rtol=1e-3, atol=1e-3) for value, labels in zip(answers, label_sets)):
        return passed(exercise)
    hint = floor_hint(answers, label_sets)
    if hint:
        fail(exercise, hint)
    wrong = next(i for i, labels in enumerate(label_sets) if not close(answers[i], loss_floor(labels), 1e-3, 1e-3))
    counts = dict(sorted(Counter(label_sets[wrong]).items()))
    fail(exercise, f"for a batch whose labels occur {counts} times your floor is {answers[wrong].item():.4g}, which "
                   f"is not the minimum of the plain loss. Find, for one row of a class of k, the best probability "
                   f"its target can get in each direction, then average the cross-entropies over the rows.")
