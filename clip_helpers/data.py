"""Image datasets for CLIP: CIFAR-10 and Caltech-256 through torchvision, a captioned image folder, and a split.

Every dataset here yields (image, label) with a PIL RGB image (or transform(image)) and an int label that
indexes the dataset's `.classes`, so captions are `template.format(dataset.classes[label])`.
"""
import hashlib
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from .downloads import checksums_skipped
from .images import IMAGE_EXTENSIONS, not_an_image_reason, to_rgb, unreadable_reason
from .text import same_captions

LAYOUT = "root/<NNN.class_name>/<images>, e.g. 256_ObjectCategories/001.ak47/001_0001.jpg"
# torchvision hard-codes this inside Caltech256.download() instead of exposing a `url` attribute.
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
OFFLINE = "run with PROFILE=offline, which uses clip_helpers.shapes and needs no download"


def open_or_explain(dataset_class, url, folder, **kwargs):
    """dataset_class(**kwargs), or a RuntimeError naming where the data comes from, where it goes, and the offline way."""
    try:
        return dataset_class(**kwargs)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision raises RuntimeError for missing data
        raise RuntimeError(
            f"{dataset_class.__name__} is not in {folder} and could not be fetched ({type(error).__name__}: {error}). "
            f"It downloads from {url} (needs internet). Put the extracted files in {folder} yourself, or {OFFLINE}."
        ) from error


def cifar10(root="data", train=True, transform=None, download=True):
    """torchvision's CIFAR-10 (50,000 train / 10,000 test images, 32x32), downloaded into root/cifar-10-batches-py."""
    cls = torchvision.datasets.CIFAR10
    if checksums_skipped():
        cls = CIFAR10WithoutChecksums
    folder = os.path.join(root, cls.base_folder)
    return open_or_explain(cls, cls.url, folder, root=root, train=train, transform=transform, download=download)


