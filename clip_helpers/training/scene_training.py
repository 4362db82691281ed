"""The mini-CLIP trained on clip_helpers.scenes, and the measures that show what it learned: in-batch matching,
relation order, colour binding, size words, and how spread its similarities are.

Each scene gets a fresh caption every epoch (scene_captions.captions_for); batches are shuffled by twin pairs
(a scene and its distractor stay together), and captions of equal meaning share a label in clip_loss.
"""
import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..device import make_scaler
from ..losses import clip_loss, loss_floor
from .optim import make_optimizer, make_scheduler
from ..scene_captions import binding_test, captions_for, labels_of, order_test, relation_pairs, size_test
from ..scenes import draw, scene_pairs
from .seeds import epoch_seed, seed_everything
from ..similarity import normalize
from ..text import encode_texts
from .step import train_step


def rendered_scenes(scenes, seed: int, transform) -> torch.Tensor:
    """The scenes drawn once (scene k from the generator seeded by (seed, k)) and stacked through `transform`."""
    return torch.stack([transform(draw(scene, [seed, k, 7])) for k, scene in enumerate(scenes)])


def twin_batches(n_scenes: int, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of about batch_size that keep each scene (even index) with its twin (the next)."""
    order = np.random.default_rng(seed).permutation(n_scenes // 2)
    indices = np.stack([2 * order, 2 * order + 1], axis=1).reshape(-1)
    return [indices[i:i + batch_size].tolist() for i in range(0, len(indices), batch_size)]


def scene_epoch(model, images, scenes, parts, config, epoch: int, batch_size: int,
                captions=captions_for) -> tuple[float, float, float]:
    """(mean training loss, its mean floor, lr of the last step) of one epoch over the scenes, captioned by
    captions(scenes of a batch, rng) -> (texts, keys)."""
    optimizer, scheduler, scaler = parts
    rng = np.random.default_rng(epoch_seed(config.seed, epoch))
    losses, floors = [], []
    model.train()
    batches = twin_batches(len(scenes), batch_size, epoch_seed(config.seed, epoch))
    for batch in tqdm(batches, desc=f"epoch {epoch}/{config.num_epochs}", leave=False, disable=not config.progress):
        texts, keys = captions([scenes[i] for i in batch], rng)
        labels = torch.tensor(labels_of(keys))
        lr = optimizer.param_groups[0]["lr"]
        losses.append(train_step(model, images[batch], labels, texts, optimizer, scaler, config.grad_clip, config.amp))
        floors.append(loss_floor(labels))
        scheduler.step()
    return float(np.mean(losses)), float(np.mean(floors)), lr


def fit_scenes(model, images: torch.Tensor, scenes, config, batch_size: int, epoch_scores, captions=captions_for,
               on_epoch=None) -> pd.DataFrame:
    """Train `model` in place on the rendered scenes; one history row per epoch with epoch_scores(model)'s columns.

    captions: scene_captions.captions_for, or another (items, rng) -> (texts, keys), e.g. shape_captions'.
    on_epoch(model, epoch), when given, is called after each epoch is scored (recipes keeps epoch 1's weights)."""
    seed_everything(config.seed)
    steps = len(twin_batches(len(scenes), batch_size, 0))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.num_epochs * steps, config.warmup_fraction)
    parts = (optimizer, scheduler, make_scaler(model.positional_embedding.device, config.amp))
    history = []
    for epoch in range(1, config.num_epochs + 1):
        start = time.perf_counter()
        train_loss, floor, lr = scene_epoch(model, images, scenes, parts, config, epoch, batch_size, captions)
        model.eval()
        history.append({"epoch": epoch, "step": epoch * steps, "train_loss": train_loss, "train_loss_floor": floor,
                        **epoch_scores(model), "lr": lr, "seconds": time.perf_counter() - start})
        if on_epoch:
            on_epoch(model, epoch)
    return pd.DataFrame(history)


@torch.inference_mode()
def image_features_of(model, images: torch.Tensor) -> torch.Tensor:
    device = model.positional_embedding.device
    return normalize(torch.cat([model.encode_image(part.to(device)).float() for part in images.split(256)]))


@torch.inference_mode()
def scene_scores(model, images: torch.Tensor, scenes, seed: int = 0, batch_size: int = 128) -> dict:
    """On held-back scenes: scene_loss (clip_loss, equal meanings shared) and inbatch_top1 (% of images whose
    best caption in their batch means what their own says), over twin batches captioned from `seed`."""
    rng, features = np.random.default_rng([seed, 3]), image_features_of(model, images)
    logit_scale = model.logit_scale.exp().float()
    total, right, count = 0.0, 0, 0
    for batch in twin_batches(len(scenes), batch_size, seed):
        texts, keys = captions_for([scenes[i] for i in batch], rng)
        labels = torch.tensor(labels_of(keys))
        text_features = encode_texts(model, texts).float().cpu()
        total += clip_loss(features[batch].cpu(), text_features, logit_scale.cpu(), labels).item() * len(batch)
        best = (features[batch].cpu() @ normalize(text_features).T).argmax(dim=1)
        right += (labels[best] == labels).sum().item()
        count += len(batch)
    return {"scene_loss": total / count, "inbatch_top1": 100 * right / count}


@torch.inference_mode()
def pair_accuracy(model, images: torch.Tensor, true_texts, false_texts) -> float:
    """% of images whose cosine with the true sentence beats its cosine with the distractor (chance 50)."""
    if not len(true_texts):
        return float("nan")
    features = image_features_of(model, images).cpu()
    true_cos = (features * normalize(encode_texts(model, list(true_texts)).float().cpu())).sum(-1)
    false_cos = (features * normalize(encode_texts(model, list(false_texts)).float().cpu())).sum(-1)
    return 100 * (true_cos > false_cos).float().mean().item()


def distractor_accuracies(model, images: torch.Tensor, scenes, seed: int = 0) -> dict:
    """order_acc (relation vs its swapped order), binding_acc (colours exchanged), size_acc (other size word)."""
    rng = np.random.default_rng([seed, 5])
    several = [k for k, scene in enumerate(scenes) if relation_pairs(scene)]
    order = [order_test(scenes[k], rng) for k in several]
    binding = [(k, binding_test(scenes[k], rng)) for k in several]
    binding = [(k, pair) for k, pair in binding if pair[0] != pair[1]]  # same-colour objects: nothing to swap
    single = [k for k, scene in enumerate(scenes) if len(scene) == 1]
    sizes = [size_test(scenes[k]) for k in single]
    return {"order_acc": pair_accuracy(model, images[several], *zip(*order)),
            "binding_acc": pair_accuracy(model, images[[k for k, _ in binding]], *zip(*[p for _, p in binding])),
            "size_acc": pair_accuracy(model, images[single], *zip(*sizes))}


@torch.inference_mode()
def cosine_spread(model, images: torch.Tensor, scenes, seed: int = 0, n: int = 64) -> dict:
    """How far apart matching and non-matching cosines sit, and how peaked the softmax is at the learned
    logit_scale, on the first n scenes with one caption each: a saturated model has max_prob near 1."""
    texts, _ = captions_for(scenes[:n], np.random.default_rng([seed, 9]))
    cosines = image_features_of(model, images[:n]).cpu() @ normalize(encode_texts(model, texts).float().cpu()).T
    off = ~torch.eye(n, dtype=torch.bool)
    probs = (model.logit_scale.exp().float().cpu() * cosines).softmax(dim=1)
    return {"cos_match": cosines.diag().mean().item(), "cos_other": cosines[off].mean().item(),
            "cos_std": cosines.std().item(), "logit_scale": model.logit_scale.exp().item(),
            "max_prob": probs.max(dim=1).values.mean().item()}


def test_scenes(n_pairs: int, seed: int, transform) -> dict:
    """{"val": (images, scenes) of seen pairs, "held_out": (images, scenes) each holding a held-out pair}."""
    splits = {"val": scene_pairs(n_pairs, seed), "held_out": scene_pairs(n_pairs, seed, held_out=True)}
    return {name: (rendered_scenes(scenes, seed + offset, transform), scenes)
            for offset, (name, scenes) in enumerate(splits.items(), start=1)}


def scene_splits(n_pairs: int, n_test_pairs: int, seed: int, transform) -> dict:
    """{"train", "val", "held_out"}: (images, scenes); val and held_out come from seeds train never uses."""
    train = scene_pairs(n_pairs, seed)
    return {"train": (rendered_scenes(train, seed, transform), train),
            **test_scenes(n_test_pairs, seed + 10_000, transform)}
