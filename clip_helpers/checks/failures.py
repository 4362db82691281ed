"""Checks for notebook 11: SigLIP's sigmoid loss from its formula, and the loss naive gradient accumulation optimises."""
import torch
import torch.nn.functional as F

from .. import siglip
from ..training.accumulation import chunk_slices
from ..losses import clip_loss
from .core import as_tensor, call, fail, first_mismatch, fail_on_known_mistake, passed


def feature_cases() -> list:
    """(image_features, text_features, logit_scale, bias): unnormalised rows, several sizes, scales and biases."""
    generator = torch.Generator().manual_seed(11)

    def features(n, dim=5):
        return torch.linspace(0.4, 3.0, n)[:, None] * torch.randn(n, dim, generator=generator)

    images = features(6)
    aligned = images + 0.2 * torch.randn(6, 5, generator=generator)
    return [(images, features(6), torch.tensor(10.0), torch.tensor(-10.0)),
            (images, aligned, torch.tensor(4.0), torch.tensor(-1.5)),
            (features(3), features(3), torch.tensor(2.0), torch.tensor(0.5)),
            (features(8), features(8), torch.tensor(20.0), torch.tensor(-3.0))]


SIGMOID_MISTAKES = {
    "reduction": [("per_image", None),
                  ("all_pairs", "you average over all n x n pairs; the paper sums over the pairs and divides by the "
                                "number of images n (each image makes n binary decisions)."),
                  ("sum", "you sum over the pairs without dividing: divide the sum by the number of images n.")],
    "signs": [("plus_minus", None),
              ("zero_one", "z_ij is +1 for a matching pair and -1 for every other pair, not 1 and 0: with 0 the "
                           "negatives contribute log sigmoid(0) whatever their logits, so they are never pushed down."),
              ("flipped", "the signs are reversed: +1 on the diagonal (image i with its own caption i), -1 elsewhere.")],
    "bias": [("added", None),
             ("none", "the bias b is missing: the logits are logit_scale * cosine + bias."),
             ("subtracted", "the bias is added to the logits (t * cosine + b), not subtracted.")],
    "normalised": [(True, None),
                   (False, "features are not normalised: the formula uses the cosines, so divide each row by its "
                           "length first.")],
    "log": [("logsigmoid", None),
            ("sigmoid", "the loss is minus the log of the sigmoid (F.logsigmoid), not minus the sigmoid itself.")],
}


def sigmoid_variant(case, reduction, signs, bias, normalised, log):
    image_features, text_features, logit_scale, b = case
    if normalised:
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = logit_scale * image_features @ text_features.T + {"added": b, "none": 0.0, "subtracted": -b}[bias]
    eye = torch.eye(len(logits))
    z = {"plus_minus": 2 * eye - 1, "zero_one": eye, "flipped": 1 - 2 * eye}[signs]
    terms = -F.logsigmoid(z * logits) if log == "logsigmoid" else -torch.sigmoid(z * logits)
    return {"per_image": terms.sum() / len(logits), "all_pairs": terms.mean(), "sum": terms.sum()}[reduction]


def check_sigmoid_loss(sigmoid_loss) -> None:
    """Check `sigmoid_loss(image_features, text_features, logit_scale, bias)` against siglip.siglip_loss on four batches."""
    exercise = "sigmoid_loss"
    cases = feature_cases()
    outputs = []
    for case in cases:
        inputs = [part.clone().requires_grad_() for part in case]
        output = call(exercise, sigmoid_loss, *inputs)
        if not isinstance(output, torch.Tensor) or output.numel() != 1:
            fail(exercise, f"return the loss as a torch scalar (a tensor of one number); you returned "
                           f"{type(output).__name__}.")
        if not output.requires_grad:
            fail(exercise, "the loss is cut off from its inputs (no gradient flows back): keep every step in torch, "
                           "no .item(), .detach(), numpy or torch.no_grad().")
        gradients = torch.autograd.grad(output.reshape(()), inputs, allow_unused=True)
        if gradients[3] is None:
            fail(exercise, "no gradient reaches the bias: it must be added to the logits as a tensor, so training "
                           "can learn it.")
        outputs.append(as_tensor(output).reshape(()))
    expected = [siglip.siglip_loss(*case) for case in cases]
    wrong = first_mismatch(outputs, expected)
    if wrong is None:
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, SIGMOID_MISTAKES, sigmoid_variant)
    fail(exercise, f"on a batch of {len(cases[wrong][0])} pairs (logit_scale {cases[wrong][2].item():g}, bias "
                   f"{cases[wrong][3].item():g}) you return {outputs[wrong].item():.5g}, the reference "
                   f"{expected[wrong].item():.5g}. Follow the formula: -(1/n) sum_ij log sigmoid(z_ij (t cos_ij + b)).")


