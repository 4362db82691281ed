"""NaN and inf features, classifier rows and weights are refused by name; the API's edge cases say what is wrong."""
import copy
import warnings

import pytest
import torch

from clip_helpers import probe, retrieval
from clip_helpers.losses import clip_loss
from clip_helpers.models import load_clip
from clip_helpers.similarity import NonFiniteError, similarity_matrix
from clip_helpers.zeroshot import logits, scores


def unit_rows(n, dim=8, seed=0):
    rows = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def with_nan_rows(rows, *indices):
    rows = rows.clone()
    rows[list(indices), 0] = float("nan")
    return rows


# ---------------------------------------------------------------- non-finite inputs

def test_zero_shot_refuses_nan_features_instead_of_reporting_class_0():
    classifier, features = unit_rows(3, seed=1), with_nan_rows(unit_rows(4), 0, 2)
    # The argmax of a NaN row is class 0: with every label 0 the old code reported top-1 100%.
    with pytest.raises(NonFiniteError, match=r"2 of 4 rows of image_features .*rows \[0, 2\].*the image tower"):
        scores(features, torch.zeros(4, dtype=torch.long), classifier)


def test_zero_shot_refuses_a_classifier_with_an_infinite_row():
    classifier = unit_rows(3, seed=1)
    classifier[1, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"1 of 3 rows of classifier .*text tower"):
        logits(unit_rows(4), classifier)


def test_similarity_and_loss_refuse_nan_features():
    images, texts = unit_rows(4), with_nan_rows(unit_rows(4, seed=1), 3)
    with pytest.raises(NonFiniteError, match=r"1 of 4 rows of text_features .*rows \[3\]"):
        similarity_matrix(images, texts)
    with pytest.raises(ValueError, match=r"1 of 4 rows of text_features"):
        clip_loss(images, texts, 100.0)
    # a FloatingPointError too, so the training loop reports it with its epoch and step
    assert issubclass(NonFiniteError, FloatingPointError)


def test_retrieval_refuses_nan_features_naming_the_rows():
    with pytest.raises(NonFiniteError, match=r"2 of 3 rows of image_features"):
        retrieval.retrieval_scores(with_nan_rows(unit_rows(3), 0, 1), unit_rows(3, seed=1), [0, 1, 2])


def test_probe_refuses_nan_features_and_a_nan_zero_shot_classifier():
    with pytest.raises(NonFiniteError, match=r"1 of 6 rows of image_features"):
        probe.fit_logistic(with_nan_rows(unit_rows(6), 5), [0, 1, 0, 1, 0, 1], C=1.0)
    with pytest.raises(NonFiniteError, match=r"1 of 3 rows of classifier"):
        probe.zeroshot_probe(with_nan_rows(unit_rows(3), 2))


def test_load_clip_names_the_tensors_that_are_not_finite(mini, tmp_path):
    state_dict = copy.deepcopy(mini.state_dict())
    state_dict["visual.attnpool.c_proj.weight"][0, 0] = float("nan")
    state_dict["ln_final.bias"][1] = float("inf")
    torch.save(state_dict, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of .*'visual.attnpool.c_proj.weight', 'ln_final.bias'"):
        load_clip(str(tmp_path / "model.pt"), device="cpu")


# ---------------------------------------------------------------- edges of the API

def test_logits_of_fp32_features_and_an_fp16_classifier_are_fp32():
    features, classifier = unit_rows(4), unit_rows(3, seed=1).half()
    got = logits(features, classifier)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), 100.0 * features.double() @ classifier.double().T, atol=1e-4)
    assert similarity_matrix(features, classifier).dtype == torch.float32


def test_clip_loss_refuses_an_empty_batch_and_an_infinite_scale():
    with pytest.raises(ValueError, match=r"0 images and 0 texts \(an empty batch\)"):
        clip_loss(torch.zeros(0, 8), torch.zeros(0, 8), 100.0)
    for scale in (float("inf"), torch.tensor(float("nan")), -1.0):
        with pytest.raises(ValueError, match="logit_scale must be one finite number >= 0"):
            clip_loss(unit_rows(4), unit_rows(4, seed=1), scale)


def test_clip_loss_of_one_pair_is_zero_and_says_why():
    with pytest.warns(UserWarning, match="single image-text pair is 0 whatever the features"):
        loss = clip_loss(unit_rows(1), unit_rows(1, seed=1), 100.0)
    assert loss.item() == 0.0  # log-softmax over one column: the documented result
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_loss(unit_rows(2), unit_rows(2, seed=1), 100.0)  # two pairs: no warning


def test_recall_at_k_refuses_zero_queries():
    with pytest.raises(ValueError, match="no queries"):
        retrieval.recall_at_k(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))


def test_select_C_names_validation_classes_missing_from_training():
    train_features, val_features = unit_rows(8), unit_rows(4, seed=1)
    train_labels = torch.tensor([0, 1] * 4)
    for val_labels, absent in (([2, 3, 2, 3], r"\[2, 3\]"), ([0, 1, 2, 1], r"\[2\]")):
        with pytest.raises(ValueError, match=rf"validation classes {absent} .*have no training rows"):
            probe.select_C(train_features, train_labels, val_features, torch.tensor(val_labels), start_log10_C=[0.0])
