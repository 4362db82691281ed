"""Scenes of several shapes, their captions and distractors (clip_helpers.scenes, .scene_captions, .scene_training)."""
import numpy as np
import pytest
from clip.clip import _tokenizer

from clip_helpers import scene_captions as captions
from clip_helpers.training.scene_training import twin_batches
from clip_helpers.scenes import (CANVAS, HELD_OUT, LEVELS, Thing, column, draw, mirrored, scene_pairs)


def drawn_pixels(image, background_distance=60) -> np.ndarray:
    """A boolean mask of the pixels far from the scene's pale background (its median colour)."""
    pixels = np.asarray(image, dtype=float)
    return np.linalg.norm(pixels - np.median(pixels.reshape(-1, 3), axis=0), axis=-1) > background_distance


def test_the_same_seed_draws_the_same_scenes_and_pixels():
    assert scene_pairs(20, seed=3) == scene_pairs(20, seed=3)
    assert scene_pairs(20, seed=3) != scene_pairs(20, seed=4)
    scene = scene_pairs(1, seed=3)[0]
    assert np.array_equal(np.asarray(draw(scene, [3, 0])), np.asarray(draw(scene, [3, 0])))
    assert not np.array_equal(np.asarray(draw(scene, [3, 0])), np.asarray(draw(scene, [3, 1])))


def test_held_out_pairs_never_appear_in_training_scenes_and_each_held_out_scene_has_one():
    objects = {(t.colour, t.shape) for scene in scene_pairs(300, seed=0) for t in scene}
    assert objects.isdisjoint(HELD_OUT) and len(objects) == 30
    for scene in scene_pairs(100, seed=0, held_out=True):
        assert sum((t.colour, t.shape) in HELD_OUT for t in scene) >= 1


def test_a_size_word_is_true_of_the_drawn_area():
    areas = {"small": [], "big": []}
    for k, scene in enumerate(scene_pairs(80, seed=1)):
        if len(scene) == 1:
            areas[scene[0].size].append(drawn_pixels(draw(scene, [1, k])).sum())
    assert len(areas["small"]) > 10 and len(areas["big"]) > 10
    assert max(areas["small"]) < min(areas["big"])


def test_left_of_is_true_of_the_drawn_positions():
    # Two objects of different colours: the left one's coloured pixels sit left of the right one's.
    scene = (Thing("red", "circle", "big", 2), Thing("blue", "square", "small", 1))
    pixels = np.asarray(draw(scene, [0, 0]), dtype=int)
    red = np.argwhere((pixels[..., 0] > 150) & (pixels[..., 2] < 90))[:, 1]
    blue = np.argwhere((pixels[..., 2] > 150) & (pixels[..., 0] < 90))[:, 1]
    assert red.max() < CANVAS // 2 <= blue.min()
    assert captions.relation_pairs(scene) == [(scene[0], scene[1])]
    assert captions.relation_pairs(mirrored(scene)) == [(mirrored(scene)[1], mirrored(scene)[0])]


def test_every_training_scene_is_followed_by_its_distractor():
    scenes = scene_pairs(200, seed=2)
    for scene, twin in zip(scenes[::2], scenes[1::2]):
        assert twin != scene and len(twin) == len(scene)
        if len(scene) == 1:  # the other size
            assert (twin[0].colour, twin[0].shape) == (scene[0].colour, scene[0].shape) and twin[0].size != scene[0].size
        else:  # the same words: the mirror image, or two objects' colours exchanged
            assert sorted(t.shape for t in twin) == sorted(t.shape for t in scene)
            assert sorted(t.colour for t in twin) == sorted(t.colour for t in scene)


def test_every_caption_fits_the_mini_clip_context_and_names_what_is_drawn():
    rng = np.random.default_rng(0)
    scenes = scene_pairs(300, seed=0)
    for scene in scenes:
        for level in captions.levels_for(scene):
            text, _ = captions.caption(scene, level, rng)
            assert len(_tokenizer.encode(text)) + 2 <= captions.MAX_TOKENS, text
            assert any(t.colour in text and t.shape in text for t in scene), text
    used = {key[0] for key in captions.captions_for(scenes, rng)[1]}
    assert used == set(LEVELS)