# ---------------------------------------------------------------- naive accumulation

def naive_accumulated_loss(image_features, text_features, logit_scale, num_chunks):
    """The model answer: the mean over contiguous chunks of each chunk's own clip_loss."""
    slices = chunk_slices(len(image_features), num_chunks)
    return sum(clip_loss(image_features[part], text_features[part], logit_scale) for part in slices) / len(slices)


ACCUMULATION_CASES = [(6, 2), (6, 3), (8, 4), (8, 2), (5, 1)]  # (batch size, num_chunks): chunks of equal size

ACCUMULATION_MISTAKES = {
    "chunks": [("contiguous", None),
               ("whole", "you return the loss of the whole batch: naive accumulation never sees it. Cut the batch "
                         "into num_chunks contiguous chunks and score each chunk's images against its own captions."),
               ("strided", "your chunks take every num_chunks-th pair (x[i::num_chunks]); a data loader's chunks "
                           "are contiguous: pairs 0..B-1, then B..2B-1, ...")],
    "reduction": [("mean", None),
                  ("sum", "you add the chunks' losses; accumulation divides each by num_chunks (the mean), so the "
                          "loss does not grow with the number of chunks.")],
}


def accumulation_variant(case, chunks, reduction):
    image_features, text_features, logit_scale, num_chunks = case
    n = len(image_features)
    if chunks == "whole":
        parts = [slice(0, n)]
    elif chunks == "strided":
        parts = [torch.arange(start, n, num_chunks) for start in range(num_chunks)]
    else:
        parts = chunk_slices(n, num_chunks)
    total = sum(clip_loss(image_features[part], text_features[part], logit_scale) for part in parts)
    return total / len(parts) if reduction == "mean" else total


def check_naive_accumulated_loss(naive_loss) -> None:
    """Check `naive_loss(image_features, text_features, logit_scale, num_chunks)`: the mean of the chunks' losses."""
    exercise = "naive_accumulated_loss"
    generator = torch.Generator().manual_seed(12)
    cases = [(torch.randn(n, 4, generator=generator), torch.randn(n, 4, generator=generator),
              torch.tensor(float(scale)), chunks) for (n, chunks), scale in zip(ACCUMULATION_CASES, [10, 3, 14.3, 30, 5])]
    outputs = []
    for case in cases:
        output = as_tensor(call(exercise, naive_loss, *case))
        if output is None or output.numel() != 1:
            fail(exercise, "return one number: the mean of the chunks' clip_loss values, as a torch scalar.")
        outputs.append(output.reshape(()))
    expected = [naive_accumulated_loss(*case) for case in cases]
    wrong = first_mismatch(outputs, expected)
    if wrong is None:
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, ACCUMULATION_MISTAKES, accumulation_variant)
    n, chunks = len(cases[wrong][0]), cases[wrong][3]
    fail(exercise, f"a batch of {n} pairs in {chunks} chunks: you return {outputs[wrong].item():.5g}, the reference "
                   f"{expected[wrong].item():.5g}. Each chunk of {n // chunks} pairs gets clip_loss on its own "
                   f"images and captions; return the mean over the chunks.")
