"""Does the mini-CLIP compose? Prompts it never saw, attribute binding, and held-out pairs over seeds.

The mini-CLIP learns its language from its captions alone (shape_captions: colour, shape, size words, a second
shape, "a circle in red"; training_texts), a few dozen distinct tokens. A word outside them ("crimson",
"quadrilateral") keeps the random embedding it
was initialised with (no caption ever gave it a gradient), so prompts that use it test nothing the model
learned. That is the lesson, against CLIP's 400M pairs: CLIP's vocabulary was trained; this one was not.

The binding test mirrors Winoground (Thrush et al. 2022) and ARO (Yuksekgonul et al. 2023): a scene holding
a red square and a blue circle is scored against "a red square and a blue circle." and the swapped
"a blue square and a red circle.". Both sentences hold the same words, so only binding can tell them apart;
chance is 50%, and the literature finds even CLIP near it on such pairs.
"""
import numpy as np
import pandas as pd
import torch
from clip.simple_tokenizer import SimpleTokenizer

from . import shape_captions
from .features import encode_images
from .training.recipes import train_mini_clip
from .shapes import (COLOUR_SYNONYMS, COLOURS, HELD_OUT, SHAPE_SYNONYMS, SHAPES, SHAPES_NEW_WORD_TEMPLATES,
                     SHAPES_RECOMBINED_TEMPLATES, SHAPES_TEMPLATES, ShapesDataset, crop_boxes, draw_scene)
from .similarity import normalize
from .text import encode_texts, fill
from .zeroshot import build_classifier, scores

TEMPLATE_SETS = {
    "training templates": SHAPES_TEMPLATES,
    "new sentences, known words": SHAPES_RECOMBINED_TEMPLATES,
    "new words": SHAPES_NEW_WORD_TEMPLATES,
}


def class_names_for(colour_names: dict | None = None, shape_names: dict | None = None,
                    shape_first: bool = False) -> list[str]:
    """The 36 class names in ShapesDataset.classes' order, with colours/shapes renamed by the given dicts."""
    colour_names, shape_names = colour_names or {}, shape_names or {}
    names = []
    for colour in COLOURS:
        for shape in SHAPES:
            words = [colour_names.get(colour, colour), shape_names.get(shape, shape)]
            names.append(" ".join(reversed(words) if shape_first else words))
    return names


CLASS_NAME_SETS = {
    "training names": class_names_for(),
    "shape before colour": class_names_for(shape_first=True),  # known words in a new order
    "colour synonyms": class_names_for(COLOUR_SYNONYMS),
    "shape synonyms": class_names_for(shape_names=SHAPE_SYNONYMS),
    "both synonyms": class_names_for(COLOUR_SYNONYMS, SHAPE_SYNONYMS),
}


def tokens_of(texts: list[str]) -> set[str]:
    """The BPE tokens (as strings, e.g. 'red</w>') of `texts`, as clip.tokenize splits them."""
    tokenizer = SimpleTokenizer()
    return {tokenizer.decoder[token] for text in texts for token in tokenizer.encode(text)}


def training_texts() -> list[str]:
    """Sentences holding every word the mini-CLIP read: its prompts and a sample of its training captions
    (shape_captions: size words, "and", "a circle in red")."""
    dataset = ShapesDataset("all", n_per_class=8)
    sample, _ = shape_captions.captions_for([dataset.item(index) for index in range(len(dataset))],
                                            np.random.default_rng(0))
    return [fill(template, name) for template in SHAPES_TEMPLATES for name in class_names_for()] + sample


def unseen_tokens(texts: list[str]) -> list[str]:
    """The tokens of `texts` that no training caption holds: their embeddings are still the random init."""
    return sorted(tokens_of(texts) - tokens_of(training_texts()))


