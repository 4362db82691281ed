"""Does the mini-CLIP compose? Prompts it never saw and held-out pairs over seeds (binding: clip_helpers.binding).

The mini-CLIP learns its language from its captions alone (shape_captions: colour, shape, size words, a second
shape, "a circle in red"; training_texts), a few dozen distinct tokens. A word outside them ("crimson",
"quadrilateral") keeps the random embedding it
was initialised with (no caption ever gave it a gradient), so prompts that use it test nothing the model
learned. That is the lesson, against CLIP's 400M pairs: CLIP's vocabulary was trained; this one was not.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from clip.simple_tokenizer import SimpleTokenizer

from . import shape_captions
from .features import encode_images
from .training.recipes import mini_clip_path, train_mini_clip
from .shapes import (COLOUR_SYNONYMS, COLOURS, SHAPE_SYNONYMS, SHAPES, SHAPES_NEW_WORD_TEMPLATES,
                     SHAPES_RECOMBINED_TEMPLATES, SHAPES_TEMPLATES, ShapesDataset)
from .similarity import normalize
from .text import fill
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
    tokenizer = bpe()
    return {tokenizer.decoder[token] for text in texts for token in tokenizer.encode(text)}


@lru_cache(maxsize=1)
def bpe() -> SimpleTokenizer:
    """clip's tokenizer, built once: building it reads its 49,408-token vocabulary (about 0.2 s)."""
    return SimpleTokenizer()


def training_texts() -> list[str]:
    """Sentences holding every word the mini-CLIP read: its prompts and a sample of its training captions
    (shape_captions: size words, "and", "a circle in red")."""
    dataset = ShapesDataset("all", n_per_class=8)
    sample, _ = shape_captions.captions_for([dataset.item(index) for index in range(len(dataset))],
                                            np.random.default_rng(0))
    return [fill(template, name) for template in SHAPES_TEMPLATES for name in class_names_for()] + sample


@lru_cache(maxsize=1)
def training_tokens() -> frozenset[str]:
    """tokens_of(training_texts()), tokenized once: prompt_table asks for it 15 times per model."""
    return frozenset(tokens_of(training_texts()))


def unseen_tokens(texts: list[str]) -> list[str]:
    """The tokens of `texts` that no training caption holds: their embeddings are still the random init."""
    return sorted(tokens_of(texts) - training_tokens())


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
                progress: bool = False, processes: int | None = None) -> dict:
    """{seed: mini-CLIP} trained by recipes.train_mini_clip with the recipe's seed replaced; each is cached
    in cache_dir under its own recipe hash (the seed is part of the recipe), so a rerun only loads them.

    Two or more seeds not yet cached train at once, each in its own process of one torch thread, up to
    `processes` at a time (None: the CPU count; 1: one after the other, in this process, with its threads)."""
    by_seed = {seed: {**(recipe or {}), "seed": seed} for seed in seeds}
    missing = [by_seed[seed] for seed in seeds if not mini_clip_path(by_seed[seed], cache_dir).is_file()]
    workers = min(len(missing), processes or os.cpu_count() or 1)
    if workers > 1:
        train_in_processes(missing, cache_dir, workers)
    return {seed: train_mini_clip(seed_recipe, cache_dir=cache_dir, progress=progress)[0]
            for seed, seed_recipe in by_seed.items()}


def train_in_processes(recipes: list[dict], cache_dir, workers: int) -> None:
    """Train and cache each recipe's mini-CLIP in a process of its own, one torch thread each: on 2 cores two
    such processes trained two seeds in about the time one 2-thread process took for one (README)."""
    context = multiprocessing.get_context("spawn")  # a fork would inherit this process's OpenMP pool, which can hang
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(train_on_one_thread, recipes, [str(cache_dir)] * len(recipes)))


def train_on_one_thread(recipe: dict, cache_dir: str) -> None:
    torch.set_num_threads(1)
    train_mini_clip(recipe, cache_dir=cache_dir, progress=False)


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
