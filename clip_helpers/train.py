"""The fine-tuning loop, done the way the report's loop should have been.

What changed from the report's listing (section 4.3), and why:
- fp32 master weights with autocast, instead of casting the whole model to fp16 and back around every step;
- AdamW without weight decay on gains, biases, embeddings and logit_scale; warmup then cosine decay;
  gradient clipping; logit_scale clamped to ln(100) as in the paper;
- captions of the same class are not negatives of each other (multi-positive clip_loss);
- each distinct caption is encoded once, and only up to its end token (text.encode_texts);
- validation is zero-shot classification on held-out images, with the class prompts encoded once;
- a checkpoint every epoch, an exact resume, and a stop with a clear message when the loss turns NaN/inf;
- a run folder belongs to one run: locked while it trains, never overwritten unless asked, resumed only with
  the settings it was started with (clip_helpers.checkpoints).
"""
import hashlib
import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoints import (describe_run, last_checkpoint_message, load_checkpoint,  # noqa: F401 (public names)
                          restore_rng_states, rng_states, run_folder, save_atomically, save_checkpoint)
from .device import autocast, autocast_dtype
from .losses import clip_loss
from .quantize import int8_image_tower
from .text import encode_texts
from .zeroshot import build_classifier, scores

MAX_LOGIT_SCALE = math.log(100)  # the paper clips the temperature so logits are at most 100x the cosine


@dataclass
class TrainConfig:
    class_names: list
    templates: list = field(default_factory=lambda: ["{}"])  # "{}" is the report's bare class name
    eval_templates: list | None = None  # prompts of the zero-shot classifier; None: the training templates
    num_epochs: int = 5
    lr: float = 1e-5
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    run_dir: str | None = None  # e.g. data/runs/caltech256; None saves nothing
    resume: bool | str = False  # True: continue run_dir's run (refused if none); "auto": continue it if there is one
    overwrite: bool = False  # a new run may replace the run already in run_dir
    run_settings: dict | None = None  # what fine_tune cannot see (model name, dataset): recorded and checked on resume
    amp: str | None = "auto"  # "auto": device.autocast's choice; None: fp32; "bfloat16"/"float16": forced
    int8_eval: bool = False  # validate with an int8 copy of a ViT image tower (CPU only; ~2x faster, not exact)
    progress: bool = True

    def __post_init__(self):
        problems = config_problems(self)
        if problems:
            raise ValueError(f"TrainConfig: {'; '.join(problems)}.")


def positive_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def config_problems(config):
    """What is wrong with `config`, in words: a zero lr or no epochs would train nothing, silently."""
    problems = []
    if not (isinstance(config.num_epochs, int) and not isinstance(config.num_epochs, bool) and config.num_epochs >= 1):
        problems.append(f"num_epochs must be a whole number >= 1, not {config.num_epochs!r}")
    for name in ("lr", "eps", "grad_clip"):
        if not positive_number(getattr(config, name)):
            problems.append(f"{name} must be a finite number > 0, not {getattr(config, name)!r}")
    if not (positive_number(config.weight_decay) or config.weight_decay == 0):
        problems.append(f"weight_decay must be a finite number >= 0, not {config.weight_decay!r}")
    if not (isinstance(config.warmup_fraction, (int, float)) and 0 <= config.warmup_fraction < 1):
        problems.append(f"warmup_fraction must be in [0, 1), not {config.warmup_fraction!r}")
    if config.amp not in ("auto", None, "bfloat16", "float16"):
        problems.append(f"amp must be 'auto', None, 'bfloat16' or 'float16', not {config.amp!r}")
    if config.resume not in (False, True, "auto"):
        problems.append(f"resume must be False, True or 'auto', not {config.resume!r}")
    elif config.resume and config.overwrite:
        problems.append("resume and overwrite ask for opposite things; choose one")
    return problems


# ---------------------------------------------------------------- optimiser, schedule, precision

