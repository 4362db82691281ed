"""Modality gap, cone spread and the gap's removal against hand computations on small exact examples."""
import math

import pytest
import torch

from clip_helpers.geometry import cone_spread, geometry_summary, modality_gap, without_gap
from clip_helpers.models import build_random_clip
from clip_helpers.text import encode_texts

# Images around +x, texts around +y, each pair symmetric about its axis (angle a off the axis).
A = math.radians(30)
IMAGES = torch.tensor([[math.cos(A), math.sin(A), 0.0], [math.cos(A), -math.sin(A), 0.0]]) * 3  # lengths do not matter
TEXTS = torch.tensor([[math.sin(A), math.cos(A), 0.0], [-math.sin(A), math.cos(A), 0.0]])


def test_gap_and_spread_by_hand():
    # Centroids: (cos a, 0, 0) and (0, cos a, 0), so the gap is sqrt(2) cos a; every vector is a from its axis.
    assert modality_gap(IMAGES, TEXTS) == pytest.approx(math.sqrt(2) * math.cos(A), rel=1e-6)
    assert cone_spread(IMAGES) == pytest.approx(math.cos(A), rel=1e-6)
    assert modality_gap(IMAGES, IMAGES * 2) == pytest.approx(0.0, abs=1e-7)
    assert modality_gap(IMAGES, -IMAGES) == pytest.approx(2 * math.cos(A), rel=1e-6)


def test_removing_the_gap_by_hand():
    # Minus the centroids: images become (0, +-sin a, 0) -> (0, +-1, 0); texts (+-sin a, 0, 0) -> (+-1, 0, 0).
    images, texts = without_gap(IMAGES, TEXTS)
    assert torch.allclose(images, torch.tensor([[0.0, 1, 0], [0, -1, 0]]), atol=1e-6)
    assert torch.allclose(texts, torch.tensor([[1.0, 0, 0], [-1, 0, 0]]), atol=1e-6)
    summary = geometry_summary(IMAGES, TEXTS)
    # Before: the cosine matrix is [[sin 2a, 0], [0, -sin 2a]] (mean 0, sample std sqrt(2/3) sin 2a); after: all 0.
    assert summary["mean_similarity"] == pytest.approx(0.0, abs=1e-6)
    assert summary["similarity_std"] == pytest.approx(math.sqrt(2 / 3) * math.sin(2 * A), rel=1e-6)
    assert summary["similarity_std_without_gap"] == pytest.approx(0.0, abs=1e-6)


def test_a_random_clip_already_has_a_gap_and_narrow_cones():
    model = build_random_clip("mini-vit")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        image_features = model.encode_image(torch.randn(16, 3, 32, 32, generator=generator))
        text_features = encode_texts(model, [f"a photo of a {w}." for w in "cat dog car ship bird frog deer horse".split()])
    summary = geometry_summary(image_features, text_features)
    assert all(math.isfinite(v) for v in summary.values())
    # Liang et al.'s observation at initialisation: each modality's cone is narrow and the two are apart.
    assert summary["image_spread"] > 0.5 and summary["text_spread"] > 0.5 and summary["modality_gap"] > 0.3
    assert summary["similarity_std_without_gap"] > summary["similarity_std"]


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="NaN or inf"):
        modality_gap(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="all-zero row"):
        cone_spread(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same model"):
        modality_gap(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        without_gap(torch.ones(1, 3), torch.ones(2, 3))
