"""Profiles: how big a notebook run is and where its model and images come from, chosen once per notebook.

A profile is only sizes and sources. Notebooks read it at the top and pass explicit arguments down
(`batch_size=profile.batch_size`); nothing in the package takes a profile.
"""
import dataclasses
import json
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np
from clip.clip import _MODELS
from PIL import Image
from torch.utils.data import Subset

from .data import ImageFolderCaptions, caltech256, cifar10, targets_of
from .device import get_device
from .models import archive_problem, load_clip, weights_cached, weights_file
from .shapes import ShapesDataset

PRETRAINED = "ViT-B/32"

# The eight scikit-image photos and descriptions of openai/CLIP's "Interacting with CLIP" notebook,
# keyed by skimage.data name; the folder name gives ImageFolderCaptions a short class name.
PHOTOS = {
    "page": ("page", "a page of text about segmentation"),
    "chelsea": ("cat", "a facial photo of a tabby cat"),
    "astronaut": ("astronaut", "a portrait of an astronaut with the American flag"),
    "rocket": ("rocket", "a rocket standing on a launchpad"),
    "motorcycle_right": ("motorcycle", "a red motorcycle standing in a garage"),
    "camera": ("camera", "a person looking at a camera on a tripod"),
    "horse": ("horse", "a black-and-white silhouette of a horse"),
    "coffee": ("coffee", "a cup of coffee on a saucer"),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and sources for one run of the notebooks.

    model: "ViT-B/32" (OpenAI's pretrained weights) or "mini" (the kit's mini-CLIP, trained on shapes).
    zeroshot_source / finetune_source: "cifar10", "caltech256" or "shapes".
    n_train / n_val / n_test: images per class in the fine-tune train / validation split and the zero-shot test set.
    mini_recipe: which train_mini_clip recipe trains the mini-CLIP: "default" (minutes) or "smoke" (seconds).
    """
    name: str
    meaning: str
    model: str
    zeroshot_source: str
    finetune_source: str
    n_train: int
    n_val: int
    n_test: int
    batch_size: int
    num_epochs: int
    lr: float
    n_grid: int = 16
    mini_recipe: str = "default"

    @property
    def pretrained(self):
        return self.model != "mini"


PROFILES = {
    "smoke": Profile(
        "smoke", "tiny sizes and a mini-CLIP trained for seconds, only to check that every cell runs: "
        "the numbers below mean nothing.",
        model="mini", zeroshot_source="shapes", finetune_source="shapes",
        n_train=2, n_val=1, n_test=2, batch_size=32, num_epochs=1, lr=1e-3, n_grid=8,
        mini_recipe="smoke",
    ),
    "offline": Profile(
        "offline", "no network: the kit's mini-CLIP (4.6M parameters, 3.2M of them its token embedding), trained "
        "from scratch on coloured shapes on this machine. Numbers are about that tiny model on shapes, not "
        "OpenAI's CLIP on photos.",
        model="mini", zeroshot_source="shapes", finetune_source="shapes",
        n_train=8, n_val=4, n_test=25, batch_size=64, num_epochs=5, lr=5e-4, n_grid=16,
    ),
    "quick": Profile(
        "quick", "OpenAI's pretrained ViT-B/32 on small CIFAR-10 subsets (see the README for its time on a CPU): "
        "real CLIP numbers, but from a few hundred images, so expect a few points of noise.",
        model=PRETRAINED, zeroshot_source="cifar10", finetune_source="cifar10",
        n_train=40, n_val=20, n_test=100, batch_size=32, num_epochs=2, lr=1e-5, n_grid=16,
    ),
    "full": Profile(
        "full", "the report's reproduction on a GPU: pretrained ViT-B/32, zero-shot on the whole CIFAR-10 test "
        "set, fine-tuning on about 5,000 Caltech-256 images (20 per class) with about 1,000 for validation, as in "
        "the report.",
        model=PRETRAINED, zeroshot_source="cifar10", finetune_source="caltech256",
        n_train=20, n_val=4, n_test=1000, batch_size=32, num_epochs=10, lr=1e-5, n_grid=16,
    ),
}


def weights_host(name=PRETRAINED):
    return urllib.parse.urlparse(_MODELS[name]).hostname


def can_reach(host, port=443, timeout=3.0):
    """True when a TCP connection to host opens within `timeout` seconds (DNS included, hence the thread)."""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def choose_auto(data_dir="data"):
    """("quick" | "offline", why): quick when the pretrained weights are cached (a complete archive) or their
    host answers; a damaged cached file is named in the reason and does not count as cached."""
    download_root = Path(data_dir) / "weights"
    path = weights_file(PRETRAINED, download_root)
    problem = archive_problem(path) if weights_cached(PRETRAINED, download_root) else None
    if weights_cached(PRETRAINED, download_root) and problem is None:
        return "quick", f"the {PRETRAINED} weights are cached in {path}"
    damaged = f"the cached {path} is unusable ({problem}); " if problem else ""
    host = weights_host()
    if can_reach(host):
        return "quick", f"{damaged}{host} is reachable, so the {PRETRAINED} weights can be downloaded"
    return "offline", (f"{damaged}the {PRETRAINED} weights are not in {download_root}/ and {host} cannot be reached "
                       f"(no internet)")


SIZE_FIELDS = ("n_train", "n_val", "n_test", "batch_size", "num_epochs", "n_grid")


def with_sizes(profile, sizes):
    """The profile with some sizes changed, from "n_test=30,num_epochs=1"; its meaning says which and that
    its numbers are not the named profile's."""
    changes = {}
    for item in filter(None, sizes.split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in SIZE_FIELDS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"Cannot read {item!r} in {sizes!r}: write size=positive integer, sizes among {SIZE_FIELDS}")
        changes[key.strip()] = int(value)
    note = ", ".join(f"{key}={value}" for key, value in changes.items())
    return dataclasses.replace(profile, **changes, meaning=f"{profile.meaning} SIZES CHANGED ({note}): the "
                               f"{profile.name} profile's code path on fewer images than the {profile.name} profile uses.")


def get_profile(name="auto", data_dir="data"):
    """(Profile, reason): one of PROFILES, or for "auto" quick/offline with the reason it was chosen.

    "full:n_train=1,n_val=1" is the full profile with those sizes changed (with_sizes).
    """
    name, _, sizes = name.partition(":")
    if sizes:
        profile, reason = get_profile(name, data_dir)
        return with_sizes(profile, sizes), f"{reason}, with sizes {sizes}"
    if name == "auto":
        chosen, why = choose_auto(data_dir)
        return PROFILES[chosen], f'"auto" chose {chosen}: {why}'
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}; choose one of {['auto', *PROFILES]}")
    return PROFILES[name], f"{name} was asked for"


