import colorsys

import numpy as np
import pytest
import torch
from torchvision.transforms import ToTensor

from clip_helpers.shapes import COLOURS, HELD_OUT, HUE_JITTER, RADII, SHAPES, SHAPES_TEMPLATES, ShapesDataset
from clip_helpers.zeroshot import check_classes_and_templates


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_36_classes_in_the_same_order_for_every_split():
    splits = [ShapesDataset(split, n_per_class=1) for split in ("train", "heldout", "all")]
    assert splits[0].classes == splits[1].classes == splits[2].classes  # a classifier fits every split
    pairs = [tuple(name.split(" ")) for name in splits[0].classes]
    assert len(set(pairs)) == 36 and {c for c, _ in pairs} == set(COLOURS) and {s for _, s in pairs} == set(SHAPES)


def test_every_held_out_colour_and_shape_is_seen_in_training():
    """Compositional zero-shot needs each held-out pair's colour and shape in the training images, apart."""
    train, heldout = ShapesDataset("train", n_per_class=1), ShapesDataset("heldout", n_per_class=1)
    trained = [train.classes[label].split(" ") for _, label in train]
    asked = [heldout.classes[label].split(" ") for _, label in heldout]
    assert sorted(c for c, _ in asked) == sorted(COLOURS) and sorted(s for _, s in asked) == sorted(SHAPES)
    for colour, shape in asked:
        assert [colour, shape] not in trained
        assert any(c == colour for c, _ in trained) and any(s == shape for _, s in trained)


def test_splits_contain_exactly_the_right_classes():
    held_out = {f"{colour} {shape}" for colour, shape in HELD_OUT}
    train, heldout, everything = (ShapesDataset(split, n_per_class=3) for split in ("train", "heldout", "all"))
    names = lambda dataset: [dataset.classes[label] for _, label in dataset]  # noqa: E731 (labels as returned by items)
    assert set(names(train)) == set(train.classes) - held_out
    assert set(names(heldout)) == held_out
    assert set(names(everything)) == set(everything.classes)
    assert (len(train), len(heldout), len(everything)) == (30 * 3, 6 * 3, 36 * 3)
    assert train.targets == [label for _, label in train]


@pytest.mark.parametrize("size", [32, 224])
def test_images_are_rgb_at_the_requested_size(size):
    image, label = ShapesDataset("all", n_per_class=1, image_size=size)[7]
    assert image.mode == "RGB" and image.size == (size, size)
    assert isinstance(label, int) and label == 7


def test_same_seed_same_pixels_whatever_the_access_order():
    a, b = ShapesDataset(n_per_class=4, seed=3), ShapesDataset(n_per_class=4, seed=3)
    forward = [pixels(a[i][0]) for i in range(len(a))]
    backward = [pixels(b[i][0]) for i in reversed(range(len(b)))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(forward, backward))


def test_an_item_is_the_same_image_in_every_split():
    train, everything = ShapesDataset("train", n_per_class=2), ShapesDataset("all", n_per_class=2)
    label = train.targets[5]
    k = 5 - train.targets.index(label)
    j = everything.targets.index(label) + k
    assert np.array_equal(pixels(train[5][0]), pixels(everything[j][0]))


def test_different_seeds_and_items_differ():
    a, b = ShapesDataset(n_per_class=2, seed=0), ShapesDataset(n_per_class=2, seed=1)
    assert not np.array_equal(pixels(a[0][0]), pixels(b[0][0]))
    assert not np.array_equal(pixels(a[0][0]), pixels(a[1][0]))


def test_transform_is_applied():
    image, _ = ShapesDataset(n_per_class=1, transform=ToTensor())[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32)
    assert 0 <= image.min() and image.max() <= 1


HUES = {"red": (345, 15), "orange": (18, 42), "yellow": (45, 65),
        "green": (95, 150), "blue": (210, 245), "purple": (265, 300)}


def saturated_hues(image):
    """The hues (degrees) of the pixels saturated enough to be a shape's: the pale background and grey clutter
    lines have little saturation."""
    rgb = np.asarray(image, dtype=float).reshape(-1, 3) / 255
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    return hsv[hsv[:, 1] > 0.5, 0] * 360, len(rgb)


def mean_hue(hues):
    angles = np.radians(hues)
    return np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360


def angle_between(a, b):
    return abs((a - b + 180) % 360 - 180)


