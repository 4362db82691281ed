"""Linear probe on frozen image features, as the CLIP paper's appendix A.3 does it, and its k-shot curve.

The paper fits scikit-learn's L-BFGS logistic regression (max 1,000 iterations) on frozen features and picks
the L2 strength lambda on a validation split: a sweep starting at lambda = 1e-6, 1e-4, ..., 1e6 (every two
decades), then a parametric binary search that halves the interval around the best value until it reaches
8 steps per decade. `select_C` does exactly that over scikit-learn's C (the inverse strength; the range is
symmetric, so sweeping C over [1e-6, 1e6] is sweeping lambda = 1/C over the same range): 7 + 2 * 4 = 15 fits.

Features: the paper takes the penultimate layer (for ViTs, before the projection) and A.3 mentions no
standardisation. The kit probes the projected embeddings that `features.encode_images` returns, L2-normalised
(`probe_inputs`), so the probe and the zero-shot classifier read the very same vectors and can be compared line
for line. The paper then refits on train + validation with the chosen C (`fit_probe(..., refit=True)`).
"""
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from .similarity import check_finite

MAX_ITER = 1000
START_LOG10_C = np.arange(-6.0, 7.0, 2.0)  # the paper's seven starting points, two decades apart
STEPS_PER_DECADE = 8
K_SHOTS = (1, 2, 4, 8, 16)


def probe_inputs(image_features) -> np.ndarray:
    """[n, dim] float64 numpy array of the rows scaled to unit length (what every function here fits on)."""
    image_features = torch.as_tensor(image_features).detach().cpu().double()
    if image_features.dim() != 2:
        raise ValueError(f"image_features must be a [n, dim] array, got shape {tuple(image_features.shape)}")
    check_finite(image_features, "image_features", "the image tower (features.encode_images)")
    return torch.nn.functional.normalize(image_features, dim=-1).numpy()


def as_labels(labels) -> np.ndarray:
    return torch.as_tensor(labels).detach().cpu().long().numpy()


def fit_logistic(image_features, labels, C: float, max_iter: int = MAX_ITER) -> LogisticRegression:
    """A LogisticRegression (L-BFGS, multinomial, L2 strength 1/C) fitted on the normalised features."""
    classifier = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings(), one_thread():
        # A 1-shot fit has as many classes as samples, which sklearn suspects is regression; here it is not.
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return classifier.fit(probe_inputs(image_features), as_labels(labels))


def one_thread():
    """Context: BLAS on one thread. L-BFGS on [n, dim] features does many tiny products; on a busy 2-core
    machine a thread pool's start-up and waiting made a k-shot curve 10-50x slower than one thread."""
    return threadpool_limits(limits=1)


def probe_accuracy(classifier, image_features, labels) -> float:
    """Top-1 accuracy (percent) of a fitted probe on (image_features, labels)."""
    with one_thread():
        predictions = classifier.predict(probe_inputs(image_features))
    return 100 * float(np.mean(predictions == as_labels(labels)))


def validation_loss(classifier, image_features, labels) -> float:
    """Mean cross-entropy (nats) of a fitted probe over the rows whose class it was trained on."""
    labels = as_labels(labels)
    known = np.isin(labels, classifier.classes_)
    with one_thread():
        probabilities = classifier.predict_proba(probe_inputs(image_features)[known])
    true = probabilities[np.arange(known.sum()), np.searchsorted(classifier.classes_, labels[known])]
    return float(-np.log(np.clip(true, np.finfo(np.float64).eps, None)).mean())  # sklearn.metrics.log_loss clips so too


def check_validation_classes(train_labels, val_labels) -> None:
    """A ValueError when validation has classes the training rows lack: a probe can never predict them, so
    they would only lower every C's accuracy alike (or, all absent, leave nothing to choose C on)."""
    absent = sorted(set(as_labels(val_labels).tolist()) - set(as_labels(train_labels).tolist()))
    if absent:
        raise ValueError(f"validation classes {absent[:10]}{' ...' if len(absent) > 10 else ''} ({len(absent)} "
                         f"in all) have no training rows, so no probe can predict them and C cannot be chosen on "
                         f"them: split so that every validation class is in training (e.g. data.split, stratified), "
                         f"or drop those validation rows")