def describe(profile, reason):
    """The paragraph each notebook prints at its top."""
    return f"Profile: {profile.name} ({reason}).\nWhat that means for the numbers below: {profile.meaning}"


def write_photos(data_dir="data"):
    """The eight scikit-image photos as an ImageFolderCaptions folder, <data_dir>/photos/001.page/page.png ...

    Needs no network (the photos ship with scikit-image). Returns the folder.
    """
    import skimage

    root = Path(data_dir) / "photos"
    for number, (skimage_name, (class_name, _)) in enumerate(PHOTOS.items(), start=1):
        path = root / f"{number:03d}.{class_name}" / f"{skimage_name}.png"
        if not path.is_file():
            source = next(Path(skimage.data_dir).glob(f"{skimage_name}.*"))  # rocket is a .jpg
            path.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                image.convert("RGB").save(path)
    return root


def photo_descriptions():
    """The eight photos' descriptions in folder order (the captions of the Fig 12 heatmap)."""
    return [description for _, description in PHOTOS.values()]


def project_path(path):
    """A relative path taken from the project root: Jupyter starts kernels in notebooks/, papermill where it runs."""
    path = Path(path)
    here = Path.cwd()
    if not path.is_absolute() and here.name == "notebooks" and (here.parent / "clip_helpers").is_dir():
        return here.parent / path
    return path


