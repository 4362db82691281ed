"""Checks for notebook 12: the modality gap, and a similarity threshold chosen on held-out data."""
import torch

from .. import geometry
from .core import as_tensor, call, close, fail, first_mismatch, fail_on_known_mistake, passed


def gap_cases() -> list:
    """(image_features, text_features): rows of uneven length, shifted cones, different counts of images and texts."""
    generator = torch.Generator().manual_seed(21)

    def cone(n, offset, dim=6):
        return torch.linspace(0.5, 3.0, n)[:, None] * (torch.randn(n, dim, generator=generator) + offset)

    shift = torch.zeros(6)
    shift[0] = 2.0
    return [(cone(5, shift), cone(5, -shift)), (cone(7, shift), cone(3, 0.5 * shift)),
            (cone(4, 0.0), cone(9, 0.0)), (cone(6, shift), cone(6, shift))]


GAP_MISTAKES = {
    "normalised": [("rows", None),
                   ("none", "normalise each feature row first: the gap is between the means of the unit vectors, so "
                            "a long vector must not pull its modality's mean towards it."),
                   ("centroids", "do not normalise the two means: the gap is the distance between the means of the "
                                 "unit vectors themselves (their lengths say how tight each cone is).")],
    "distance": [("norm", None),
                 ("squared", "that is the squared distance: take the Euclidean norm of the difference (no square)."),
                 ("pairwise", "that is the mean distance between every image and every text; the gap is the distance "
                              "between the two means.")],
}


def gap_variant(case, normalised, distance):
    image_features, text_features = case
    if normalised in ("rows", "centroids"):
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    if distance == "pairwise":
        return torch.cdist(image_features, text_features).mean()
    image_mean, text_mean = image_features.mean(dim=0), text_features.mean(dim=0)
    if normalised == "centroids":
        image_mean, text_mean = image_mean / image_mean.norm(), text_mean / text_mean.norm()
    difference = (image_mean - text_mean).norm()
    return difference ** 2 if distance == "squared" else difference


def check_modality_gap(modality_gap) -> None:
    """Check `modality_gap(image_features, text_features)` against geometry.modality_gap on four pairs of sets."""
    exercise = "modality_gap"
    cases = gap_cases()
    outputs = []
    for case in cases:
        output = as_tensor(call(exercise, modality_gap, *case))
        if output is None or output.numel() != 1:
            fail(exercise, "return one number: the distance between the two modalities' mean unit vectors.")
        outputs.append(output.reshape(()))
    expected = [geometry.modality_gap(*case) for case in cases]
    wrong = first_mismatch(outputs, expected)
    if wrong is None:
        return passed(exercise)
    fail_on_known_mistake(exercise, outputs, cases, GAP_MISTAKES, gap_variant)
    fail(exercise, f"for {len(cases[wrong][0])} images and {len(cases[wrong][1])} texts you return "
                   f"{outputs[wrong].item():.5g}, the reference {expected[wrong]:.5g}. Normalise every row, take each "
                   f"modality's mean, and return the length of the difference of the two means.")


# ---------------------------------------------------------------- a threshold chosen on held-out data

def threshold_accuracy(similarities, matches, threshold) -> float:
    """The fraction of pairs for which (similarity >= threshold) is the truth."""
    return ((similarities >= threshold) == matches).double().mean().item()


def threshold_cases() -> list:
    generator = torch.Generator().manual_seed(23)
    cases = []
    for n, separation in [(12, 0.15), (30, 0.05), (9, 0.4), (20, 0.0)]:
        matches = torch.rand(n, generator=generator) < 0.4
        similarities = 0.2 + separation * matches.double() + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)
        order = torch.randperm(n, generator=generator)  # shuffled: no sorted input to rely on
        cases.append((similarities[order], matches[order]))
    return cases


THRESHOLD_HINTS = [
    (lambda s, m: s.mean().item(), "the mean similarity is not the best threshold: try every observed similarity as "
                                   "the threshold and keep the one whose rule is right most often."),
    (lambda s, m: ((s[m].mean() + s[~m].mean()) / 2).item() if m.any() and (~m).any() else float("nan"),
     "the midpoint of the two means is a guess at the boundary; measure instead: try each observed similarity and "
     "keep the most accurate."),
    (lambda s, m: 0.3, "0.3 is a number from a forum, not from these pairs: choose the threshold on the held-out data."),
]


def check_threshold(choose_threshold) -> None:
    """Check `choose_threshold(similarities, matches)`: a threshold whose held-out accuracy is the best possible."""
    exercise = "choose_threshold"
    cases = threshold_cases()
    for similarities, matches in cases:
        output = as_tensor(call(exercise, choose_threshold, similarities.clone(), matches.clone()))
        if output is None or output.numel() != 1:
            fail(exercise, "return one number, the threshold (predict a match when similarity >= threshold).")
        threshold = output.item()
        best = geometry.best_threshold(similarities, matches)
        if threshold_accuracy(similarities, matches, threshold) + 1e-9 < threshold_accuracy(similarities, matches, best):
            hint = next((hint for guess, hint in THRESHOLD_HINTS if close(threshold, guess(similarities, matches))), None)
            if hint is None and threshold_accuracy(similarities, matches, threshold) == threshold_accuracy(
                    similarities, ~matches, threshold):
                hint = "check the direction: a match is predicted when the similarity is at least the threshold."
            fail(exercise, hint or (
                f"on {len(matches)} pairs your threshold {threshold:.4f} is right on "
                f"{100 * threshold_accuracy(similarities, matches, threshold):.1f}% of them, and "
                f"{best:.4f} on {100 * threshold_accuracy(similarities, matches, best):.1f}%. Try every observed "
                f"similarity as the threshold (rule: similarity >= threshold) and keep the most accurate."))
    return passed(exercise)
