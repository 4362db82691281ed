import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from clip_helpers import probe, zeroshot


def blobs(n_per_class, seed, n_classes=4, dim=16, spread=1.6):
    """Overlapping Gaussian classes, so accuracy depends on the regularisation."""
    rng = np.random.default_rng(100)  # the class centres are fixed; `seed` draws the points
    centres = rng.normal(size=(n_classes, dim))
    points = np.random.default_rng(seed).normal(scale=spread, size=(n_classes, n_per_class, dim))
    features = (centres[:, None, :] + points).reshape(-1, dim)
    return torch.tensor(features, dtype=torch.float32), torch.arange(n_classes).repeat_interleave(n_per_class)


@pytest.fixture(scope="module")
def splits():
    return blobs(25, seed=1), blobs(25, seed=2), blobs(40, seed=3)


def unit(features):
    features = np.asarray(features, dtype=np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_fit_logistic_is_sklearn_on_unit_rows(splits):
    (train, train_labels), _, (test, test_labels) = splits
    ours = probe.fit_logistic(train, train_labels, C=0.5)
    direct = LogisticRegression(C=0.5, max_iter=1000).fit(unit(train), train_labels.numpy())
    assert np.array_equal(ours.predict(probe.probe_inputs(test)), direct.predict(unit(test)))
    np.testing.assert_allclose(ours.coef_, direct.coef_, rtol=1e-6, atol=1e-8)
    expected = 100 * np.mean(direct.predict(unit(test)) == test_labels.numpy())
    assert probe.probe_accuracy(ours, test, test_labels) == pytest.approx(expected)


def test_select_C_picks_the_best_validation_C_of_a_brute_force_loop(splits):
    (train, train_labels), (val, val_labels), _ = splits
    classifier, C, sweep = probe.select_C(train, train_labels, val, val_labels)
    brute, losses = [], []
    for c in sweep["C"]:
        fitted = LogisticRegression(C=c, max_iter=1000).fit(unit(train), train_labels.numpy())
        brute.append(100 * np.mean(fitted.predict(unit(val)) == val_labels.numpy()))
        losses.append(log_loss(val_labels.numpy(), fitted.predict_proba(unit(val)), labels=fitted.classes_))
    np.testing.assert_allclose(sweep["val_accuracy"], brute)
    np.testing.assert_allclose(sweep["val_loss"], losses, rtol=1e-6)
    # Best accuracy; among equals the lowest cross-entropy (then the smallest C; sweep is sorted by C).
    best = min(range(len(brute)), key=lambda i: (-brute[i], losses[i], i))
    assert C == pytest.approx(sweep["C"][best])
    assert sweep["C"].min() >= 1e-6 and sweep["C"].max() <= 1e6
    assert probe.probe_accuracy(classifier, val, val_labels) == pytest.approx(max(brute))
    # The accuracy must actually depend on C here, or the test would pass for any choice.
    assert min(brute) < max(brute)


def test_sweep_is_the_papers_grid_refined_to_an_eighth_of_a_decade(splits):
    (train, train_labels), (val, val_labels), _ = splits
    _, C, sweep = probe.select_C(train, train_labels, val, val_labels)
    assert set(np.arange(-6.0, 7.0, 2.0)) <= set(sweep["log10_C"])
    assert len(sweep) <= 7 + 2 * 4
    gaps = np.abs(sweep["log10_C"] - np.log10(C))
    assert gaps[gaps > 0].min() == pytest.approx(1 / 8)


def test_a_plain_grid_without_refinement_picks_the_grid_argmax(splits):
    (train, train_labels), (val, val_labels), _ = splits
    grid = np.linspace(-3, 3, 10)
    _, C, sweep = probe.select_C(train, train_labels, val, val_labels, start_log10_C=grid, steps_per_decade=0)
    assert len(sweep) == 10
    fits = [probe.fit_logistic(train, train_labels, 10.0 ** g) for g in grid]
    keys = [(-probe.probe_accuracy(f, val, val_labels), probe.validation_loss(f, val, val_labels)) for f in fits]
    assert np.log10(C) == pytest.approx(grid[min(range(10), key=lambda i: keys[i])])


def test_fit_probe_refit_uses_train_and_val(splits):
    (train, train_labels), (val, val_labels), (test, _) = splits
    classifier, C = probe.fit_probe(train, train_labels, val, val_labels, refit=True)
    direct = LogisticRegression(C=C, max_iter=1000).fit(unit(torch.cat([train, val])),
                                                        torch.cat([train_labels, val_labels]).numpy())
    assert np.array_equal(classifier.predict(probe.probe_inputs(test)), direct.predict(unit(test)))


def test_k_shot_indices_are_k_distinct_images_of_every_class():
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 4)
    for k in (1, 2, 4):
        chosen = probe.k_shot_indices(labels, k, seed=3)
        assert len(set(chosen.tolist())) == len(chosen) == 3 * k
        assert np.array_equal(np.bincount(labels.numpy()[chosen]), [k, k, k])


