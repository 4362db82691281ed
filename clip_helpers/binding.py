"""Attribute binding in miniature: does a model tell "a red square and a blue circle" from its colour swap?

The test mirrors Winoground (Thrush et al. 2022) and ARO (Yuksekgonul et al. 2023): a scene holding a red
square and a blue circle is scored against "a red square and a blue circle." and the swapped "a blue square and
a red circle.". Both sentences hold the same words, so only binding can tell them apart; chance is 50%, and the
literature finds even CLIP near it on such pairs. Notebook 08 runs it on every seed's mini-CLIP.
"""
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from .compositional import class_names_for
from .shapes import COLOURS, HELD_OUT, SHAPES, SHAPES_TEMPLATES, crop_boxes, draw_scene
from .similarity import normalize
from .text import encode_texts, fill
from .zeroshot import build_classifier


def binding_pairs(n_scenes: int, seed: int = 0, include_heldout: bool = False) -> list[list[tuple[str, str]]]:
    """n_scenes pairs of objects [(c1, s1), (c2, s2)] with c1 != c2 and s1 != s2 (else the swap changes nothing).

    Unless include_heldout, the four pairs involved (both objects and both swapped ones) are all seen in
    training, so the test asks only about binding, not about pairs the model never saw.
    """
    rng = np.random.default_rng(seed)
    excluded = set() if include_heldout else set(HELD_OUT)
    pairs = []
    while len(pairs) < n_scenes:
        (c1, c2), (s1, s2) = rng.choice(COLOURS, 2, replace=False), rng.choice(SHAPES, 2, replace=False)
        if not {(c1, s1), (c2, s2), (c2, s1), (c1, s2)} & excluded:
            pairs.append([(str(c1), str(s1)), (str(c2), str(s2))])
    return pairs


