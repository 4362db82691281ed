import math

import torch

from clip_helpers.similarity import cosine_similarity, similarity_matrix
from clip_helpers.text import tokenize


def test_cosine_of_known_vectors():
    assert math.isclose(cosine_similarity([1.0, 0.0], [0.0, 2.0]), 0.0, abs_tol=1e-12)
    assert math.isclose(cosine_similarity([1.0, 1.0], [2.0, 2.0]), 1.0, rel_tol=1e-12)
    assert math.isclose(cosine_similarity([1.0, 0.0], [-3.0, 0.0]), -1.0, rel_tol=1e-12)
    assert math.isclose(cosine_similarity([1.0, 0.0], [1.0, 1.0]), 1 / math.sqrt(2), rel_tol=1e-12)


def test_formula_matrix_and_torch_agree(generator):
    image_features = torch.randn(5, 16, generator=generator)
    text_features = torch.randn(7, 16, generator=generator)
    matrix = similarity_matrix(image_features, text_features)
    assert matrix.shape == (5, 7)
    by_formula = torch.tensor([[cosine_similarity(i, t) for t in text_features] for i in image_features])
    torch.testing.assert_close(matrix.double(), by_formula, atol=1e-6, rtol=0)
    by_torch = torch.nn.functional.cosine_similarity(image_features[:, None], text_features[None], dim=-1)
    torch.testing.assert_close(matrix, by_torch, atol=1e-6, rtol=0)


def test_similarity_ignores_length(generator):
    a, b = torch.randn(3, 8, generator=generator), torch.randn(4, 8, generator=generator)
    torch.testing.assert_close(similarity_matrix(3 * a, 0.5 * b), similarity_matrix(a, b))


def test_model_forward_is_scaled_similarity(mini, generator):
    images = torch.randn(4, 3, 32, 32, generator=generator)
    tokens = tokenize(mini, ["a red circle", "a blue square", "a green star", "a cat"])
    with torch.no_grad():
        logits_per_image, logits_per_text = mini(images, tokens)
        expected = mini.logit_scale.exp() * similarity_matrix(mini.encode_image(images), mini.encode_text(tokens))
    torch.testing.assert_close(logits_per_image, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_per_text, expected.T, atol=1e-5, rtol=1e-5)


def test_cosine_rejects_mismatched_shapes():
    import pytest
    with pytest.raises(ValueError, match="same length"):
        cosine_similarity([1.0, 2.0], [1.0, 2.0, 3.0])
