"""Check for notebook 09: drawing k labelled images per class for the k-shot probe."""
from collections import Counter

import numpy as np

from .core import call, fail, passed
from .data import indices_of

# five classes of uneven size; the smallest has 4 images
K_SHOT_LABELS = [label for label, count in enumerate([6, 5, 9, 4, 7]) for _ in range(count)]
# the same in a random order: drawing "the first k of each class" from positions must not rely on blocks
SHUFFLED_LABELS = [K_SHOT_LABELS[i] for i in np.random.default_rng(12).permutation(len(K_SHOT_LABELS))]


def draw(k_shot_indices, labels, k, seed, exercise) -> list:
    return indices_of(call(exercise, k_shot_indices, list(labels), k, seed, repeat=False), exercise, "k-shot")


def check_draw(exercise, chosen, labels, k):
    if len(set(chosen)) != len(chosen):
        repeated = [index for index, count in Counter(chosen).items() if count > 1]
        fail(exercise, f"indices {repeated[:5]} are drawn more than once: draw without replacement (rng.choice(..., "
                       f"replace=False) or a permutation), so the k images of a class are k different images.")
    outside = [index for index in chosen if not 0 <= index < len(labels)]
    if outside:
        fail(exercise, f"indices {outside[:5]} are not positions in labels (0 to {len(labels) - 1}).")
    per_class = Counter(labels[index] for index in chosen)
    if len(chosen) == k and len(set(labels)) > 1:
        fail(exercise, f"you drew {k} images in total; k-shot means k images of EVERY class ({k} x {len(set(labels))} "
                       f"classes here).")
    wrong = {label: per_class.get(label, 0) for label in sorted(set(labels)) if per_class.get(label, 0) != k}
    if wrong:
        fail(exercise, f"with k={k} every class needs exactly {k} images; yours has {wrong} (class: images drawn). "
                     f"Draw from each class separately.")


def check_k_shot(k_shot_indices) -> None:
    """Check `k_shot_indices(labels, k, seed)` -> indices of exactly k images of every class, drawn at random
    without replacement; the same seed gives the same draw; a class with fewer than k images is refused."""
    exercise = "k_shot_indices"
    labels = K_SHOT_LABELS
    for case_labels, k in ((labels, 1), (labels, 3), (labels, 4), (SHUFFLED_LABELS, 2), (SHUFFLED_LABELS, 4)):
        check_draw(exercise, draw(k_shot_indices, case_labels, k, 0, exercise), case_labels, k)
    first = sorted(draw(k_shot_indices, labels, 2, 0, exercise))
    if first != sorted(draw(k_shot_indices, labels, 2, 0, exercise)):
        fail(exercise, "two calls with the same seed drew different images: make the generator from the seed "
                       "(np.random.default_rng(seed)), so a k-shot point can be reproduced.")
    if all(sorted(draw(k_shot_indices, labels, 2, seed, exercise)) == first for seed in range(1, 6)):
        fail(exercise, "seeds 0 to 5 all draw the same images: shuffle within each class with the seed's generator, "
                       "or every draw of the curve is the same draw and its spread says nothing.")
    try:
        result = k_shot_indices(list(labels), 5, 0)
    except NotImplementedError:
        fail(exercise, "not written yet: replace the `raise NotImplementedError(...)` line with your code.")
    except Exception:  # any error is a refusal: the class of 4 cannot give 5 images
        return passed(exercise)
    fail(exercise, f"with k=5 class 3 has only 4 images, yet you returned {len(indices_of(result, exercise, 'k-shot'))} "
                   f"indices. Refuse (raise ValueError naming the class): a point labelled 5-shot that used 4 images "
                   f"of a class would be mislabelled.")