def parameter_groups(model, weight_decay):
    """Two AdamW groups: matrices decay; gains, biases, embeddings and logit_scale do not (shrinking them only hurts)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, config):
    # The fused kernel updates every tensor in one pass: about 3x faster than Adam's per-tensor loop on CPU.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=config.betas, eps=config.eps, fused=fused)


def make_scheduler(optimizer, total_steps, warmup_fraction):
    """Linear warmup (fresh Adam moments are noisy) then cosine decay to zero, stepped once per batch."""
    warmup = min(max(1, round(warmup_fraction * total_steps)), max(1, total_steps - 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup)),
    ], milestones=[warmup])


def amp_dtype(device, amp):
    if amp == "auto":
        return autocast_dtype(device)
    return None if amp is None else getattr(torch, amp)


def amp_context(device, amp):
    return autocast(device, enabled=amp is not None, dtype=amp_dtype(device, amp))


def make_scaler(device, amp):
    """A GradScaler that only acts under fp16, whose small range would flush small gradients to zero."""
    device_type = str(device).split(":")[0]
    return torch.amp.GradScaler(device_type, enabled=amp_dtype(device, amp) == torch.float16)


# ---------------------------------------------------------------- one step

def captions_for(labels, class_names, templates, generator):
    """One caption per image, its template drawn at random so the model does not learn one phrasing."""
    picks = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [templates[pick].format(class_names[int(label)]) for label, pick in zip(labels, picks)]


def train_step(model, images, labels, texts, optimizer, scaler, grad_clip=1.0, amp="auto"):
    """One optimiser step on a batch; returns the loss as a float. Raises FloatingPointError before a NaN/inf update."""
    device = model.positional_embedding.device
    optimizer.zero_grad(set_to_none=True)  # freeing the gradients is cheaper than writing zeros into them
    with amp_context(device, amp):
        image_features = model.encode_image(images.to(device, non_blocking=True))
        text_features = encode_texts(model, texts)
    loss = clip_loss(image_features.float(), text_features.float(), model.logit_scale.exp(), labels.to(device))
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss is {value}")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return value


# ---------------------------------------------------------------- evaluation

def inbatch_accuracy(logits_per_image):
    """The report's evaluateModel score for one batch (a count): is image i's best caption caption i?

    Exactly as the report computes it: its "text" half takes argmax(logits_per_text, dim=0), which is the
    image half again (logits_per_text is the transpose), so both halves count image->text matches. With
    several images of one class in a batch their captions are identical and at most one of them can win:
    this measures in-batch matching, not classification.
    """
    truth = torch.arange(len(logits_per_image), device=logits_per_image.device)
    images_right = (logits_per_image.argmax(dim=1) == truth).sum().item()
    texts_right = (logits_per_image.T.argmax(dim=0) == truth).sum().item()
    return (images_right + texts_right) / 2


@torch.inference_mode()
def validation_scores(model, val_loader, classifier, amp="auto", int8=False):
    """val_loss, val_top1 (zero-shot, %) and val_inbatch_acc (the report's metric, %) over `val_loader`.

    The class prompts were encoded once into `classifier`; row c also serves as the caption of class c.
    int8=True encodes the images with clip_helpers.quantize.int8_image_tower(model), made once here.
    """
    device = model.positional_embedding.device
    logit_scale = model.logit_scale.exp().float()
    if int8:
        model = int8_image_tower(model)
    classifier = classifier.to(device)
    all_features, all_labels, total_loss, inbatch_right = [], [], 0.0, 0.0
    for images, labels in val_loader:
        with amp_context(device, amp):
            image_features = model.encode_image(images.to(device)).float()
        labels = labels.to(device)
        text_features = classifier[labels]
        total_loss += clip_loss(image_features, text_features, logit_scale, labels).item() * len(labels)
        logits = logit_scale * (image_features / image_features.norm(dim=-1, keepdim=True)) @ text_features.T
        inbatch_right += inbatch_accuracy(logits)
        all_features.append(image_features.cpu())
        all_labels.append(labels.cpu())
    labels = torch.cat(all_labels)
    return {"val_loss": total_loss / len(labels),
            "val_top1": scores(torch.cat(all_features), labels, classifier.cpu())["top1"],
            "val_inbatch_acc": 100 * inbatch_right / len(labels)}


# ---------------------------------------------------------------- the loop

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed, epoch):
    """A seed fixed by (seed, epoch): an epoch's shuffle and captions do not depend on what ran before it."""
    return seed * 1_000_003 + epoch


def reseed_sampler(loader, seed, epoch):
    """Reseed a shuffling DataLoader built with a generator (see train_loader_for) for this epoch.

    A loader without one draws its order from torch's global RNG, which a resume restores too.
    """
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if generator is not None:
        generator.manual_seed(epoch_seed(seed, epoch))


def train_loader_for(dataset, batch_size, seed=0, num_workers=0):
    """A shuffling DataLoader whose order fine_tune can fix per epoch (so a resumed run sees the same batches)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed))


def fine_tune(model, train_loader, val_loader, config):
    """Train `model` in place on batches of (images, labels); returns the history, one row per epoch.

    Columns: epoch, step, train_loss, val_loss, val_top1 (zero-shot %), val_inbatch_acc (the report's
    metric, %), lr (of the epoch's last step), seconds (wall time of the epoch, evaluation included).
    With config.run_dir, a checkpoint is written after every epoch (see clip_helpers.checkpoints);
    config.resume=True continues from it and returns the same history an uninterrupted run would have.
    """
    check_loaders(train_loader, val_loader)
    steps_per_epoch = len(train_loader)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.num_epochs * steps_per_epoch, config.warmup_fraction)
    scaler = make_scaler(model.positional_embedding.device, config.amp)
    parts = (model, optimizer, scheduler, scaler)
    if not config.run_dir:
        seed_everything(config.seed)
        return pd.DataFrame(run_epochs(parts, train_loader, val_loader, config, [], None))
    record = describe_run(config, batch_size=getattr(train_loader, "batch_size", None), steps_per_epoch=steps_per_epoch,
                          train_images=dataset_size(train_loader), val_images=dataset_size(val_loader))
    with run_folder(config.run_dir, record, model, config.resume, config.overwrite) as state:
        history = []
        if state is None:
            seed_everything(config.seed)
        else:
            restore(parts, state)
            history = state["history"]
        try:
            history = run_epochs(parts, train_loader, val_loader, config, history, record)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(config.run_dir)) from None
    return pd.DataFrame(history)


def dataset_size(loader):
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if hasattr(dataset, "__len__") else None


def check_loaders(train_loader, val_loader):
    """An empty loader would fail only after an epoch's work (or train nothing): refuse it first."""
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if len(loader) == 0:
            raise ValueError(f"{name} yields no batches (its dataset holds {dataset_size(loader)} items): "
                             f"give it at least one image.")


def restore(parts, state):
    model, optimizer, scheduler, scaler = parts
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])