def swap_colours(objects: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """[(c2, s1), (c1, s2)] for [(c1, s1), (c2, s2)]: the same words, the colours bound to the other shapes."""
    (c1, s1), (c2, s2) = objects
    return [(c2, s1), (c1, s2)]


def sentence(objects: list[tuple[str, str]]) -> str:
    return " and ".join(fill("a {}", f"{colour} {shape}") for colour, shape in objects) + "."


def binding_credit(true_scores: torch.Tensor, swapped_scores: torch.Tensor) -> torch.Tensor:
    """1 where the true description scores higher, 0 where lower, 0.5 on a tie.

    A tie gets half: a text tower blind to word order gives both sentences one feature, and is at chance.
    """
    return (true_scores > swapped_scores).float() + 0.5 * (true_scores == swapped_scores).float()


@torch.no_grad()
def text_features_of(model, texts: list[str]) -> torch.Tensor:
    return normalize(encode_texts(model, texts).float())


@torch.no_grad()
def image_features_of(model, preprocess, images) -> torch.Tensor:
    batch = torch.stack([preprocess(image) for image in images]).to(model.positional_embedding.device)
    return normalize(model.encode_image(batch).float())


@lru_cache(maxsize=8)
def binding_scenes(n_scenes: int, seed: int, scene_size: int, object_size: int, include_heldout: bool) -> tuple:
    """((objects, scene, crops), ...) for binding_test: drawn once, since notebook 08 gives every seed's model the
    same scenes (PIL drawing costs more than the tiny model's forward pass)."""
    drawn = []
    for index, objects in enumerate(binding_pairs(n_scenes, seed, include_heldout)):
        scene, placed = draw_scene(size=scene_size, object_size=object_size, seed=seed * 100_003 + index,
                                   objects=objects)
        drawn.append((objects, scene, crop_boxes(scene, [box for _, _, box in placed], size=object_size)))
    return tuple(drawn)


def binding_test(model, preprocess, n_scenes: int = 100, seed: int = 0, scene_size: int = 64,
                 object_size: int = 32, include_heldout: bool = False) -> pd.DataFrame:
    """One row per two-object scene: whole-scene and per-object (crop) binding, and crop classification.

    Whole scene: the scene goes through `preprocess`, i.e. is resized to the model's input
    (model.visual.input_resolution, 32 px for the mini-CLIP): a 64 px scene of 32 px cells shrinks 2x, so
    each object spans a 16 px cell, about half the size of the training images' shapes, with a few pixels
    of outline left to tell a star from a cross. column `scene credit` (binding_credit of the cosines).
    Crops: each object's box is cropped and resized to `object_size`, a single-shape image like the training
    ones; the true assignment (crop 1 "a c1 s1.", crop 2 "a c2 s2.") is scored against the swapped one by
    the sum of the two cosines (`crop credit`), and each crop is classified among the 36 classes with
    SHAPES_TEMPLATES (`crops right`: both crops right). A control for the shrinking: `scene names an
    object` is whether the whole scene's 36-way class is one of its two objects (chance 2/36).
    """
    drawn = binding_scenes(n_scenes, seed, scene_size, object_size, include_heldout)
    scenes = image_features_of(model, preprocess, [scene for _, scene, _ in drawn])
    crops = image_features_of(model, preprocess, [crop for _, _, pair in drawn for crop in pair]).view(len(drawn), 2, -1)
    objects = [pair for pair, _, _ in drawn]
    sentences = text_features_of(model, [sentence(pair) for pair in objects] + [sentence(swap_colours(pair))
                                                                               for pair in objects])
    true_text, swapped_text = sentences[:len(drawn)], sentences[len(drawn):]
    names = text_features_of(model, [fill("a {}.", f"{c} {s}") for pair in objects
                                     for c, s in pair + swap_colours(pair)]).view(len(drawn), 4, -1)
    # crop k against its own name (names[:, k]) or the swapped one (names[:, 2 + k]), summed over the two crops
    crop_true, crop_swapped = ((crops * names[:, :2]).sum(-1).sum(1), (crops * names[:, 2:]).sum(-1).sum(1))
    class_names = class_names_for()
    classifier = build_classifier(model, class_names, SHAPES_TEMPLATES).to(crops.device)
    truth = torch.tensor([[class_names.index(f"{c} {s}") for c, s in pair] for pair in objects], device=crops.device)
    crops_right = ((crops @ classifier.T).argmax(dim=-1) == truth).all(dim=1)
    scene_names = (truth == (scenes @ classifier.T).argmax(dim=1, keepdim=True)).any(dim=1)
    table = pd.DataFrame({"scene": range(len(drawn)), "true sentence": [sentence(pair) for pair in objects],
                          "swapped sentence": [sentence(swap_colours(pair)) for pair in objects],
                          "scene cos true": (scenes * true_text).sum(-1).cpu().numpy(),
                          "scene cos swapped": (scenes * swapped_text).sum(-1).cpu().numpy(),
                          "crop score true": crop_true.cpu().numpy(), "crop score swapped": crop_swapped.cpu().numpy(),
                          "crops right": crops_right.cpu().numpy(), "scene names an object": scene_names.cpu().numpy()})
    table["scene credit"] = binding_credit(torch.tensor(table["scene cos true"].to_numpy()),
                                           torch.tensor(table["scene cos swapped"].to_numpy())).numpy()
    table["crop credit"] = binding_credit(torch.tensor(table["crop score true"].to_numpy()),
                                          torch.tensor(table["crop score swapped"].to_numpy())).numpy()
    return table


def binding_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Binding accuracy (%) with its standard error, beside chance, from binding_test's table; `ties` counts
    scenes whose two descriptions scored the same (half credit each)."""
    n = len(table)
    rows = {}
    for name, column, chance in (("whole scene, true vs swapped sentence", "scene credit", 50.0),
                                 ("crops, true vs swapped assignment", "crop credit", 50.0),
                                 ("crops, both classified right (36-way)", "crops right", 100 / 36 ** 2),
                                 ("whole scene, 36-way class is one of its objects", "scene names an object", 200 / 36)):
        values = table[column].astype(float)
        rows[name] = {"accuracy (%)": 100 * values.mean(), "standard error (%)": 100 * values.std(ddof=1) / np.sqrt(n),
                      "chance (%)": chance, "ties": int((values == 0.5).sum()), "n scenes": n}
    return pd.DataFrame(rows).T