def hue_between(hue, low, high):
    return (low <= hue <= high) if low < high else (hue >= low or hue <= high)


@pytest.mark.parametrize("colour", COLOURS)
def test_shapes_are_their_colour_up_to_the_jitter(colour):
    # The mean hue of a lone shape falls in the colour's usual band of the colour wheel (bands written here,
    # independently of shapes.RGB), widened by the cut jitter (2.5 std) that lets neighbouring colours overlap.
    dataset = ShapesDataset("all", n_per_class=6, seed=1)
    low, high = HUES[colour]
    for index, (image, label) in enumerate(dataset):
        item = dataset.item(index)
        if item.colour != colour or item.distractor:
            continue
        hues, n_pixels = saturated_hues(image)
        assert len(hues) > 0.02 * n_pixels, "the shape should cover a visible part of the image"
        assert hue_between(mean_hue(hues), (low - 2.5 * HUE_JITTER) % 360, (high + 2.5 * HUE_JITTER) % 360), (item, mean_hue(hues))


def test_neighbouring_colours_overlap():
    # The jitter is there so that some orange shapes look red or yellow: a floor under any model's error.
    dataset = ShapesDataset("all", n_per_class=30, seed=2)
    hues = [mean_hue(saturated_hues(image)[0]) for index, (image, _) in enumerate(dataset)
            if dataset.item(index).colour == "orange" and not dataset.item(index).distractor]
    assert any(not hue_between(hue, *HUES["orange"]) for hue in hues)
    assert np.mean([hue_between(hue, *HUES["orange"]) for hue in hues]) > 0.6  # most still look orange


def test_size_words_are_true_of_the_drawing():
    # Every small lone shape covers fewer pixels than every big one of the same shape.
    dataset = ShapesDataset("all", n_per_class=12, seed=3)
    areas = {}
    for index, (image, _) in enumerate(dataset):
        item = dataset.item(index)
        if not item.distractor:
            areas.setdefault((item.shape, item.size), []).append(len(saturated_hues(image)[0]))
    for shape in SHAPES:
        assert max(areas[(shape, "small")]) < min(areas[(shape, "big")]), shape
    assert RADII["small"][1] < RADII["big"][0]


def test_a_distractor_is_drawn_small_in_its_own_colour_and_the_main_shape_big():
    dataset = ShapesDataset("all", n_per_class=12, seed=4)
    with_distractor = [index for index in range(len(dataset)) if dataset.item(index).distractor]
    assert 0.2 < len(with_distractor) / len(dataset) < 0.6
    for index in with_distractor[:40]:
        item, (image, _) = dataset.item(index), dataset[index]
        colour, shape = item.distractor
        assert item.size == "big" and colour != item.colour and shape != item.shape
        assert (colour, shape) not in HELD_OUT  # a held-out pair never appears in a training image
        centres = [mean_hue(np.array(HUES[name])) for name in (item.colour, colour)]
        if angle_between(*centres) < 60:  # neighbouring colours overlap by design: their pixels cannot be told apart
            continue
        hues = saturated_hues(image)[0]
        nearer_main = np.array([angle_between(h, centres[0]) < angle_between(h, centres[1]) for h in hues])
        assert nearer_main.mean() > 0.6 and (~nearer_main).mean() > 0.02, (item, nearer_main.mean())


def test_item_says_what_its_image_shows_whatever_the_order():
    dataset = ShapesDataset("all", n_per_class=3, seed=5)
    items = [dataset.item(index) for index in range(len(dataset))]
    assert [dataset.item(index) for index in reversed(range(len(dataset)))] == items[::-1]
    assert all(f"{item.colour} {item.shape}" == dataset.classes[label] for item, label in zip(items, dataset.targets))


def test_background_is_pale_and_noisy():
    # Plain images (no clutter lines, no distractor): shapes keep clear of the corners, so these are background.
    dataset = ShapesDataset(n_per_class=6)
    plain = [index for index in range(len(dataset)) if dataset.item(index).plain and not dataset.item(index).distractor]
    assert len(plain) > 10
    for index in plain:
        image = pixels(dataset[index][0])
        corners = np.concatenate([image[:2, :2], image[:2, -2:], image[-2:, :2], image[-2:, -2:]]).reshape(-1, 3)
        assert corners.min() > 150
        assert (corners.std(axis=0) > 2).all()


