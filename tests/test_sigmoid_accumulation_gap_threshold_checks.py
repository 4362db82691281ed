"""The checks of notebooks 11 and 12 (the sigmoid loss, naive accumulation's loss, the modality gap, a held-out
threshold): they pass right answers written in other forms, and name the usual mistakes."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_helpers import checks, geometry, siglip
from clip_helpers.checks import ExerciseFailed, failures
from clip_helpers.losses import clip_loss

REFERENCES = [siglip.siglip_loss, siglip.pair_signs, failures.naive_accumulated_loss, geometry.modality_gap,
              geometry.centroid, geometry.best_threshold]
REFERENCE_LINES = {line.strip().removeprefix("return ").strip() for function in REFERENCES
                   for line in inspect.getsource(function).splitlines()
                   if len(line.strip()) >= 12 and not line.strip().startswith(("#", '"', "def "))}


def verdict(check, answer, capsys) -> str:
    """'Correct: ...' or 'failed: <message>'; neither may show a line of the reference's code."""
    try:
        assert check(answer) is None
        seen = capsys.readouterr().out
    except ExerciseFailed as error:
        capsys.readouterr()
        seen = f"failed: {error}"
    assert not [line for line in REFERENCE_LINES if line in seen], seen
    return seen


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def sigmoid_by_loops(i, t, s, b):  # right, written pair by pair with softplus: -log sigmoid(x) = softplus(-x)
    i, t = unit(i), unit(t)
    total = 0
    for row in range(len(i)):
        for col in range(len(t)):
            z = 1.0 if row == col else -1.0
            total = total + F.softplus(-z * (s * (i[row] @ t[col]) + b))
    return total / len(i)


def sigmoid_mean_over_pairs(i, t, s, b):
    return sigmoid_by_loops(i, t, s, b) * len(i) / len(i) ** 2


def sigmoid_zero_one(i, t, s, b):  # BCE-style targets used as signs
    logits = s * unit(i) @ unit(t).T + b
    return -F.logsigmoid(torch.eye(len(i)) * logits).sum() / len(i)


def sigmoid_no_bias(i, t, s, b):
    logits = s * unit(i) @ unit(t).T + 0 * b
    return -F.logsigmoid((2 * torch.eye(len(i)) - 1) * logits).sum() / len(i)


def sigmoid_bias_as_float(i, t, s, b):
    return sigmoid_by_loops(i, t, s, torch.tensor(b.item()))


def test_sigmoid_check_passes_a_loop_version(capsys):
    assert verdict(checks.check_sigmoid_loss, sigmoid_by_loops, capsys).startswith("Correct:")


@pytest.mark.parametrize("answer, hint", [(sigmoid_mean_over_pairs, "divides by the number of images"),
                                          (sigmoid_zero_one, "not 1 and 0"), (sigmoid_no_bias, "bias b is missing"),
                                          (sigmoid_bias_as_float, "no gradient reaches the bias")])
def test_sigmoid_check_names_the_mistake(answer, hint, capsys):
    seen = verdict(checks.check_sigmoid_loss, answer, capsys)
    assert seen.startswith("failed:") and hint in seen, seen


def naive_by_split(i, t, s, n):
    size = len(i) // n
    return torch.stack([clip_loss(i[k * size:(k + 1) * size], t[k * size:(k + 1) * size], s) for k in range(n)]).mean()


@pytest.mark.parametrize("answer, hint", [
    (lambda i, t, s, n: clip_loss(i, t, s), "loss of the whole batch"),
    (lambda i, t, s, n: naive_by_split(i, t, s, n) * n, "you add the chunks' losses"),
    (lambda i, t, s, n: torch.stack([clip_loss(i[k::n], t[k::n], s) for k in range(n)]).mean(), "contiguous")])
def test_accumulation_check_names_the_mistake(answer, hint, capsys):
    seen = verdict(checks.check_naive_accumulated_loss, answer, capsys)
    assert seen.startswith("failed:") and hint in seen, seen


def test_accumulation_check_passes_a_split_version(capsys):
    assert verdict(checks.check_naive_accumulated_loss, naive_by_split, capsys).startswith("Correct:")


def gap_in_numpy(i, t):
    i, t = i.numpy(), t.numpy()
    i = i / np.linalg.norm(i, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.linalg.norm(i.mean(axis=0) - t.mean(axis=0)))


@pytest.mark.parametrize("answer, hint", [
    (lambda i, t: (i.mean(0) - t.mean(0)).norm(), "normalise each feature row first"),
    (lambda i, t: (unit(unit(i).mean(0)) - unit(unit(t).mean(0))).norm(), "do not normalise the two means"),
    (lambda i, t: ((unit(i).mean(0) - unit(t).mean(0)) ** 2).sum(), "squared distance"),
    (lambda i, t: torch.cdist(unit(i), unit(t)).mean(), "mean distance between every image and every text")])
def test_gap_check_names_the_mistake(answer, hint, capsys):
    seen = verdict(checks.check_modality_gap, answer, capsys)
    assert seen.startswith("failed:") and hint in seen, seen


def test_gap_check_passes_numpy(capsys):
    assert verdict(checks.check_modality_gap, gap_in_numpy, capsys).startswith("Correct:")


def threshold_by_sorting(s, m):  # right: the best of the observed values, found another way
    values = sorted(s.tolist())
    return max(values, key=lambda t: sum((x >= t) == bool(y) for x, y in zip(s.tolist(), m.tolist())))


@pytest.mark.parametrize("answer, hint", [(lambda s, m: s.mean(), "the mean similarity"), (lambda s, m: 0.3, "0.3"),
                                          (lambda s, m: (s[m].mean() + s[~m].mean()) / 2, "midpoint")])
def test_threshold_check_names_the_mistake(answer, hint, capsys):
    seen = verdict(checks.check_threshold, answer, capsys)
    assert seen.startswith("failed:") and hint in seen, seen


def test_threshold_check_passes_another_search(capsys):
    assert verdict(checks.check_threshold, threshold_by_sorting, capsys).startswith("Correct:")


def test_best_threshold_is_the_most_accurate_of_a_brute_force_search():
    generator = torch.Generator().manual_seed(3)
    similarities = torch.rand(40, generator=generator)
    matches = similarities + 0.3 * torch.rand(40, generator=generator) > 0.7
    threshold = geometry.best_threshold(similarities, matches)
    grid = torch.linspace(-0.1, 1.1, 2001)
    best_on_grid = max(((similarities >= t) == matches).float().mean().item() for t in grid)
    assert ((similarities >= threshold) == matches).float().mean().item() == pytest.approx(best_on_grid)
    assert threshold in similarities.tolist()


def test_best_threshold_refuses_mismatched_or_non_boolean_input():
    with pytest.raises(ValueError, match="one truth value per"):
        geometry.best_threshold(torch.rand(5), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="booleans"):
        geometry.best_threshold(torch.rand(5), torch.ones(5))
