"""Check for notebook 01: a train/validation split without the report's leak, stratified and seeded."""
from collections import Counter

import numpy as np
import torch
import torch.utils.data

from .core import call, fail, passed

# 10 classes of uneven size, one class of 2 (one item each side) and one of 1 (nothing to split)
SPLIT_LABELS = [label for label, count in enumerate([30, 25, 40, 12, 30, 18, 22, 35, 2, 1]) for _ in range(count)]
# the same labels in a random order: a split that relies on the classes coming in blocks fails here
SHUFFLED_LABELS = [SPLIT_LABELS[i] for i in np.random.default_rng(11).permutation(len(SPLIT_LABELS))]


def indices_of(part, exercise, name) -> list:
    """A Subset's indices, or a list/array/tensor of ints, as a list of Python ints."""
    if isinstance(part, torch.utils.data.Subset):  # not getattr(part, "indices"): a tensor has an indices method
        part = part.indices
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    try:
        values = np.asarray(part).reshape(-1)
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise TypeError(values.dtype)
        return values.astype(int).tolist()
    except (TypeError, ValueError):
        fail(exercise, f"the {name} part must be a list of indices (ints) into labels; got {type(part).__name__}.")


def split_of(split_indices, labels, val_fraction, seed, exercise):
    result = call(exercise, split_indices, list(labels), val_fraction, seed, repeat=False)  # seeds: below
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(exercise, "return two lists of indices: (train_indices, val_indices).")
    return indices_of(result[0], exercise, "training"), indices_of(result[1], exercise, "validation")


def check_split(split_indices) -> None:
    """Check `split_indices(labels, val_fraction, seed)` -> (train_indices, val_indices).

    Disjoint, together every index once, each class split in the proportion val_fraction (within one item; a
    class of at least two items has one on each side), the same for the same seed and different for another.
    """
    exercise = "split"
    labels = SPLIT_LABELS
    for case_labels, val_fraction in ((labels, 0.2), (labels, 0.5), (SHUFFLED_LABELS, 0.2), (SHUFFLED_LABELS, 0.3)):
        train, val = split_of(split_indices, case_labels, val_fraction, 0, exercise)
        check_partition(exercise, train, val, len(case_labels))
        check_order(exercise, train, val, val_fraction)
        check_strata(exercise, case_labels, val, val_fraction)
    train, val = split_of(split_indices, labels, 0.2, 0, exercise)
    again = split_of(split_indices, labels, 0.2, 0, exercise)
    if sorted(val) != sorted(again[1]):
        fail(exercise, "two calls with the same seed gave different splits: draw the permutation from "
                       "np.random.default_rng(seed), not from the global random state.")
    other = split_of(split_indices, labels, 0.2, 1, exercise)
    if sorted(val) == sorted(other[1]):
        fail(exercise, "seed 0 and seed 1 give the same split: shuffle each class with a generator made from the "
                       "seed, so the validation images are a random sample and not the first ones of each class.")
    return passed(exercise)


def check_partition(exercise, train, val, n):
    both = set(train) & set(val)
    if both:
        fail(exercise, f"validation rows also in training: {len(both)} indices (e.g. {sorted(both)[:5]}) are in both "
                       f"parts. That is the report's leak (its validation set is the first 3% of the same list whose "
                       f"first 30% trains), and it makes validation scores look better than they are. Put each index "
                       f"in exactly one part.")
    repeated = [index for index, count in (Counter(train) + Counter(val)).items() if count > 1]
    if repeated:
        fail(exercise, f"indices {repeated[:5]} appear more than once: each item belongs to one part, once.")
    outside = [index for index in train + val if not 0 <= index < n]
    if outside:
        fail(exercise, f"indices {outside[:5]} are not positions in labels (0 to {n - 1}).")
    missing = set(range(n)) - set(train) - set(val)
    if missing:
        fail(exercise, f"{len(missing)} of the {n} items are in neither part (e.g. {sorted(missing)[:5]}): together "
                       f"the two parts must hold every item, so no labelled image is wasted.")


def check_order(exercise, train, val, val_fraction):
    """A (val, train) return shows as a validation part of the training part's size."""
    if val_fraction < 0.5 and len(val) > len(train):
        fail(exercise, f"with val_fraction={val_fraction} your validation part holds {len(val)} items and your training "
                       f"part {len(train)}: the two parts come back in the wrong order. The first is the training "
                       f"part, the second the validation part.")


def check_strata(exercise, labels, val, val_fraction):
    in_val = Counter(labels[index] for index in val)
    for label, count in sorted(Counter(labels).items()):
        target = count * val_fraction
        if count >= 2 and not 1 <= in_val[label] <= count - 1:
            fail(exercise, f"class {label} has {count} items and {in_val[label]} of them in validation: a class with "
                           f"at least two items needs one on each side, or it cannot be scored on validation.")
        if count >= 2 and abs(in_val[label] - target) > 1:
            fail(exercise, f"not stratified: class {label} has {in_val[label]} of its {count} items in validation, "
                           f"about {target:.1f} expected with val_fraction={val_fraction}. Split each class "
                           f"separately, so every class is represented in the same proportion.")
