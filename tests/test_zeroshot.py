import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.similarity import normalize
from clip_helpers.text import encode_texts
from clip_helpers.zeroshot import build_classifier, evaluate, predict, scores


def test_classifier_is_the_normalised_mean_of_template_embeddings(mini):
    class_names, templates = ["circle", "star", "square"], ["a {}.", "a photo of a {}.", "a drawing of the {}."]
    classifier = build_classifier(mini, class_names, templates)
    assert classifier.shape == (3, mini.text_projection.shape[1])
    torch.testing.assert_close(classifier.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        star = normalize(encode_texts(mini, [t.format("star") for t in templates])).mean(dim=0)
    torch.testing.assert_close(classifier[1], star / star.norm(), atol=1e-6, rtol=0)


def test_predict_is_the_softmax_of_the_models_own_logits(mini, generator):
    class_names = ["red circle", "blue star"]
    images = torch.randn(3, 3, 32, 32, generator=generator)
    probabilities = predict(mini, images, build_classifier(mini, class_names, ["{}"]))
    from clip_helpers.text import tokenize
    with torch.no_grad():
        expected = mini(images, tokenize(mini, class_names))[0].softmax(dim=-1)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-4)


def test_scores_by_hand():
    classifier = torch.eye(3)
    image_features = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.5], [0.9, 0.0, 1.0], [0.2, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2])  # predictions: 0, 1, 2, 1
    result = scores(image_features, labels, classifier)
    assert result["top1"] == 75.0 and result["n"] == 4
    assert result["top5"] == 100.0  # only three classes: top-5 covers them all
    assert np.isclose(result["mean_per_class_recall"], 100 * (1 + 1 + 0.5) / 3)
    assert result["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_evaluate_matches_predict(mini, generator):
    images = torch.randn(10, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 4, (10,), generator=generator)
    classifier = build_classifier(mini, ["a", "b", "c", "d"], ["{}"])
    result = evaluate(mini, DataLoader(TensorDataset(images, labels), batch_size=4), classifier)
    predictions = predict(mini, images, classifier).argmax(dim=-1)
    assert result["top1"] == pytest.approx(100 * (predictions == labels).float().mean().item())  # float32 vs float64
    assert result["confusion"].sum() == 10


# ---------------------------------------------------------------- inputs that would mislead, classes without images

import pytest  # noqa: E402


@pytest.mark.parametrize("class_names, templates, error, match", [
    ("cat", ["a {}."], TypeError, r"class_names.*\['cat'\]"),
    (["cat", "dog"], "a {}.", TypeError, r"templates.*\['a \{\}.'\]"),
    ([], ["a {}."], ValueError, "class_names is empty"),
    (["cat", "dog"], [], ValueError, "templates is empty"),
    (["good", "bad", "good"], ["a {}."], ValueError, r"repeats \['good'\]"),
    (["cat", "dog"], ["a {}.", "a photo."], ValueError, r"'a photo.' has no \{\}"),
    (["cat", "dog"], ["a {name}."], ValueError, r"'a \{name\}.' cannot be filled"),
])
def test_classifier_inputs_that_would_silently_mislead_are_refused(mini, class_names, templates, error, match):
    with pytest.raises(error, match=match):
        build_classifier(mini, class_names, templates)



# ---------------------------------------------------------------- classes without images, against sklearn

from sklearn.metrics import balanced_accuracy_score, confusion_matrix, top_k_accuracy_score  # noqa: E402


@pytest.mark.parametrize("n_classes, absent", [(7, [1, 4, 6]), (3, [2]), (4, [])])
def test_scores_with_classes_that_have_no_images_match_sklearn(n_classes, absent, generator):
    """Mean per-class recall averages the classes present; an absent class's row is zeros, and top-5 with
    fewer than 5 classes counts every image."""
    present = [label for label in range(n_classes) if label not in absent]
    labels = torch.tensor(present * 4)[torch.randperm(4 * len(present), generator=generator)]
    image_features = torch.randn(len(labels), 8, generator=generator)
    classifier = torch.nn.functional.normalize(torch.randn(n_classes, 8, generator=generator), dim=-1)
    result = scores(image_features, labels, classifier)

    similarity = torch.nn.functional.normalize(image_features, dim=-1) @ classifier.T
    predictions = similarity.argmax(dim=-1).numpy()
    all_classes = list(range(n_classes))
    if absent:  # some images are predicted as an absent class: the case where averaging over it would differ
        assert set(predictions.tolist()) & set(absent)
    assert result["top1"] == pytest.approx(100 * np.mean(predictions == labels.numpy()))
    np.testing.assert_array_equal(result["confusion"], confusion_matrix(labels, predictions, labels=all_classes))
    assert result["confusion"][absent].sum() == 0
    with warnings.catch_warnings():  # sklearn warns about classes only predicted, and about k >= n_classes
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(labels, predictions)  # mean recall over the classes in y_true
        top5 = top_k_accuracy_score(labels, similarity.numpy(), k=min(5, n_classes), labels=all_classes)
    assert result["mean_per_class_recall"] == pytest.approx(100 * balanced)
    assert result["top5"] == pytest.approx(100 * top5)
    if n_classes < 5:
        assert result["top5"] == 100.0