def test_templates_give_every_class_distinct_captions():
    classes = ShapesDataset("all", n_per_class=1).classes
    # build_classifier's own check refuses a template without {} or one that cannot be filled.
    class_names, templates = check_classes_and_templates(classes, SHAPES_TEMPLATES)
    captions = [template.format(name) for name in class_names for template in templates]
    assert len(set(captions)) == len(captions)


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="heldout"):
        ShapesDataset("test")


# Multi-object scenes (draw_scene, crop_boxes, grid_boxes)
from clip_helpers.shapes import crop_boxes, draw_scene, grid_boxes  # noqa: E402


def hues_and_saturation(pixels_rgb):
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in np.asarray(pixels_rgb, dtype=float).reshape(-1, 3) / 255])
    return np.degrees(hsv[:, 0] * 2 * np.pi) % 360, hsv[:, 1]


def in_band(hue, colour):
    low, high = HUES[colour]
    return (low <= hue) & (hue <= high) if low < high else (hue >= low) | (hue <= high)


@pytest.mark.parametrize("seed", range(3))
def test_scene_boxes_are_inside_and_do_not_overlap(seed):
    image, objects = draw_scene(n_objects=5, size=96, object_size=32, seed=seed)
    assert image.mode == "RGB" and image.size == (96, 96) and len(objects) == 5
    covered = np.zeros((96, 96), dtype=int)
    for _, _, (left, top, right, bottom) in objects:
        assert 0 <= left < right <= 96 and 0 <= top < bottom <= 96 and right - left == bottom - top == 32
        covered[top:bottom, left:right] += 1
    assert covered.max() == 1
    assert len({(colour, shape) for colour, shape, _ in objects}) == 5


@pytest.mark.parametrize("seed", range(3))
def test_each_box_holds_a_shape_of_its_stated_colour_and_the_rest_is_background(seed):
    image, objects = draw_scene(n_objects=4, seed=seed)
    rgb = np.asarray(image)
    outside = np.ones(rgb.shape[:2], dtype=bool)
    for colour, _, (left, top, right, bottom) in objects:
        hue, saturation = hues_and_saturation(rgb[top:bottom, left:right])
        shape = saturation > 0.5
        assert shape.mean() > 0.05, "the shape should cover a visible part of its box"
        assert in_band(hue[shape], colour).mean() > 0.9, (colour, seed)
        outside[top:bottom, left:right] = False
    _, saturation = hues_and_saturation(rgb[outside])
    assert (saturation > 0.5).mean() < 0.01


def test_same_seed_same_scene_other_seed_other_scene():
    (a, objects_a), (b, objects_b) = draw_scene(seed=4), draw_scene(seed=4)
    assert np.array_equal(pixels(a), pixels(b)) and objects_a == objects_b
    assert not np.array_equal(pixels(a), pixels(draw_scene(seed=5)[0]))


def test_scene_with_given_objects_for_attribute_binding():
    wanted = [("red", "circle"), ("blue", "square")]
    swapped = [("blue", "circle"), ("red", "square")]
    _, objects = draw_scene(objects=wanted, seed=0)
    assert [(colour, shape) for colour, shape, _ in objects] == wanted
    _, objects = draw_scene(objects=swapped, seed=0)
    assert [(colour, shape) for colour, shape, _ in objects] == swapped


def test_impossible_scenes_are_refused():
    with pytest.raises(ValueError, match="1 to 9 objects"):
        draw_scene(n_objects=10, size=96, object_size=32)
    with pytest.raises(ValueError, match="unknown object"):
        draw_scene(objects=[("pink", "circle")])


def test_crops_are_the_boxes_resized():
    image, objects = draw_scene(n_objects=3, seed=2)
    boxes = [box for _, _, box in objects]
    crops = crop_boxes(image, boxes)
    for crop, (left, top, right, bottom) in zip(crops, boxes):
        assert np.array_equal(pixels(crop), pixels(image)[top:bottom, left:right])
    assert all(crop.size == (224, 224) for crop in crop_boxes(image, boxes, size=224))


def test_grid_boxes_tile_the_image_exactly():
    image, _ = draw_scene(size=96, seed=0)
    for rows, cols in ((3, 3), (2, 5)):
        boxes = grid_boxes(image, rows, cols)
        covered = np.zeros((96, 96), dtype=int)
        for left, top, right, bottom in boxes:
            covered[top:bottom, left:right] += 1
        assert len(boxes) == rows * cols and (covered == 1).all()
