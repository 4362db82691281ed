"""Image features for a whole dataset, computed once and optionally cached on disk."""
import hashlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .device import autocast


def fingerprint(model, loader):
    """A short key that changes when the weights or the dataset's size or type change."""
    digest = hashlib.sha1()
    for tensor in list(model.state_dict().values())[:: max(1, len(model.state_dict()) // 16)]:
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    digest.update(f"{type(loader.dataset).__name__}:{len(loader.dataset)}".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_images(model, loader, cache_dir=None, cache_key=None, progress=True):
    """(image_features [n, dim] float32 on CPU, labels [n]) for every batch of (images, labels) in `loader`.

    With `cache_dir`, the result is saved as `<cache_key or fingerprint>.pt` and a second call with the
    same model and dataset loads it instead of running the image tower again.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key or fingerprint(model, loader)}.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            return cached["image_features"], cached["labels"]
    device = model.positional_embedding.device
    was_training = model.training
    model.eval()
    image_features, labels = [], []
    for images, batch_labels in tqdm(loader, desc="encoding images", disable=not progress):
        with autocast(device):
            image_features.append(model.encode_image(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(batch_labels))
    model.train(was_training)
    image_features, labels = torch.cat(image_features), torch.cat(labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"image_features": image_features, "labels": labels}, path)
    return image_features, labels
