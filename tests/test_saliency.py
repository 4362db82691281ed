"""Patch saliency: the map's shape and normalisation, a case whose answer is known exactly, the box scores
against hand computations, and the refusal of a ResNet tower (the offline MINI_CLIP has no patches)."""
import math

import pytest
import torch

from clip_helpers.models import build_random_clip, preprocess_for
from clip_helpers.saliency import (box_weights, mass_in_box, object_scores, patch_saliency, pointing_hit,
                                   random_map_scores, recognised, score_scenes, scores_by_prediction)
from clip_helpers.shapes import ShapesDataset, draw_scene
from clip_helpers.text import encode_texts, fill


@pytest.fixture(scope="module")
def model():
    return build_random_clip("mini-vit")


def one_patch_image(row, col, seed=0):
    """A 32 px image that is zero except in patch (row, col) of the 4 x 4 grid of 8 px patches."""
    image = torch.zeros(3, 32, 32)
    image[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return image


@pytest.mark.parametrize("row, col", [(1, 2), (3, 0), (0, 0), (2, 3)])
def test_all_the_mass_on_the_only_patch_that_is_not_empty(model, row, col):
    """Patch embeddings have no bias, so an empty patch's token is 0 and its gradient x token is exactly 0;
    the text is the image with that patch twice as bright, so strengthening the patch raises the cosine
    (it reaches 1 at twice the patch) and the one non-zero share is positive."""
    image = one_patch_image(row, col)
    with torch.no_grad():
        text_features = model.encode_image(2 * image[None])[0]
    saliency = patch_saliency(model, image, text_features)
    expected = torch.zeros(4, 4)
    expected[row, col] = 1
    assert torch.equal(saliency, expected)


def test_the_map_of_a_scene_and_caption_is_a_finite_distribution(model):
    image, objects = draw_scene(2, size=64, object_size=32, seed=0)
    saliency = patch_saliency(model, preprocess_for(32)(image), "a photo of a red circle.")
    assert saliency.shape == (4, 4) and torch.isfinite(saliency).all() and (saliency >= 0).all()
    assert saliency.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert not any(p.grad is not None for p in model.parameters())  # the map leaves the model's gradients alone


def test_box_scores_by_hand():
    # A 32 px image, 4 x 4 patches of 8 px; the box covers patch (0, 0) and half of patch (0, 1).
    box = (0, 0, 12, 8)
    weights = box_weights(box, 32, 4)
    assert weights[0, 0] == 1 and weights[0, 1] == 0.5 and weights.sum() == 1.5
    saliency = torch.zeros(4, 4)
    saliency[0, 1], saliency[2, 2] = 0.6, 0.4
    assert mass_in_box(saliency, box, 32) == pytest.approx(0.3)
    assert pointing_hit(saliency, box, 32) is False  # patch (0, 1)'s centre x = 12 is on the right edge, outside
    assert pointing_hit(saliency, (0, 0, 16, 8), 32) is True
    mass, hits = random_map_scores(box, 32, 4)
    assert mass == pytest.approx(1.5 / 16) and hits == pytest.approx(1 / 16)


def test_random_map_scores_are_what_random_maps_score():
    box, generator = (5, 9, 27, 30), torch.Generator().manual_seed(0)
    maps = torch.rand(4000, 4, 4, generator=generator)
    mass = sum(mass_in_box(m, box, 32) for m in maps) / len(maps)
    hits = sum(pointing_hit(m, box, 32) for m in maps) / len(maps)
    expected_mass, expected_hits = random_map_scores(box, 32, 4)
    assert mass == pytest.approx(expected_mass, abs=0.01) and hits == pytest.approx(expected_hits, abs=0.03)


def test_scores_of_scenes_are_fractions(model):
    scenes = [draw_scene(2, size=64, object_size=32, seed=k) for k in range(2)]
    try:
        scores = score_scenes(model, scenes, preprocess_for(32))
    except ValueError as error:  # a random model may lower every patch's similarity to a caption
        assert "no patch raises" in str(error)
        return
    assert scores["n_objects"] == 4
    assert 0 <= scores["mass_in_box"] <= 1 and 0 <= scores["pointing_game"] <= 1
    # Boxes are a quarter of a 2 x 2-cell scene: 4 of the 16 patches.
    assert scores["random_mass_in_box"] == pytest.approx(0.25) and scores["random_pointing_game"] == pytest.approx(0.25)


def test_a_resnet_tower_is_refused():
    with pytest.raises(ValueError, match="needs a ViT image tower.*ModifiedResNet"):
        patch_saliency(build_random_clip("mini"), torch.zeros(3, 32, 32), "a red circle.")


def test_recognised_is_the_caption_beating_every_absent_class_by_hand(model):
    image, objects = draw_scene(2, size=64, object_size=32, seed=3)
    pixels = preprocess_for(32)(image)
    class_names = ShapesDataset("all", n_per_class=1).classes
    with torch.no_grad():
        image_features = model.encode_image(pixels[None])[0]
        cosines = {name: torch.cosine_similarity(image_features, encode_texts(model, [fill("a {}.", name)])[0], dim=0).item()
                   for name in class_names}
    present = [f"{colour} {shape}" for colour, shape, _ in objects]
    best_absent = max(value for name, value in cosines.items() if name not in present)
    assert recognised(model, pixels, objects, class_names) == [cosines[name] > best_absent for name in present]
    # With no absent class to beat, every object is recognised; a class list without the object is refused.
    assert recognised(model, pixels, objects, present) == [True, True]
    with pytest.raises(ValueError, match="not among the class_names"):
        recognised(model, pixels, objects, present[:1])


def row(recognised, mass, hit, has_map=True):
    return {"recognised": recognised, "has_map": has_map, "mass_in_box": mass, "pointing_hit": hit,
            "random_mass_in_box": 0.25, "random_pointing_game": 0.25}


def test_scores_by_prediction_average_each_group_and_count_the_objects_without_a_map():
    rows = [row(True, 0.5, 1.0), row(True, 0.1, 0.0), row(False, 0.3, 1.0), row(False, float("nan"), float("nan"), False)]
    groups = scores_by_prediction(rows)
    assert groups["recognised"]["mass_in_box"] == pytest.approx(0.3) and groups["recognised"]["pointing_game"] == 0.5
    assert groups["recognised"]["n_objects"] == 2 and groups["recognised"]["n_without_map"] == 0
    assert groups["not recognised"]["mass_in_box"] == pytest.approx(0.3) and groups["not recognised"]["pointing_game"] == 1
    assert groups["not recognised"]["n_objects"] == 1 and groups["not recognised"]["n_without_map"] == 1
    empty = scores_by_prediction(rows[:2])["not recognised"]
    assert empty["n_objects"] == 0 and math.isnan(empty["mass_in_box"]) and math.isnan(empty["pointing_game"])
    with pytest.raises(ValueError, match="no prediction"):
        scores_by_prediction([row(None, 0.5, 1.0)])


def test_object_scores_are_the_maps_scored_one_by_one(model):
    scenes = [draw_scene(2, size=64, object_size=32, seed=k) for k in range(2)]
    rows = object_scores(model, scenes, preprocess_for(32), ShapesDataset("all", n_per_class=1).classes)
    assert len(rows) == 4 and all(isinstance(r["recognised"], bool) for r in rows)
    for r, (scene, (colour, shape, box)) in zip(rows, [(s, o) for s in scenes for o in s[1]]):
        box = [v / 2 for v in box]  # 64 px scenes, 32 px input
        if not r["has_map"]:
            continue
        saliency = patch_saliency(model, preprocess_for(32)(scene[0]), fill("a {}.", f"{colour} {shape}"))  # "an orange"
        assert r["mass_in_box"] == pytest.approx(mass_in_box(saliency, box, 32))
        assert r["pointing_hit"] == float(pointing_hit(saliency, box, 32))
        assert r["random_mass_in_box"] == pytest.approx(0.25)