def select_C(train_features, train_labels, val_features, val_labels,
             start_log10_C=START_LOG10_C, steps_per_decade: int = STEPS_PER_DECADE,
             max_iter: int = MAX_ITER) -> tuple[LogisticRegression, float, pd.DataFrame]:
    """(classifier fitted on train with the best C, that C, the sweep: one row per C tried).

    The sweep's columns: C, log10_C, val_accuracy (percent), val_loss (cross-entropy), converged. The best C
    has the highest validation accuracy; among equal accuracies the lowest validation cross-entropy (accuracy
    is flat over decades of C, and very small C predicts the same classes with near-uniform probabilities),
    then the smaller C. After the starting grid, each round tries the two points half a step either side of
    the best so far (within the grid's range) and halves the step, until the step is 1/steps_per_decade decade
    (start_log10_C a single value or steps_per_decade=0: no refinement).
    """
    check_validation_classes(train_labels, val_labels)
    start = np.sort(np.atleast_1d(np.asarray(start_log10_C, dtype=float)))
    tried: dict[float, tuple[float, float, bool, LogisticRegression]] = {}

    def attempt(log10_C: float) -> None:
        log10_C = round(float(log10_C), 6)
        if log10_C in tried or not start[0] <= log10_C <= start[-1]:
            return
        with warnings.catch_warnings():
            # Very weak regularisation on separable data often stops at max_iter; that is recorded, not hidden.
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier = fit_logistic(train_features, train_labels, 10.0 ** log10_C, max_iter)
        converged = bool(np.all(classifier.n_iter_ < max_iter))
        tried[log10_C] = (probe_accuracy(classifier, val_features, val_labels),
                          validation_loss(classifier, val_features, val_labels), converged, classifier)

    def best() -> float:
        return max(tried, key=lambda log10_C: (tried[log10_C][0], -tried[log10_C][1], -log10_C))

    for log10_C in start:
        attempt(log10_C)
    step = float(np.min(np.diff(start))) if len(start) > 1 else 0.0
    while steps_per_decade and step > 1 / steps_per_decade + 1e-9:
        step /= 2
        centre = best()
        attempt(centre - step)
        attempt(centre + step)
    chosen = best()
    sweep = pd.DataFrame([{"C": 10.0 ** log10_C, "log10_C": log10_C, "val_accuracy": accuracy, "val_loss": loss,
                           "converged": ok} for log10_C, (accuracy, loss, ok, _) in sorted(tried.items())])
    return tried[chosen][3], 10.0 ** chosen, sweep


def fit_probe(train_features, train_labels, val_features, val_labels, refit: bool = False,
              max_iter: int = MAX_ITER) -> tuple[LogisticRegression, float]:
    """(classifier, chosen C): C picked on the validation split by `select_C`.

    refit=True refits with that C on train + validation together, as the paper does for its final numbers
    (then the validation split can no longer measure the classifier). Warns if the returned fit hit max_iter.
    """
    classifier, C, _ = select_C(train_features, train_labels, val_features, val_labels, max_iter=max_iter)
    if refit:
        features = np.concatenate([probe_inputs(train_features), probe_inputs(val_features)])
        classifier = fit_logistic(features, np.concatenate([as_labels(train_labels), as_labels(val_labels)]),
                                  C, max_iter)
    if np.any(classifier.n_iter_ >= max_iter):
        warnings.warn(f"the probe with C={C:.3g} stopped at max_iter={max_iter} without converging; its accuracy "
                      "may still be fine, but pass a larger max_iter to be sure", ConvergenceWarning, stacklevel=2)
    return classifier, C