def load_model(model_name, data_dir="data", device=None, mini_recipe="default", progress=True):
    """(model, preprocess, history): pretrained weights via load_clip (history None), or for "mini" the
    kit's mini-CLIP trained on shapes by train.train_mini_clip, cached in <data_dir>/weights after the first run.

    mini_recipe: "default" (train.MINI_RECIPE, a few CPU minutes) or "smoke" (train.SMOKE_RECIPE, seconds).
    """
    device = device or get_device()
    download_root = Path(data_dir) / "weights"
    if model_name == "mini":
        from . import train

        recipe = {"default": train.MINI_RECIPE, "smoke": train.SMOKE_RECIPE}[mini_recipe]
        return train.train_mini_clip(recipe, cache_dir=download_root, progress=progress, device=device)
    model, preprocess = load_clip(model_name, device=device, download_root=download_root)
    return model, preprocess, None


def per_class_subset(dataset, n_per_class, seed=0):
    """Subset with (up to) n_per_class random items of every class, in dataset order."""
    labels = np.array(targets_of(dataset))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == label))[:n_per_class] for label in np.unique(labels)]
    return Subset(dataset, sorted(np.concatenate(keep).tolist()))


def open_dataset(source, split, n_per_class, data_dir="data", transform=None, seed=0):
    """A dataset of (image, label) with `.classes` reachable through classes_of(): n_per_class images of each class.

    source: "shapes" (split "train" = seen pairs, "heldout", "all"; test images use a different seed than
    training), "cifar10" (split "train" or "test"), "caltech256" (one pool; use data.split for train/val).
    """
    if source == "shapes":
        return ShapesDataset(split, n_per_class=n_per_class, seed=seed, transform=transform)
    if source == "cifar10":
        dataset = cifar10(root=data_dir, train=(split == "train"), transform=transform)
    elif source == "caltech256":
        dataset = caltech256(root=data_dir, transform=transform)
    else:
        raise ValueError(f"Unknown source {source!r}; choose shapes, cifar10 or caltech256")
    return per_class_subset(dataset, n_per_class, seed)


def classes_of(dataset):
    """The class names of a dataset or of the dataset under a Subset."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return list(dataset.classes)


def save_metrics(out_dir, notebook, key, value, **details):
    """Write <out_dir>/metrics/<notebook>.json: the notebook's key number (for run_notebooks' summary) and details."""
    path = Path(out_dir) / "metrics" / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"notebook": notebook, "key": key, "value": value, **details}
    path.write_text(json.dumps(record, indent=1, default=float))
    return record


def examples(source, n, data_dir="data", seed=0):
    """(images, labels, class_names): n PIL images of n different classes, spread over the class list.

    source: "photos" (the eight scikit-image photos), "shapes" (seen pairs), "cifar10" (test set) or "caltech256".
    """
    if source == "photos":
        dataset = ImageFolderCaptions(write_photos(data_dir))
    elif source == "shapes":
        dataset = ShapesDataset("train", n_per_class=1, seed=seed)
    else:
        dataset = open_dataset(source, "test", 1, data_dir=data_dir, seed=seed)
    class_names = classes_of(dataset)
    labels = np.array(targets_of(dataset))
    present = np.unique(labels)
    wanted = present[np.linspace(0, len(present) - 1, min(n, len(present))).round().astype(int)]
    picks = [int(np.flatnonzero(labels == label)[0]) for label in wanted]
    images, labels = zip(*(dataset[i] for i in picks))
    return list(images), list(labels), class_names