def test_k_shot_draws_repeat_by_seed_and_differ_between_seeds():
    labels = np.repeat(np.arange(5), 20)
    assert np.array_equal(probe.k_shot_indices(labels, 4, seed=7), probe.k_shot_indices(labels, 4, seed=7))
    draws = [set(probe.k_shot_indices(labels, 4, seed=s).tolist()) for s in range(5)]
    assert len({frozenset(d) for d in draws}) == 5


def test_impossible_k_is_refused_with_the_short_class():
    labels = [0] * 5 + [1] * 2
    with pytest.raises(ValueError, match=r"\{1: 2\}.*k <= 2"):
        probe.k_shot_indices(labels, 4)
    with pytest.raises(ValueError, match="at least 1"):
        probe.k_shot_indices(labels, 0)


def test_k_shot_curve_summarises_independent_fits(splits):
    (train, train_labels), (val, val_labels), (test, test_labels) = splits
    draws = probe.k_shot_draws(train, train_labels, val, val_labels, test, test_labels,
                               ks=(1, 4), n_draws=3, seed=10, C=1.0)
    assert list(draws["k"]) == [1, 1, 1, 4, 4, 4]
    chosen = probe.k_shot_indices(train_labels, 4, seed=11)  # k=4, draw 1 uses seed + 1
    direct = LogisticRegression(C=1.0, max_iter=1000).fit(unit(train[chosen]), train_labels.numpy()[chosen])
    expected = 100 * np.mean(direct.predict(unit(test)) == test_labels.numpy())
    assert draws["accuracy"][4] == pytest.approx(expected)
    curve = probe.k_shot_curve(draws)
    for k in (1, 4):
        values = draws["accuracy"][draws["k"] == k].to_numpy()
        assert curve.loc[k, "mean"] == pytest.approx(values.mean())
        assert curve.loc[k, "std"] == pytest.approx(values.std(ddof=1))
        assert curve.loc[k, "n_draws"] == 3


def test_k_shot_draws_select_C_on_validation_when_not_given(splits):
    (train, train_labels), (val, val_labels), (test, test_labels) = splits
    draws = probe.k_shot_draws(train, train_labels, val, val_labels, test, test_labels, ks=(2,), n_draws=2)
    chosen = probe.k_shot_indices(train_labels, 2, seed=0)
    _, C, _ = probe.select_C(train[chosen], train_labels[chosen], val, val_labels)
    assert draws["C"][0] == pytest.approx(C)
    assert isinstance(draws, pd.DataFrame) and len(draws) == 2


def test_k_shot_draws_on_scores_each_probe_on_every_test_set(splits):
    # Notebook 09 scores one probe per (k, draw) on seen and held-out pairs; each set's accuracy is that
    # probe's, fitted directly with sklearn on the same draw.
    (train, train_labels), (val, val_labels), (test, test_labels) = splits
    first, second = test_labels < 2, test_labels >= 2
    sets = {"a": (test[first], test_labels[first]), "b": (test[second], test_labels[second])}
    draws = probe.k_shot_draws_on(train, train_labels, val, val_labels, sets, ks=(1, 3), n_draws=2, seed=5, C=2.0)
    assert len(draws) == 2 * 2 * 2 and set(draws["test set"]) == {"a", "b"}
    chosen = probe.k_shot_indices(train_labels, 3, seed=6)  # k=3, draw 1
    direct = LogisticRegression(C=2.0, max_iter=1000).fit(unit(train[chosen]), train_labels.numpy()[chosen])
    for name, (features, labels) in sets.items():
        row = draws[(draws["k"] == 3) & (draws["draw"] == 1) & (draws["test set"] == name)]
        expected = 100 * np.mean(direct.predict(unit(features)) == labels.numpy())
        assert row["accuracy"].item() == pytest.approx(expected)
    single = probe.k_shot_draws(train, train_labels, val, val_labels, *sets["b"], ks=(1, 3), n_draws=2, seed=5, C=2.0)
    assert single["accuracy"].tolist() == draws[draws["test set"] == "b"]["accuracy"].tolist()


def test_a_one_shot_fit_does_not_warn_about_regression():
    features, labels = blobs(1, seed=0)  # as many classes as samples
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe.fit_logistic(features, labels, C=1.0)


def test_zeroshot_probe_predicts_like_zeroshot_logits(splits):
    _, _, (test, test_labels) = splits
    classifier = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    as_probe = probe.zeroshot_probe(classifier)
    expected = zeroshot.logits(test, classifier).argmax(dim=-1).numpy()
    assert np.array_equal(as_probe.predict(probe.probe_inputs(test)), expected)
    assert probe.probe_accuracy(as_probe, test, test_labels) == pytest.approx(
        zeroshot.scores(test, test_labels, classifier)["top1"], abs=1e-4)


def test_non_finite_features_are_refused():
    features = torch.ones(4, 3)
    features[1, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        probe.fit_logistic(features, [0, 1, 0, 1], C=1.0)
