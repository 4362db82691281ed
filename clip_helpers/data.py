"""Image datasets for CLIP: CIFAR-10 and Caltech-256 through torchvision, a captioned image folder, and a split.

Every dataset here yields (image, label) with a PIL RGB image (or transform(image)) and an int label that
indexes the dataset's `.classes`, so captions are `template.format(dataset.classes[label])`.
"""
import os
import warnings
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset, Subset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = "root/<NNN.class_name>/<images>, e.g. 256_ObjectCategories/001.ak47/001_0001.jpg"
# torchvision hard-codes this inside Caltech256.download() instead of exposing a `url` attribute.
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
OFFLINE = "run with PROFILE=offline, which uses clip_helpers.shapes and needs no download"


def to_rgb(image):
    """PIL image in RGB; transparent parts of RGBA/LA/P images become white rather than black."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


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
    from .rehearsal import checksums_skipped

    cls = torchvision.datasets.CIFAR10
    if checksums_skipped():
        cls = CIFAR10WithoutChecksums
    folder = os.path.join(root, cls.base_folder)
    return open_or_explain(cls, cls.url, folder, root=root, train=train, transform=transform, download=download)


class CIFAR10WithoutChecksums(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5s set to None: files must exist, their contents are not checked.
    Used only for the rehearsal's stand-ins (clip_helpers.rehearsal.checksums_skipped)."""
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


def image_files(folder):
    """Image files directly in `folder`, sorted so the order is the same on every machine (os.listdir's is not)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def is_readable(path):
    """True when PIL can decode the whole file (a truncated JPEG passes Image.verify, so decode, at 1/8 scale)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 + 1, image.height // 8 + 1))  # JPEG only: cheap scaled decode
            image.load()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError ...)
        return False


class ImageFolderCaptions(Dataset):
    """Images in one folder per class, the layout of Caltech-256 and of the report: root/001.ak47/*.jpg.

    Class names come from folder names via class_name(): the number before the first dot is dropped and
    '-' / '_' become spaces ("002.american-flag" -> "american flag"), so `.classes` can go straight into
    caption templates. Files are read in sorted order. Every file is decoded once here, so unreadable ones
    are left out now (listed in `.skipped`, one warning) and indices never shift later. Images come out RGB.
    """

    def __init__(self, root, transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"No folder {root}. ImageFolderCaptions expects {LAYOUT}.")
        folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        class_folders = [(d, image_files(d)) for d in folders]
        class_folders = [(d, files) for d, files in class_folders if files]
        if not class_folders:
            raise ValueError(f"No images in class folders under {root}. ImageFolderCaptions expects {LAYOUT}.")
        self.root, self.transform = root, transform
        self.classes = [class_name(d.name) for d, _ in class_folders]
        candidates = [(str(f), label) for label, (_, files) in enumerate(class_folders) for f in files]
        self.samples = [(path, label) for path, label in candidates if is_readable(path)]
        self.skipped = sorted({path for path, _ in candidates} - {path for path, _ in self.samples})
        self.targets = [label for _, label in self.samples]
        if self.skipped:
            warnings.warn(f"ImageFolderCaptions skipped {len(self.skipped)} unreadable image file(s) under {root}; "
                          f"their paths are in .skipped", stacklevel=2)
        if not self.samples:
            raise ValueError(f"None of the {len(candidates)} image files under {root} could be read.")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = to_rgb(image)
        return (self.transform(image) if self.transform else image), label


def targets_of(dataset):
    """Labels of every item as a list of ints, read from the dataset's label list instead of decoding images."""
    if isinstance(dataset, Subset):
        labels = targets_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    for attribute in ("targets", "y"):  # CIFAR10, ShapesDataset, ImageFolderCaptions: targets; Caltech256: y
        if hasattr(dataset, attribute):
            return [int(label) for label in getattr(dataset, attribute)]
    return [int(label) for _, label in dataset]  # any other dataset: decode everything, slowly but correctly


def split(dataset, val_fraction, seed=0):
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