def interrupted_message(run_dir):
    resume = " Continue it with the same settings and resume=True." if (Path(run_dir) / "checkpoint.pt").is_file() else ""
    return f"Interrupted. {last_checkpoint_message(run_dir)}{resume}"


def run_epochs(parts, train_loader, val_loader, config, history, record):
    """Train the epochs after those in `history`, saving each one when `record` (the run's configuration) is given."""
    model, optimizer, scheduler, scaler = parts
    for epoch in range(len(history) + 1, config.num_epochs + 1):
        start = time.perf_counter()
        train_loss, lr = train_epoch(parts, train_loader, config, epoch)
        model.eval()
        classifier = build_classifier(model, config.class_names, config.eval_templates or config.templates)
        history = history + [{"epoch": epoch, "step": epoch * len(train_loader), "train_loss": train_loss,
                              **validation_scores(model, val_loader, classifier, config.amp, config.int8_eval),
                              "lr": lr, "seconds": time.perf_counter() - start}]
        if record is not None:
            save_epoch(parts, epoch, history, config, record)
    return history


def train_epoch(parts, train_loader, config, epoch):
    """(mean training loss, lr of the last step) of one epoch."""
    model, optimizer, scheduler, scaler = parts
    reseed_sampler(train_loader, config.seed, epoch)
    caption_generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch) + 500_000_000)
    model.train()
    losses = []
    # tqdm.auto given the loader itself would call iter() on it twice (its asyncio variant does it
    # eagerly), starting DataLoader workers twice; a bar updated by hand does not.
    bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{config.num_epochs}", disable=not config.progress, leave=False)
    for images, labels in train_loader:
        texts = captions_for(labels, config.class_names, config.templates, caption_generator)
        lr = optimizer.param_groups[0]["lr"]
        try:
            loss = train_step(model, images, labels, texts, optimizer, scaler, config.grad_clip, config.amp)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"Stopped: {error} at epoch {epoch}, step {len(losses) + 1} (lr {lr:.3g}). "
                f"{last_checkpoint_message(config.run_dir)} Try a lower lr or amp=None (fp32).") from None
        scheduler.step()
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return float(np.mean(losses)), lr


def save_epoch(parts, epoch, history, config, record):
    """Save the epoch, or stop with where the last good checkpoint is (a NaN state, a full disk)."""
    try:
        save_checkpoint(config.run_dir, epoch, *parts, history, record)
    except FloatingPointError as error:
        raise FloatingPointError(f"Stopped: {error}. {last_checkpoint_message(config.run_dir)} "
                                 f"Try a lower lr or amp=None (fp32).") from None
    except OSError as error:
        raise OSError(f"Could not save epoch {epoch} in {config.run_dir} ({error}). "
                      f"{last_checkpoint_message(config.run_dir)}") from error


# ---------------------------------------------------------------- mini-CLIP on shapes, from scratch

# Measured on 2 shared CPU cores: 99.7-100% zero-shot top-1 (36-way) on held-back images of the seen
# colour/shape pairs, 68-81% on the never-seen pairs, in 1.5-4 minutes (about 3 s an epoch when idle).
MINI_RECIPE = dict(n_per_class=100, val_fraction=0.2, num_epochs=12, batch_size=128, lr=2e-3,
                   weight_decay=0.1, warmup_fraction=0.1, seed=0, amp="auto")
