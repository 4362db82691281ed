"""Image features for a whole dataset, computed once and optionally cached on disk.

A cache file is used only when its key matches everything that decides the features: every tensor of the
image tower, the device and autocast dtype, the loader's order, and each dataset level's items and
transform (see items_key). A dataset whose items cannot be identified is encoded without the cache, with a
warning. A file that fails its checks (unreadable, truncated, another key, wrong count or dimension, not
finite, checksum) is recomputed with a warning; files are written atomically.
"""
import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, SequentialSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from .device import autocast, precision_dtype
from .files import remove_abandoned_temporaries, write_atomically
from .data import files_and_labels_key
from .text import encode_texts


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().cpu()
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_key(module: torch.nn.Module) -> str:
    """sha256 of every tensor of `module` in full, with its name, shape and dtype."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        values = value if isinstance(value, (tuple, list)) else [value]  # quantized layers keep packed tuples
        for item in values:
            if isinstance(item, torch.Tensor):
                digest.update(f"{tuple(item.shape)}{item.dtype}".encode())
                digest.update(tensor_bytes(item))
            else:
                digest.update(repr(item).encode())
    return digest.hexdigest()


def transform_key(transform) -> str:
    """A description of a transform that is the same in every process (repr without memory addresses)."""
    if transform is None:
        return "None"
    if hasattr(transform, "transforms"):  # Compose
        return "[" + ", ".join(transform_key(t) for t in transform.transforms) + "]"
    code = getattr(transform, "__code__", None)
    if code is not None:  # a function: two lambdas share a name, so their code tells them apart
        body = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]
        return f"{transform.__module__}.{transform.__qualname__}:{body}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))


def array_key(values) -> str:
    array = np.ascontiguousarray(values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
    return f"{array.shape}{array.dtype}:{hashlib.sha256(array.tobytes()).hexdigest()}"


def items_key(dataset) -> str | None:
    """What identifies the dataset's items and their transforms, or None when nothing here does.

    A dataset of the kit says what identifies its items through its own `cache_key()`; torchvision's datasets
    are identified by their (path, label) `.samples` or their `.data` and `.targets` held in memory."""
    if isinstance(dataset, Subset):
        inner = items_key(dataset.dataset)
        return None if inner is None else f"Subset({inner}, {array_key(np.asarray(dataset.indices, dtype=np.int64))})"
    if isinstance(dataset, ConcatDataset):
        parts = [items_key(d) for d in dataset.datasets]
        return None if None in parts else "Concat(" + ", ".join(parts) + ")"
    if isinstance(dataset, TensorDataset):
        return "Tensors(" + ", ".join(array_key(t) for t in dataset.tensors) + ")"
    transforms = (f"transform={transform_key(getattr(dataset, 'transform', None))}, "
                  f"target_transform={transform_key(getattr(dataset, 'target_transform', None))}")
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if callable(getattr(dataset, "cache_key", None)):  # ShapesDataset, ImageFolderCaptions, Caltech256Captions
        return f"{name}({dataset.cache_key()}, {transforms})"
    if hasattr(dataset, "samples"):  # torchvision's ImageFolder: (path, label) pairs
        return f"{name}(samples {files_and_labels_key(dataset.samples)}, {transforms})"
    if hasattr(dataset, "data") and hasattr(dataset, "targets"):  # CIFAR-10, MNIST: pixels held in memory
        return f"{name}({array_key(dataset.data)}, {array_key(np.asarray(dataset.targets))}, {transforms})"
    return None


def reads_every_item_once(loader) -> bool:
    sampler = loader.sampler
    if loader.drop_last or type(sampler) not in (SequentialSampler, RandomSampler):
        return False
    return not getattr(sampler, "replacement", False) and len(sampler) == len(loader.dataset)


def fingerprint(model, loader, precision: str = "auto") -> str | None:
    """sha256 of everything that decides `encode_images(model, loader, precision=...)`, or None when the items
    are unknown."""
    items = items_key(loader.dataset)
    if items is None or not reads_every_item_once(loader):
        return None
    device = model.positional_embedding.device
    parts = [weights_key(model.visual), f"{device.type}:{precision_dtype(device.type, precision)}",
             type(loader.sampler).__name__, items]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def checksum(image_features: torch.Tensor, labels: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(image_features) + tensor_bytes(labels)).hexdigest()


def cache_problem(cached, key: str, count: int, dim: int) -> str | None:
    """Why a loaded cache entry cannot be used, or None when it can."""
    if not isinstance(cached, dict) or not {"key", "image_features", "labels", "checksum"} <= cached.keys():
        return "it is not a feature cache written by this version of the kit"
    if cached["key"] != key:
        return "its key differs from this model and dataset's"
    image_features, labels = cached["image_features"], cached["labels"]
    if tuple(image_features.shape) != (count, dim) or tuple(labels.shape) != (count,):
        return (f"it holds features of shape {tuple(image_features.shape)} and {tuple(labels.shape)} labels, "
                f"expected ({count}, {dim}) and ({count},)")
    if not torch.isfinite(image_features).all():
        return "some of its features are not finite"
    if checksum(image_features, labels) != cached["checksum"]:
        return "its contents do not match their checksum (the file was changed or damaged)"
    return None


def load_cached(path: Path, key: str, count: int, dim: int):
    """(image_features, labels) from `path` when it is a valid cache for `key`, else None (with a warning)."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        problem = cache_problem(cached, key, count, dim)
    except Exception as error:  # truncated or damaged: zip, pickle and EOF errors of many types
        problem = f"it cannot be read ({type(error).__name__}: {error})"
    if problem is None:
        return cached["image_features"], cached["labels"]
    warnings.warn(f"Feature cache {path} is not used because {problem}; computing the features again.", stacklevel=3)
    return None


