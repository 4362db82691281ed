"""Image datasets for CLIP: CIFAR-10 and Caltech-256 through torchvision, a captioned image folder, and a split.

Every dataset here yields (image, label) with a PIL RGB image (or transform(image)) and an int label that
indexes the dataset's `.classes`, so captions are `template.format(dataset.classes[label])`.
"""
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from .downloads import checksums_skipped

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = "root/<NNN.class_name>/<images>, e.g. 256_ObjectCategories/001.ak47/001_0001.jpg"
# torchvision hard-codes this inside Caltech256.download() instead of exposing a `url` attribute.
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
OFFLINE = "run with PROFILE=offline, which uses clip_helpers.shapes and needs no download"


# Modes PIL gives 16-bit grayscale files (PNG, TIFF); "I" is how PIL opens a 16-bit PNG after some operations.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image):
    """PIL image in RGB; transparent parts of RGBA/LA/P images become white rather than black.

    16-bit grayscale is scaled to 8 bit (x / 257); PIL's own convert("RGB") clips it, so almost all turns white.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(eight_bit(np.asarray(image)), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def eight_bit(values):
    """16-bit values 0..65535 as uint8 0..255 (65535 -> 255); values outside that range are stretched, with a warning."""
    values = values.astype(np.float64)
    low, high = 0.0, 65535.0
    if values.min() < low or values.max() > high:  # a 32-bit "I" image: there is no standard range to scale from
        low, high = float(values.min()), float(values.max())
        warnings.warn(f"32-bit image with values {low:g}..{high:g}, outside 16 bits: stretched to 0..255", stacklevel=3)
    return np.round((values - low) / max(high - low, 1.0) * 255).astype(np.uint8)


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
    """torchvision's Caltech-256 (30,607 images, 257 classes incl. clutter) in root/caltech256/256_ObjectCategories.

    torchvision returns some images in grayscale; here every image is converted to RGB before `transform`.
    `.classes` is added: readable names from the folder names, as in ImageFolderCaptions ("001.ak47" -> "ak47").
    """
    rgb_transform = to_rgb if transform is None else torchvision.transforms.Compose([to_rgb, transform])
    dataset = open_or_explain(torchvision.datasets.Caltech256, CALTECH256_URL,
                              os.path.join(root, "caltech256", "256_ObjectCategories"),
                              root=root, transform=rgb_transform, download=download)
    dataset.classes = [class_name(folder) for folder in dataset.categories]
    return without_unreadable(dataset)


def without_unreadable(dataset):
    """Caltech256 with files PIL cannot decode left out (listed in `.skipped`, one warning), like ImageFolderCaptions.

    torchvision opens a file only when it is indexed, so one truncated JPEG would otherwise stop a training run
    in the middle of an epoch.
    """
    folder = os.path.join(dataset.root, "256_ObjectCategories")
    paths = [os.path.join(folder, dataset.categories[y], f"{y + 1:03d}_{i:04d}.jpg") for i, y in zip(dataset.index, dataset.y)]
    keep = [is_readable(path) for path in paths]
    dataset.skipped = [path for path, ok in zip(paths, keep) if not ok]
    dataset.index = [i for i, ok in zip(dataset.index, keep) if ok]
    dataset.y = [y for y, ok in zip(dataset.y, keep) if ok]
    if dataset.skipped:
        warnings.warn(f"Caltech-256: left out {len(dataset.skipped)} unreadable image file(s): {dataset.skipped[:3]}",
                      stacklevel=3)
    return dataset


def class_name(folder):
    """Readable class name from a folder name: "001.ak47" -> "ak47", "002.american-flag" -> "american flag".

    The number before the first dot goes; '-' and '_' become spaces so captions read naturally; Caltech's
    "-101" suffix (classes taken over from Caltech-101, e.g. "251.airplanes-101") is dropped.
    """
    name = folder.split(".", 1)[-1]
    name = name.removesuffix("-101")
    return name.replace("-", " ").replace("_", " ")


def visible(folder):
    """Entries of `folder` not hidden (".name"), sorted so the order is the same on every machine (os.listdir's is not)."""
    return sorted(f for f in folder.iterdir() if not f.name.startswith("."))


def image_files(folder):
    """Image files directly in `folder`, hidden ones left out like hidden folders (".ipynb_checkpoints", "._x.jpg")."""
    return [f for f in visible(folder) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]


def broken_links(folder):
    return [f for f in visible(folder) if f.is_symlink() and not f.exists()]


def unreadable_reason(path):
    """None when PIL can decode the whole file, else why not (a truncated JPEG passes Image.verify, so decode)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 + 1, image.height // 8 + 1))  # JPEG only: cheap scaled decode
            image.load()
        return None
    except Image.DecompressionBombError as error:
        return f"too large for PIL ({error}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError ...)
        return f"unreadable ({type(error).__name__}: {error})"


def is_readable(path):
    return unreadable_reason(path) is None


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

    Class names come from folder names via class_name(): the number before the first dot is dropped and
    '-' / '_' become spaces ("002.american-flag" -> "american flag"), so `.classes` can go straight into
    caption templates. Labels follow the sorted class folders, as torchvision's do: a folder without usable
    images stays a class (with a warning), so the same folders always give the same labels. Hidden files and
    folders are ignored. Every file is decoded once here, so unreadable ones are left out now and indices never
    shift later. Left out, each with its reason: unreadable or too large images, broken links, images loose
    in the root, and second copies of a file reached through a link. Their paths are in `.skipped`, their
    reasons in `.skip_reasons` ({path: reason}), all summarised in one warning. Images come out RGB.
    """

    def __init__(self, root, transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"No folder {root}. ImageFolderCaptions expects {LAYOUT}.")
        folders = [d for d in visible(root) if d.is_dir()]
        self.root, self.transform = root, transform
        self.classes = [class_name(d.name) for d in folders]
        reasons = {str(f): "broken link" for d in [root, *folders] for f in broken_links(d)}
        reasons.update({str(f): "not in a class folder" for f in image_files(root)})
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
    """A warning for class folders without images, and one for folders that give the same class name."""
    empty = [folders[label].name for label in sorted(set(range(len(folders))) - set(targets))]
    if empty:
        warnings.warn(f"Class folder(s) {empty} under {root} hold no usable image: they stay classes (labels "
                      f"follow the folders) but no item has their label", stacklevel=3)
    repeated = {name: [d.name for d, c in zip(folders, classes) if c == name]
                for name, count in Counter(classes).items() if count > 1}
    if repeated:
        warnings.warn(f"Folders give repeated class names {repeated}: their captions are identical, so zero-shot "
                      f"refuses them and training cannot tell them apart. Rename or merge those folders.", stacklevel=3)


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