def k_shot_indices(labels, k: int, seed: int = 0) -> np.ndarray:
    """Indices of exactly k images for every class present in `labels`, drawn without replacement.

    Sorted by class, then randomly within a class; the same seed gives the same draw. A class with fewer than
    k images is refused (ValueError naming it) rather than silently given fewer, since a "k-shot" point that
    mixes k and fewer shots would be mislabelled.
    """
    labels = as_labels(labels)
    if k < 1:
        raise ValueError(f"k must be at least 1 image per class, got {k}")
    classes, counts = np.unique(labels, return_counts=True)
    short = {int(c): int(n) for c, n in zip(classes, counts) if n < k}
    if short:
        raise ValueError(f"k={k} images per class asked, but classes {short} (class: images) have fewer; "
                         f"choose k <= {counts.min()} or give more labelled images")
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in classes])


def k_shot_draws(train_features, train_labels, val_features, val_labels, test_features, test_labels,
                 ks=K_SHOTS, n_draws: int = 5, seed: int = 0, C: float | None = None) -> pd.DataFrame:
    """One row per (k, draw): k, draw, C, test accuracy (percent) of a probe fitted on k images per class.

    C=None picks C on the validation split for each draw (`select_C`). That split is larger than k images
    per class, so the curve is what k labelled images give when the regularisation is well tuned: an upper
    bound for a strict k-shot setting. Pass a fixed C to avoid it. Draw d of every k uses seed + d.
    """
    draws = k_shot_draws_on(train_features, train_labels, val_features, val_labels,
                            {"test": (test_features, test_labels)}, ks, n_draws, seed, C)
    return draws.drop(columns="test set")


def k_shot_draws_on(train_features, train_labels, val_features, val_labels, test_sets: dict,
                    ks=K_SHOTS, n_draws: int = 5, seed: int = 0, C: float | None = None) -> pd.DataFrame:
    """`k_shot_draws` scoring each probe on several test sets ({name: (image_features, labels)}): one row
    per (k, draw, test set), with a "test set" column; the same probe is scored on every set."""
    train_features, train_labels = probe_inputs(train_features), as_labels(train_labels)
    rows = []
    for k in ks:
        for draw in range(n_draws):
            chosen = k_shot_indices(train_labels, k, seed + draw)
            if C is None:
                classifier, draw_C, _ = select_C(train_features[chosen], train_labels[chosen], val_features, val_labels)
            else:
                classifier, draw_C = fit_logistic(train_features[chosen], train_labels[chosen], C), C
            rows += [{"k": k, "draw": draw, "C": draw_C, "test set": name,
                      "accuracy": probe_accuracy(classifier, features, labels)}
                     for name, (features, labels) in test_sets.items()]
    return pd.DataFrame(rows)


def k_shot_curve(draws: pd.DataFrame) -> pd.DataFrame:
    """Per k (the index): mean, std, min, max of the accuracy over the draws of `k_shot_draws`, and n_draws."""
    curve = draws.groupby("k")["accuracy"].agg(["mean", "std", "min", "max", "count"])
    return curve.rename(columns={"count": "n_draws"})


def zeroshot_probe(classifier, logit_scale: float = 100.0) -> LogisticRegression:
    """The zero-shot classifier ([n_classes, dim] rows from zeroshot.build_classifier) as a fitted
    LogisticRegression (coef_ = logit_scale * rows, no intercept), so `probe_accuracy` scores both alike.

    Its predictions are zeroshot.logits(...).argmax. Why not initialise the probe from it: the L2-regularised
    logistic loss is strictly convex, so L-BFGS reaches the same optimum from any start; only a penalty
    that pulls towards these rows (not a start) would let the text prior help a k-shot probe.
    """
    rows = check_finite(torch.as_tensor(classifier).detach().cpu().double(), "classifier",
                        "the text tower (zeroshot.build_classifier)").numpy()
    probe = LogisticRegression()
    probe.classes_ = np.arange(len(rows))
    probe.coef_ = logit_scale * rows
    probe.intercept_ = np.zeros(len(rows))
    probe.n_features_in_ = rows.shape[1]
    return probe