# The same task for the ViT mini-CLIP (models.MINI_VIT_CLIP), which needs more, smaller steps than the ResNet:
# 88.8% on the seen pairs after 30 epochs, about 2 minutes on 2 idle cores. Used to check int8 evaluation.
MINI_VIT_RECIPE = dict(MINI_RECIPE, architecture="mini-vit", num_epochs=30, batch_size=64, lr=1e-3)
# Seconds, for tests and the smoke profile: proves the pipeline runs, learns little.
SMOKE_RECIPE = dict(n_per_class=4, val_fraction=0.25, num_epochs=1, batch_size=32, lr=2e-3,
                    weight_decay=0.1, warmup_fraction=0.1, seed=0, amp="auto")


def rendered(dataset):
    """The dataset drawn once into a TensorDataset: shapes are drawn in PIL, too slow to redo every epoch."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.utils.data.TensorDataset(torch.stack(images), torch.tensor(labels))


def recipe_key(recipe):
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def shapes_splits(recipe, preprocess):
    """(train, val, heldout) TensorDatasets: val holds unseen images of seen pairs, heldout the HELD_OUT pairs."""
    from .data import split
    from .shapes import ShapesDataset
    seen = ShapesDataset("train", n_per_class=recipe["n_per_class"], seed=recipe["seed"], transform=preprocess)
    train, val = split(seen, recipe["val_fraction"], seed=recipe["seed"])
    n_heldout = max(1, round(recipe["n_per_class"] * recipe["val_fraction"]))
    heldout = ShapesDataset("heldout", n_per_class=n_heldout, seed=recipe["seed"], transform=preprocess)
    return rendered(train), rendered(val), rendered(heldout), seen.classes


def train_mini_clip(recipe=None, cache_dir="data/weights", retrain=False, progress=True, device="cpu"):
    """(model, preprocess, history): MINI_CLIP trained from scratch on clip_helpers.shapes, cached on disk.

    The file name carries a hash of the recipe, so the smoke recipe never overwrites the real one. The
    recipe's "architecture" (default "mini") names the model in models.ARCHITECTURES. The history gains a
    last column, heldout_top1: zero-shot top-1 (%) on colour/shape pairs never trained on.
    """
    from .models import build_random_clip, load_clip, preprocess_for
    recipe = {**MINI_RECIPE, **(recipe or {})}
    path = Path(cache_dir) / f"mini-clip-shapes-{recipe_key(recipe)}.pt"
    history_path = path.with_suffix(".csv")
    if path.is_file() and history_path.is_file() and not retrain:
        try:
            model, preprocess = load_clip(str(path), device=device)
            return model, preprocess, pd.read_csv(history_path)
        except ValueError as error:  # load_clip's messages for a damaged file; pandas' EmptyDataError is one too
            warnings.warn(f"The cached mini-CLIP {path} is unusable, so it is trained again: {error}", stacklevel=2)
    model = build_random_clip(recipe.get("architecture", "mini"), seed=recipe["seed"]).to(device)
    history = fit_on_shapes(model, recipe, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(model.state_dict(), path)
    history.to_csv(history_path, index=False)
    return model.eval(), preprocess_for(32), history


def fit_on_shapes(model, recipe, progress=True):
    """Train `model` in place with fine_tune on the shapes splits of `recipe`; its history, with heldout_top1."""
    from .models import preprocess_for
    from .shapes import SHAPES_TEMPLATES
    train, val, heldout, class_names = shapes_splits(recipe, preprocess_for(32))
    config = TrainConfig(class_names=class_names, templates=SHAPES_TEMPLATES, num_epochs=recipe["num_epochs"],
                         lr=recipe["lr"], weight_decay=recipe["weight_decay"], warmup_fraction=recipe["warmup_fraction"],
                         seed=recipe["seed"], amp=recipe["amp"], progress=progress)
    history = fine_tune(model, train_loader_for(train, recipe["batch_size"], recipe["seed"]),
                        torch.utils.data.DataLoader(val, batch_size=256), config)
    history["heldout_top1"] = heldout_top1(model, heldout, class_names, SHAPES_TEMPLATES)
    return history


def heldout_top1(model, dataset, class_names, templates):
    """Zero-shot top-1 (%) over all 36 classes on images of pairs the model never saw captioned."""
    classifier = build_classifier(model.eval(), class_names, templates)
    return validation_scores(model, torch.utils.data.DataLoader(dataset, batch_size=256), classifier)["val_top1"]