class CIFAR10WithoutChecksums(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5s set to None: files must exist, their contents are not checked.
    Used only for the rehearsal's stand-ins (clip_helpers.downloads.checksums_skipped)."""
    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def caltech256(root="data", transform=None, download=True):
    """Caltech256Captions (30,607 images, 257 classes incl. clutter) in root/caltech256/256_ObjectCategories, every
    image converted to RGB before `transform` (torchvision returns some in grayscale)."""
    rgb_transform = to_rgb if transform is None else torchvision.transforms.Compose([to_rgb, transform])
    return open_or_explain(Caltech256Captions, CALTECH256_URL, os.path.join(root, "caltech256", "256_ObjectCategories"),
                           root=root, transform=rgb_transform, download=download)


class Caltech256Captions(torchvision.datasets.Caltech256):
    """torchvision's Caltech256 with `.classes`, readable names from the folder names as in ImageFolderCaptions
    ("001.ak47" -> "ak47"), and the files PIL cannot decode, or of an extreme shape, left out (paths in
    `.skipped`, reasons in `.skip_reasons`, one warning): torchvision opens a file only when it is indexed, so
    one truncated JPEG would otherwise stop a training run in the middle of an epoch."""

    def __init__(self, root, transform=None, target_transform=None, download=False):
        super().__init__(root, transform=transform, target_transform=target_transform, download=download)
        self.classes = [class_name(folder) for folder in self.categories]
        refuse_same_captions(self.root, self.categories, self.classes)
        paths = self.image_paths()
        reasons = [unreadable_reason(path) for path in paths]
        self.skip_reasons = {path: reason for path, reason in zip(paths, reasons) if reason is not None}
        self.skipped = list(self.skip_reasons)
        self.index = [i for i, reason in zip(self.index, reasons) if reason is None]
        self.y = [y for y, reason in zip(self.y, reasons) if reason is None]
        if self.skipped:
            warnings.warn(f"Caltech-256: left out {len(self.skipped)} unreadable or unusable image file(s), reasons "
                          f"in .skip_reasons: {self.skipped[:3]}", stacklevel=4)

    def image_paths(self) -> list[str]:
        """Every item's file: torchvision's rule, <category number>_<item number>.jpg in the category's folder."""
        folder = os.path.join(self.root, "256_ObjectCategories")
        return [os.path.join(folder, self.categories[y], f"{y + 1:03d}_{i:04d}.jpg") for i, y in zip(self.index, self.y)]

    def cache_key(self) -> str:
        """Every item's file (path, size, modification time) and label: what features.items_key caches under."""
        return files_and_labels_key(zip(self.image_paths(), self.y))


def file_key(path) -> str:
    """A file's path, size and modification time: an image replaced in place changes the key."""
    try:
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        return f"{path}:missing"


def files_and_labels_key(samples) -> str:  # sha256 of (path, label) pairs, each file by file_key
    return hashlib.sha256("\n".join(f"{file_key(path)}:{label}" for path, label in samples).encode()).hexdigest()


def class_name(folder):
    """Readable class name from a folder name: "001.ak47" -> "ak47", "002.american-flag" -> "american flag".

    Only a leading number and its dot go (Caltech's "001."), so "St. Bernard" and "Washington D.C." keep their
    words and "1.5 litre" its number; '-' and '_' become spaces so captions read naturally; Caltech's "-101" suffix
    (classes taken over from Caltech-101, e.g. "251.airplanes-101") is dropped. A name left empty is refused.
    """
    name = re.sub(r"^\d+\.(?!\d)", "", folder).removesuffix("-101")
    name = " ".join(name.replace("-", " ").replace("_", " ").split())
    if not name:
        raise ValueError(f"Folder {folder!r} gives an empty class name (only a number, dots, '-' or '_'): rename it "
                         f"to what its images show, e.g. '001.cat', so captions can name the class.")
    return name


def visible(folder):
    """Entries of `folder` not hidden (".name"), sorted so the order is the same on every machine (os.listdir's is not)."""
    return sorted(f for f in folder.iterdir() if not f.name.startswith("."))


def image_files(folder):
    """Image files directly in `folder`, hidden ones left out like hidden folders (".ipynb_checkpoints", "._x.jpg")."""
    return [f for f in visible(folder) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]


def not_images(folder):
    """Entries of a class folder that are not read as images: other file types, sub-folders (broken links aside)."""
    return [f for f in visible(folder) if f.exists() and not (f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)]


def broken_links(folder):
    return [f for f in visible(folder) if f.is_symlink() and not f.exists()]


def via_link(path):
    return path.is_symlink() or path.parent.is_symlink()


def without_duplicates(candidates):
    """(kept, {path: reason}): one (path, label) per file on disk; a copy reached through a link is dropped."""
    by_file = {}
    for path, label in candidates:
        by_file.setdefault(path.resolve(), []).append((path, label))
    kept, duplicates = [], {}
    for same in by_file.values():
        keeper = next((c for c in same if not via_link(c[0])), same[0])  # the real file over a link to it
        kept.append(keeper)
        duplicates.update({str(path): f"duplicate of {keeper[0]} (the same file, through a link)"
                           for path, _ in same if path != keeper[0]})
    order = {path: i for i, (path, _) in enumerate(candidates)}
    return sorted(kept, key=lambda c: order[c[0]]), duplicates


class ImageFolderCaptions(Dataset):
    """Images in one folder per class, the layout of Caltech-256 and of the report: root/001.ak47/*.jpg.

    Class names come from folder names via class_name(): a leading number and its dot are dropped and
    '-' / '_' become spaces ("002.american-flag" -> "american flag"), so `.classes` can go straight into
    caption templates; folders whose names CLIP's tokenizer reads alike ("cat", "Cat") are refused. Labels follow the sorted class folders, as torchvision's do: a folder without usable
    images stays a class (with a warning), so the same folders always give the same labels. Hidden files and
    folders are ignored. Every file is decoded once here, so unreadable ones are left out now and indices never
    shift later. Left out, each with its reason: unreadable or too large images, images of an extreme aspect
    ratio (images.shape_reason), files of other types (.heic, .svg, notes.txt) and sub-folders in a class
    folder, broken links, images loose in the root, and second copies of a file reached through a link. Their paths are in `.skipped`, their
    reasons in `.skip_reasons` ({path: reason}), all summarised in one warning. Images come out upright
    (EXIF orientation applied) and RGB (images.to_rgb).
    """

    def __init__(self, root, transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"No folder {root}. ImageFolderCaptions expects {LAYOUT}.")
        folders = [d for d in visible(root) if d.is_dir()]
        self.root, self.transform = root, transform
        self.classes = [class_name(d.name) for d in folders]
        refuse_same_captions(root, [d.name for d in folders], self.classes)
        reasons = {str(f): "broken link" for d in [root, *folders] for f in broken_links(d)}
        reasons.update({str(f): "not in a class folder" for f in image_files(root)})
        reasons.update({str(f): not_an_image_reason(f) for d in folders for f in not_images(d)})
        candidates, duplicates = without_duplicates([(f, label) for label, d in enumerate(folders)
                                                     for f in image_files(d)])
        reasons.update(duplicates)
        self.samples = []
        for path, label in candidates:
            reason = unreadable_reason(path)
            if reason is None:
                self.samples.append((str(path), label))
            else:
                reasons[str(path)] = reason
        self.skipped, self.skip_reasons = sorted(reasons), dict(sorted(reasons.items()))
        self.targets = [label for _, label in self.samples]
        warn_skipped(root, reasons)
        if not self.samples:
            raise ValueError(f"No image under {root} could be read ({len(reasons)} file(s) left out, in "
                             f"{len(folders)} class folder(s)). ImageFolderCaptions expects {LAYOUT}.")
        warn_about_classes(root, folders, self.classes, self.targets)

    def __len__(self):
        return len(self.samples)

    def cache_key(self) -> str:
        """Every item's file (path, size, modification time) and label: what features.items_key caches under."""
        return files_and_labels_key(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = to_rgb(image)
        return (self.transform(image) if self.transform else image), label


def warn_skipped(root, reasons):
    """One warning for all the files left out, counted by kind."""
    if reasons:
        kinds = Counter(reason.split(" (")[0].split(" of ")[0] for reason in reasons.values())
        summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        warnings.warn(f"ImageFolderCaptions skipped {len(reasons)} file(s) under {root} ({summary}); their paths are "
                      f"in .skipped, the reasons in .skip_reasons", stacklevel=3)


def warn_about_classes(root, folders, classes, targets):
    """A warning for class folders without images: they stay classes, so labels follow the folders."""
    empty = [folders[label].name for label in sorted(set(range(len(folders))) - set(targets))]
    if empty:
        warnings.warn(f"Class folder(s) {empty} under {root} hold no usable image: they stay classes (labels "
                      f"follow the folders) but no item has their label", stacklevel=3)


def refuse_same_captions(root, folder_names, classes):
    """A ValueError naming the folders whose class names CLIP's tokenizer reads as the same words ("cat", "Cat",
    "cat_"): their captions, hence their classifier rows, would be identical and only one could be predicted."""
    groups = {classes[group[0]]: [folder_names[i] for i in group] for group in same_captions(classes)}
    if groups:
        raise ValueError(f"Folders under {root} give class names CLIP reads as the same words {groups} (its tokenizer "
                         f"ignores case, spaces and '_'/'-'): their captions are identical, so zero-shot could never "
                         f"tell them apart. Rename or merge those folders.")


def targets_of(dataset) -> list[int]:
    """Labels of every item as a list of ints, read from the dataset's label list instead of decoding images."""
    if isinstance(dataset, Subset):
        labels = targets_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, TensorDataset):  # (images, labels) tensors, e.g. recipes.rendered
        return [int(label) for label in dataset.tensors[1]]
    for attribute in ("targets", "y"):  # CIFAR10, ShapesDataset, ImageFolderCaptions: targets; Caltech256: y
        if hasattr(dataset, attribute):
            return [int(label) for label in getattr(dataset, attribute)]
    return [int(label) for _, label in dataset]  # any other dataset: decode everything, slowly but correctly


def classes_of(dataset) -> list[str]:
    """The class names of a dataset or of the dataset under a Subset."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(dataset.classes)


def split(dataset, val_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """(train, val) Subsets: disjoint, together the whole dataset, each class split in the same proportion.

    Every class with at least two items gets at least one in each part, so per-class validation scores exist.
    The same seed gives the same split.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    labels = np.array(targets_of(dataset))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(indices) * val_fraction))
        if len(indices) >= 2:
            n_val = min(max(n_val, 1), len(indices) - 1)
        val.extend(indices[:n_val].tolist())
        train.extend(indices[n_val:].tolist())
    return Subset(dataset, sorted(train)), Subset(dataset, sorted(val))


def per_class_subset(dataset, n_per_class: int | None, seed: int = 0):
    """Subset with (up to) n_per_class random items of every class, in dataset order; None: the whole dataset."""
    if n_per_class is None:
        return dataset
    labels = np.array(targets_of(dataset))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == label))[:n_per_class] for label in np.unique(labels)]
    return Subset(dataset, sorted(np.concatenate(keep).tolist()))


def random_subset(dataset, size: int | None, seed: int = 0):
    """`size` items of `dataset` drawn at random (all of them when size is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return Subset(dataset, np.random.default_rng(seed).permutation(len(dataset))[:size].tolist())