@torch.no_grad()
def prompt_table(model, image_features: torch.Tensor, labels: torch.Tensor,
                 template_sets: dict | None = None, class_name_sets: dict | None = None) -> pd.DataFrame:
    """Zero-shot top-1 (%) for every (template set, class-name set), one row each, from encoded images.

    Class-name lists follow ShapesDataset.classes' order, so `labels` index every one of them. The column
    `unseen tokens` lists the prompts' tokens that never occurred in a training caption.
    """
    template_sets, class_name_sets = template_sets or TEMPLATE_SETS, class_name_sets or CLASS_NAME_SETS
    rows = []
    for template_name, templates in template_sets.items():
        for names_name, class_names in class_name_sets.items():
            if len(class_names) <= int(torch.as_tensor(labels).max()):
                raise ValueError(f"class-name set {names_name!r} has {len(class_names)} names, but labels go up "
                                 f"to {int(torch.as_tensor(labels).max())}: give one name per class, in order.")
            classifier = build_classifier(model, class_names, templates)
            prompts = [fill(template, name) for template in templates for name in class_names]
            unseen = unseen_tokens(prompts)
            rows.append({"templates": template_name, "class names": names_name,
                         "top1": scores(image_features, labels, classifier)["top1"],
                         "n unseen tokens": len(unseen), "unseen tokens": " ".join(unseen)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- attribute binding

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
    classifier = build_classifier(model, class_names_for(), SHAPES_TEMPLATES)
    rows = []
    for index, objects in enumerate(binding_pairs(n_scenes, seed, include_heldout)):
        scene, placed = draw_scene(size=scene_size, object_size=object_size, seed=seed * 100_003 + index,
                                   objects=objects)
        swapped = swap_colours(objects)
        scene_features = image_features_of(model, preprocess, [scene])
        true_text, swapped_text = text_features_of(model, [sentence(objects), sentence(swapped)])
        crops = crop_boxes(scene, [box for _, _, box in placed], size=object_size)
        crop_features = image_features_of(model, preprocess, crops)
        names = [fill("a {}.", f"{c} {s}") for c, s in objects + swapped]
        crop_text = text_features_of(model, names)
        crop_true = crop_features[0] @ crop_text[0] + crop_features[1] @ crop_text[1]
        crop_swapped = crop_features[0] @ crop_text[2] + crop_features[1] @ crop_text[3]
        classifier = classifier.to(crop_features.device)
        predicted = (crop_features @ classifier.T).argmax(dim=1).tolist()
        truth = [class_names_for().index(f"{c} {s}") for c, s in objects]
        scene_class = int((scene_features @ classifier.T).argmax())
        rows.append({"scene": index, "true sentence": sentence(objects), "swapped sentence": sentence(swapped),
                     "scene cos true": float(scene_features[0] @ true_text),
                     "scene cos swapped": float(scene_features[0] @ swapped_text),
                     "crop score true": float(crop_true), "crop score swapped": float(crop_swapped),
                     "crops right": predicted == truth, "scene names an object": scene_class in truth})
    table = pd.DataFrame(rows)
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


# ---------------------------------------------------------------- held-out pairs over seeds

def baselines(n_colours: int = len(COLOURS), n_shapes: int = len(SHAPES)) -> dict[str, float]:
    """Top-1 (%) on held-out images of three predictors, over all n_colours x n_shapes classes.

    chance: a uniformly random class. right colour, random shape: names the image's true colour and one of
    the n_shapes shapes uniformly at random, so it is right with probability 1/n_shapes (1/6, 16.7%).
    right shape, random colour: the same with the roles swapped, 1/n_colours. A model that only ever
    predicts pairs seen in training scores 0% on held-out pairs.
    """
    return {"chance": 100 / (n_colours * n_shapes), "right colour, random shape": 100 / n_shapes,
            "right shape, random colour": 100 / n_colours}


def attribute_baseline_predictions(labels, keep: str, rng: np.random.Generator) -> np.ndarray:
    """The labels a `keep`="colour" (or "shape") baseline predicts: that attribute right, the other at random."""
    if keep not in ("colour", "shape"):
        raise ValueError(f'keep must be "colour" or "shape", not {keep!r}')
    labels = np.asarray(labels)
    colour, shape = labels // len(SHAPES), labels % len(SHAPES)  # ShapesDataset.classes is colour-major
    if keep == "colour":
        shape = rng.integers(len(SHAPES), size=len(labels))
    else:
        colour = rng.integers(len(COLOURS), size=len(labels))
    return colour * len(SHAPES) + shape


def course_seeds(recipe: dict, n_seeds: int = 3) -> list[int]:
    """The training seeds the course's seed-dependent numbers are measured over (notebooks 07 and 08, the same
    models, trained once): the recipe's own seed, whose model the other notebooks use, and the next ones."""
    return [recipe["seed"] + offset for offset in range(n_seeds)]


def train_seeds(seeds: list[int], recipe: dict | None = None, cache_dir: str = "data/weights",
                progress: bool = False) -> dict:
    """{seed: mini-CLIP} trained by recipes.train_mini_clip with the recipe's seed replaced; each is cached
    in cache_dir under its own recipe hash (the seed is part of the recipe), so a rerun only loads them."""
    return {seed: train_mini_clip({**(recipe or {}), "seed": seed}, cache_dir=cache_dir, progress=progress)[0]
            for seed in seeds}


def outcome(true_name: str, predicted_name: str) -> str:
    (true_colour, true_shape), (colour, shape) = true_name.split(), predicted_name.split()
    if (colour, shape) == (true_colour, true_shape):
        return "right"
    return {(True, False): "kept the colour", (False, True): "kept the shape"}.get(
        (colour == true_colour, shape == true_shape), "neither")


def heldout_predictions(models: dict, preprocess, n_per_class: int = 20, test_seed: int = 1000,
                        min_seeds: int = 3) -> pd.DataFrame:
    """One row per (seed, held-out image): the true pair, the predicted one (36-way, SHAPES_TEMPLATES), and
    whether it is right or kept the colour, the shape, or neither. Every seed's model sees the same images."""
    if len(models) < min_seeds:
        raise ValueError(f"got models for {len(models)} seeds ({sorted(models)}); a spread over seeds needs at "
                         f"least {min_seeds}: train more with train_seeds.")
    dataset = ShapesDataset("heldout", n_per_class=n_per_class, seed=test_seed, transform=preprocess)
    class_names = dataset.classes
    rows = []
    for seed, model in models.items():
        image_features, labels = encode_images(model.eval(), torch.utils.data.DataLoader(dataset, batch_size=256),
                                               progress=False)
        classifier = build_classifier(model, class_names, SHAPES_TEMPLATES).cpu()
        predictions = (normalize(image_features.float().cpu()) @ classifier.T).argmax(dim=1)
        for image, (label, predicted) in enumerate(zip(labels.tolist(), predictions.tolist())):
            rows.append({"seed": seed, "image": image, "pair": class_names[label],
                         "predicted": class_names[predicted],
                         "outcome": outcome(class_names[label], class_names[predicted])})
    table = pd.DataFrame(rows)
    table["correct"] = table["outcome"] == "right"
    return table


def per_pair_summary(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per held-out pair: top-1 (%) of each seed, then its mean, std (over seeds, ddof=1), min and max, beside
    the baselines; a last row "all held-out pairs" does the same over all held-out images."""
    everything = predictions.assign(pair="all held-out pairs")
    rows = []
    for pair, group in pd.concat([predictions, everything]).groupby("pair", sort=False):
        per_seed = 100 * group.groupby("seed")["correct"].mean()
        rows.append({"pair": pair, "mean top1": per_seed.mean(), "std": per_seed.std(ddof=1),
                     "min": per_seed.min(), "max": per_seed.max(), "n seeds": len(per_seed),
                     "images per seed": len(group) // len(per_seed), **baselines()})
    return pd.DataFrame(rows).set_index("pair")


def failure_breakdown(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per seed and over all seeds: how many held-out images came out right, kept the colour, kept the shape
    or neither, as counts and as % of the images; counted from the predictions, never typed."""
    order = ["right", "kept the colour", "kept the shape", "neither"]
    counts = pd.crosstab(predictions["seed"], predictions["outcome"]).reindex(columns=order, fill_value=0)
    counts.loc["all seeds"] = counts.sum()
    percent = 100 * counts.div(counts.sum(axis=1), axis=0)
    return pd.concat({"images": counts, "% of images": percent}, axis=1)
