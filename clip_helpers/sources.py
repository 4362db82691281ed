"""The dataset registry: a source name, or a folder of your own photos, -> its images, class names and prompts.

Sources: "shapes" (clip_helpers.shapes, no download), "cifar10", "caltech256", "photos" (scikit-image's eight
photos, no download), or the path of a folder with one sub-folder of images per class (data.ImageFolderCaptions):
a teacher can run the course on their own photos that way. A name that is both (a folder "photos" where you run)
is refused: write "./photos" for the folder, "kit:photos" for the kit's source (KIT_PREFIX).
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from .data import ImageFolderCaptions, caltech256, cifar10, classes_of, per_class_subset, targets_of
from .photos import write_photos
from .shapes import SHAPES_CAPTION_TEMPLATES, SHAPES_TEMPLATES, ShapesDataset
from .text import CIFAR10_TEMPLATES

SOURCES = ("shapes", "cifar10", "caltech256", "photos")
KIT_PREFIX = "kit:"  # "kit:photos" is always the kit's source, even beside a folder named "photos"
SHAPES_PER_CLASS = 100  # images drawn per shapes class when n_per_class is None (shapes are drawn, not stored)


@dataclass(frozen=True)
class Source:
    """An opened source. dataset yields (image, label), label indexing class_names.

    templates: the zero-shot prompts (and the notebooks' training captions); train_templates: the command
    line's fine-tuning captions, the report's bare class name for photographs. has_test_split: False for a
    pool of images (Caltech-256, a folder, the photos, shapes), which data.split cuts into train and validation.
    """
    dataset: Dataset
    class_names: list[str]
    templates: list[str]
    train_templates: list[str]
    has_test_split: bool


def open_source(source: str, split: str = "train", *, n_per_class: int | None = None, data_dir="data",
                transform=None, seed: int = 0) -> Source:
    """The source's images of `split`, at most n_per_class of each class (None: all), drawn with `seed`.

    split: "train" or "test" (CIFAR-10's official split); "shapes" also takes "held_out" (the colour/shape pairs
    never trained on) and "all", and its "test" is the seen pairs drawn with your seed. A pool (Caltech-256, the
    photos, a folder) has no split: every split is the whole pool.
    """
    name = registry_name(source)
    if name == "shapes":
        if split not in ("train", "test", "held_out", "all"):
            raise ValueError(f'split of "shapes" must be "train", "test", "held_out" or "all", not {split!r}')
        dataset = ShapesDataset({"test": "train", "held_out": "heldout"}.get(split, split),
                                n_per_class=n_per_class or SHAPES_PER_CLASS, seed=seed, transform=transform)
        return Source(dataset, list(dataset.classes), SHAPES_TEMPLATES, SHAPES_CAPTION_TEMPLATES, has_test_split=False)
    if name == "cifar10":
        if split not in ("train", "test"):
            raise ValueError(f'split of "cifar10" must be "train" or "test", not {split!r}')
        dataset, has_test_split = cifar10(root=data_dir, train=(split == "train"), transform=transform), True
    elif split not in ("train", "test", "all"):
        raise ValueError(f'{name or source!r} is one pool of images: split must be "train", "test" or "all", '
                         f'not {split!r}')
    elif name == "caltech256":
        dataset, has_test_split = caltech256(root=data_dir, transform=transform), False
    elif name == "photos":
        dataset, has_test_split = ImageFolderCaptions(write_photos(data_dir), transform=transform), False
    elif Path(source).is_dir():
        dataset, has_test_split = ImageFolderCaptions(source, transform=transform), False
    else:
        raise ValueError(f"Unknown source {source!r}: choose one of {SOURCES}, or give the path of a folder with "
                         f"one sub-folder of images per class (e.g. my_photos/cat/1.jpg, my_photos/dog/2.jpg).")
    dataset = per_class_subset(dataset, n_per_class, seed)
    return Source(dataset, classes_of(dataset), CIFAR10_TEMPLATES, ["{}"], has_test_split)


def registry_name(source: str) -> str | None:
    """The registry source `source` names ("photos" or "kit:photos" -> "photos"), or None for a folder's path.

    A path that exists is that folder; a bare registry name that is also a folder or file where you run is refused,
    as either reading could be meant.
    """
    if isinstance(source, os.PathLike):  # a Path is a folder, whatever its name
        return None
    if source.startswith(KIT_PREFIX) and source[len(KIT_PREFIX):] in SOURCES:
        return source[len(KIT_PREFIX):]
    if source not in SOURCES:
        return None
    if Path(source).exists():
        raise ValueError(f"{source!r} is both one of the kit's sources and a folder here ({Path(source).resolve()}). "
                         f"Write ./{source} (or its full path) for your folder, or {KIT_PREFIX}{source} for the kit's "
                         f"source.")
    return source


def source_name(source: str) -> str:
    """A short name for tables and titles: the registry source, or a folder's own name."""
    return registry_name(source) or Path(source).name


class TestSets(NamedTuple):
    datasets: dict  # name -> Dataset of (image, label), labels indexing class_names
    class_names: list
    templates: list


def zero_shot_test_sets(source: str, n_per_class: int, *, data_dir="data", transform=None, seed: int = 0) -> TestSets:
    """(datasets, class_names, templates): for shapes the seen and the held-out pairs, each labelled among all
    36 classes; for any other source its test images."""
    if registry_name(source) == "shapes":
        opened = {name: open_source(source, split, n_per_class=n_per_class, transform=transform, seed=seed)
                  for name, split in (("seen pairs", "test"), ("held-out pairs", "held_out"))}
    else:
        opened = {f"{source_name(source)} test": open_source(source, "test", n_per_class=n_per_class,
                                                              data_dir=data_dir, transform=transform, seed=seed)}
    first = next(iter(opened.values()))
    return TestSets({name: each.dataset for name, each in opened.items()}, first.class_names, first.templates)


def examples(source: str, n: int, data_dir="data", seed: int = 0) -> tuple[list, list[int], list[str]]:
    """(images, labels, class_names): n PIL images of n different classes, spread over the class list."""
    opened = open_source(source, "test", n_per_class=1, data_dir=data_dir, seed=seed)
    labels = np.array(targets_of(opened.dataset))
    present = np.unique(labels)
    wanted = present[np.linspace(0, len(present) - 1, min(n, len(present))).round().astype(int)]
    picks = [int(np.flatnonzero(labels == label)[0]) for label in wanted]
    images, labels = zip(*(opened.dataset[i] for i in picks))
    return list(images), list(labels), opened.class_names


def shared_word_examples(colours: list[str], shapes: list[str], seed: int = 0) -> tuple[list, list[int], list[str]]:
    """(images, labels, class_names): one new drawing of each (colour, shape) of the grid colours x shapes, row by
    row, labels indexing the 36 shapes classes. Every caption then shares a word with some of the others (its colour
    or its shape) and differs from them by one word: the hard case of matching, unlike `examples`' pairs, which mostly
    share nothing. Each drawing is the world's first of its pair with `seed` (open_source's "test" images with
    n_per_class=1): its size, clutter and distractor come as the world draws them, not chosen."""
    dataset = ShapesDataset("all", n_per_class=1, seed=seed)
    names = [f"{colour} {shape}" for colour in colours for shape in shapes]
    unknown = [name for name in names if name not in dataset.classes]
    if unknown or len(set(names)) < len(names):
        raise ValueError(f"{unknown or names} are not distinct shapes classes (colour shape): colours from "
                         f"{sorted({name.split()[0] for name in dataset.classes})}, shapes from "
                         f"{sorted({name.split()[1] for name in dataset.classes})}")
    labels = [dataset.classes.index(name) for name in names]
    return [dataset[label][0] for label in labels], labels, list(dataset.classes)