def test_captions_of_equal_meaning_share_a_label_and_others_do_not():
    scene = (Thing("red", "circle", "big", 0), Thing("blue", "square", "small", 3))
    rng = np.random.default_rng(0)
    names = {captions.caption(scene, "names", rng) for _ in range(20)}
    assert len({text for text, _ in names}) > 1 and len({key for _, key in names}) == 1  # mention order varies
    _, mirror_key = captions.caption(mirrored(scene), "names", rng)
    _, relation_key = captions.caption(scene, "relation", rng)
    _, mirror_relation_key = captions.caption(mirrored(scene), "relation", rng)
    keys = [next(iter(names))[1], mirror_key, relation_key, mirror_relation_key]
    labels = captions.labels_of(keys)
    assert labels[0] == labels[1]  # "a red circle and a blue square." is true of both
    assert len({labels[1], labels[2], labels[3]}) == 3  # the relation is not
    assert not {key[1:] for key in [relation_key]} & {key[1:] for key in [mirror_relation_key]}


def test_both_phrasings_of_a_relation_say_the_same_and_the_swap_does_not():
    scene = (Thing("red", "circle", "big", 0), Thing("blue", "square", "small", 3))
    texts = {captions.relation(*captions.relation_pairs(scene)[0], sized=False, say_right=flip) for flip in (False, True)}
    assert texts == {"a red circle left of a blue square", "a blue square right of a red circle"}
    true, swapped = captions.order_test(scene, np.random.default_rng(0))
    assert (true, swapped) == ("a red circle left of a blue square.", "a blue square left of a red circle.")
    assert sorted(true.rstrip(".").split()) == sorted(swapped.rstrip(".").split())  # only the order differs
    true, bound = captions.binding_test(scene, np.random.default_rng(0))
    assert bound == "a blue circle left of a red square."
    assert captions.size_test((Thing("orange", "star", "small", -1),)) == ("a small orange star.", "a big orange star.")


@pytest.mark.parametrize("batch_size", [4, 6, 128])
def test_twin_batches_cover_every_scene_once_and_keep_twins_together(batch_size):
    batches = twin_batches(40, batch_size, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    for batch in batches:
        assert {i // 2 for i in batch[::2]} == {i // 2 for i in batch[1::2]}
    assert batches != twin_batches(40, batch_size, seed=2) or batch_size >= 40


def test_column_follows_the_grid():
    assert [column(Thing("red", "circle", "big", cell)) for cell in range(4)] == [0, 1, 0, 1]


def test_pair_accuracy_is_the_share_of_images_closer_to_the_true_sentence():
    import torch

    from clip_helpers.models import build_random_clip, preprocess_for
    from clip_helpers.training.scene_training import pair_accuracy, rendered_scenes
    model = build_random_clip("mini", seed=0).eval()
    scenes = [scene for scene in scene_pairs(6, seed=4) if captions.relation_pairs(scene)]
    images = rendered_scenes(scenes, 4, preprocess_for(32))
    true, false = zip(*(captions.order_test(scene, np.random.default_rng(k)) for k, scene in enumerate(scenes)))
    with torch.no_grad():
        image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        true_features, false_features = (torch.nn.functional.normalize(model.encode_text(
            model_tokens(texts)).float(), dim=-1) for texts in (true, false))
    expected = 100 * ((image_features * true_features).sum(-1) > (image_features * false_features).sum(-1)).float().mean()
    assert pair_accuracy(model, images, true, false) == pytest.approx(expected.item())
    assert pair_accuracy(model, images, false, true) == pytest.approx(100 - expected.item())


def model_tokens(texts):
    import clip
    return clip.tokenize(list(texts), context_length=captions.MAX_TOKENS)