def save_cache(path: Path, key: str, image_features: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the cache atomically; a failure to write warns and leaves no partial file (the features are kept).

    Temporary files left in the folder by earlier writes that were killed are removed first
    (files.remove_abandoned_temporaries: only the kit's own, only abandoned ones)."""
    cache = {"key": key, "image_features": image_features, "labels": labels,
             "checksum": checksum(image_features, labels)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temporaries(path.parent)
        write_atomically(path, lambda file: torch.save(cache, file))
    except OSError as error:
        warnings.warn(f"Could not write the feature cache {path} ({error}); the features are returned uncached.",
                      stacklevel=3)


def cache_path(cache_dir, cache_label: str | None, key: str) -> Path:
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_label) + "-" if cache_label else ""
    return Path(cache_dir) / f"{label}{key[:20]}.pt"


@torch.no_grad()
def encode_images(model, loader, cache_dir=None, cache_label: str | None = None, progress: bool = True,
                  precision: str = "auto"):
    """(image_features [n, dim] float32 on CPU, labels [n]) for every batch of (images, labels) in `loader`.

    `precision`: "auto" runs the image tower under device.autocast's choice (bf16 on a CPU with bf16 hardware
    and on most GPUs, fp32 elsewhere); "fp32" runs it without autocast, exactly model.encode_image in fp32;
    "bf16" / "fp16" force that autocast dtype. device.precision_name(device, precision) says which ran.

    With `cache_dir`, the result is saved as `<cache_label->key>.pt`, key = fingerprint(model, loader), and a
    later call with the same image tower, device, dataset items and transform loads it instead of running
    the image tower again. `cache_label` only makes the file name readable; it never replaces the key.
    """
    key = path = None
    if cache_dir is not None:
        key = fingerprint(model, loader, precision)
        if key is None:
            warnings.warn(f"Features are not cached: the items of this {type(loader.dataset).__name__} cannot be "
                          f"identified (or the loader does not read each item once), so a cache could return another "
                          f"dataset's features. Cacheable: Subset, ConcatDataset, TensorDataset, datasets with "
                          f"a cache_key() method, .samples, or .data and .targets.", stacklevel=3)
        else:
            path = cache_path(cache_dir, cache_label, key)
            cached = load_cached(path, key, len(loader.dataset), model.visual.output_dim)
            if cached is not None:
                return cached
    device = model.positional_embedding.device
    dtype = precision_dtype(device, precision)  # checked before any work
    was_training = model.training
    model.eval()
    image_features, labels = [], []
    try:  # a failing batch or a Ctrl-C must not leave a model in training in eval mode
        for images, batch_labels in tqdm(loader, desc="encoding images", disable=not progress):
            with autocast(device, enabled=dtype is not None, dtype=dtype):
                image_features.append(model.encode_image(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(batch_labels))
    finally:
        model.train(was_training)
    image_features, labels = torch.cat(image_features), torch.cat(labels)
    if path is not None and not torch.isfinite(image_features).all():
        warnings.warn("Some image features are not finite (NaN or inf); they are returned but not cached.", stacklevel=3)
    elif path is not None:
        save_cache(path, key, image_features, labels)
    return image_features, labels


@torch.no_grad()
def encode_images_and_texts(model, preprocess, images: list, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_features, text_features), unnormalised, float32 on the CPU, for a few PIL images and texts."""
    device = model.positional_embedding.device
    image_features = model.encode_image(torch.stack([preprocess(image) for image in images]).to(device))
    return image_features.float().cpu(), encode_texts(model, texts).float().cpu()


def encode_datasets(model, datasets: dict, cache_dir=None, label: str = "", batch_size: int = 128) -> dict:
    """{name: (image_features, labels)}: each dataset encoded once, cached under cache_dir (with `label` and the
    dataset's name and size in the file name) when one is given; prints each dataset's size as it goes."""
    features = {}
    for name, dataset in datasets.items():
        cache = {} if cache_dir is None else dict(
            cache_dir=cache_dir, cache_label=re.sub(r"[/ ]", "-", f"{label}-{name}-{len(dataset)}"))
        features[name] = encode_images(model, DataLoader(dataset, batch_size=batch_size), progress=False, **cache)
        print(f"{name}: {len(dataset)} images of {len(set(features[name][1].tolist()))} classes")
    return features
