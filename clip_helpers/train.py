"""The fine-tuning loop, done the way the report's loop should have been.

What it changes from the report's listing (section 4.3), and why, is listed once: clip_helpers.report.REPORT_BUGS.
Besides those:
- warmup then cosine decay; gradient clipping; logit_scale clamped to at most 100 as in the paper;
- each distinct caption is encoded once, and only up to its end token (text.encode_texts);
- a stop with a clear message when the loss turns NaN/inf;
- a run folder belongs to one run: locked while it trains, never overwritten unless asked, resumed only with
  the settings it was started with (clip_helpers.checkpoints);
- under torchrun, several processes train one run with DistributedDataParallel, the loss on the features
  gathered from all of them (clip_helpers.distributed), rank 0 writing the files (clip_helpers.main_process).
"""
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import batches, distributed
from .batches import dataset_size
from .checkpoints import describe_run, last_checkpoint_message, save_checkpoint
from .device import amp_context, make_scaler
from .evaluation import validation_scores
from .interrupts import sigterm_raises, stopped
from .losses import clip_loss, loss_floor
from .main_process import on_main, run_folder_on_main
from .optim import make_optimizer, make_scheduler
from .seeds import epoch_seed, restore_rng_states, seed_everything
from .settings import check_captions
from .text import fill
from .zeroshot import build_classifier

LOGIT_SCALE_MAX = 100  # the paper clips logit_scale (the multiplier) so logits are at most 100x the cosine


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
    int8_eval: bool = False  # validate with an int8 copy of a ViT image tower (CPU only; faster, not exact)
    progress: bool = True

    def __post_init__(self):
        problems = config_problems(self)
        if problems:
            raise ValueError(f"TrainConfig: {'; '.join(problems)}.")


def positive_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def config_problems(config) -> list[str]:
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


# ---------------------------------------------------------------- one step

def texts_for(labels, class_names: list[str], templates: list[str], generator: torch.Generator) -> list[str]:
    """One caption per image, its template drawn at random so the model does not learn one phrasing."""
    picks = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [fill(templates[pick], class_names[int(label)]) for label, pick in zip(labels, picks)]


def train_step(model, images: torch.Tensor, labels: torch.Tensor, texts: list[str], optimizer, scaler,
               grad_clip: float = 1.0, amp: str | None = "auto") -> float:
    """One optimiser step on a batch; returns the loss as a float. Raises FloatingPointError before a NaN/inf update.

    `model`: a CLIP model, or distributed.wrap_model's (DDP) on several processes, where the batch is this
    process's share and the loss is that of the global batch (distributed.distributed_clip_loss).
    """
    clip_model = distributed.unwrap(model)
    device = clip_model.positional_embedding.device
    optimizer.zero_grad(set_to_none=True)  # freeing the gradients is cheaper than writing zeros into them
    with amp_context(device, amp):
        image_features, text_features, logit_scale = distributed.clip_features(
            model, images.to(device, non_blocking=True), texts)
    # On several processes: the loss of the global batch, every process's features gathered (with gradients).
    # Every process computes it from the same gathered features, so a NaN stops them all at the same step.
    loss_of = distributed.distributed_clip_loss if distributed.world_size() > 1 else clip_loss
    loss = loss_of(image_features.float(), text_features.float(), logit_scale, labels.to(device))
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss is {value}")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    torch.nn.utils.clip_grad_norm_(clip_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        clip_model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))  # the parameter is the log
    return value


# ---------------------------------------------------------------- the loop

def reseed_sampler(loader, seed: int, epoch: int) -> None:
    """Reseed a shuffling DataLoader built with a generator (see batches.train_loader_for) for this epoch, or set the
    epoch of a distributed one (batches.shard). A loader without either draws its order from torch's
    global RNG, which a resume restores too.
    """
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(epoch_seed(seed, epoch))


def fine_tune(model, train_loader, val_loader, config: "TrainConfig", extra_scores=None) -> pd.DataFrame:
    """Train `model` in place on batches of (images, labels); returns the history, one row per epoch.

    Columns: epoch, step, train_loss, train_loss_floor (the least train_loss its batches' same-class images
    allow), val_loss, val_loss_floor (the same for the validation batches: 0 for batches.val_loader_for's),
    val_top1 (zero-shot %), val_inbatch_acc (the report's metric, %), val_inbatch_max (its ceiling on these
    batches, %), lr (of the epoch's last step), seconds (wall time of the epoch, evaluation
    included), then the columns extra_scores(model) returns after each epoch (e.g. held-out pairs' top-1).
    With config.run_dir, a checkpoint is written after every epoch (see clip_helpers.checkpoints);
    config.resume=True continues from it and returns the same history an uninterrupted run would have.

    Under torchrun (several processes) it trains with DistributedDataParallel: train_loader's batch_size
    is the global batch, each process reads its share (batches.shard); every process validates on the
    whole val_loader (the same weights give the same scores, so no gathering) and returns the same history;
    the main process (rank 0) alone writes the run folder, every process resumes from its checkpoint.

    Before any work it refuses loaders that cannot train (batches.check_loaders) and captions longer than the
    model's context (settings.check_captions). SIGTERM (`timeout`, a scheduler) stops it as Ctrl-C does: it
    raises interrupts.Terminated, a KeyboardInterrupt, whose message says where the last checkpoint is.
    """
    processes = distributed.processes_for(model)
    train_loader = batches.shard(train_loader, processes, config.seed)
    batches.check_loaders(model, train_loader, val_loader, processes.world_size)
    check_captions(config.class_names, [*config.templates, *(config.eval_templates or [])], model.context_length)
    with sigterm_raises():
        return pd.DataFrame(trained_history(model, train_loader, val_loader, config, processes, extra_scores))


def trained_history(model, train_loader, val_loader, config, processes, extra_scores=None) -> list[dict]:
    """fine_tune's history rows, once its loaders and captions are checked (and train_loader is this process's)."""
    steps_per_epoch = len(train_loader)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.num_epochs * steps_per_epoch, config.warmup_fraction)
    scaler = make_scaler(model.positional_embedding.device, config.amp)
    parts = (model, optimizer, scheduler, scaler)
    if not config.run_dir:
        seed_everything(config.seed)
        return run_epochs(parts, processes, train_loader, val_loader, config, [], None, extra_scores)
    batch_size = getattr(train_loader, "batch_size", None)
    record = describe_run(config, batch_size=batch_size and batch_size * processes.world_size,
                          steps_per_epoch=steps_per_epoch, train_images=dataset_size(train_loader),
                          val_images=dataset_size(val_loader))
    with run_folder_on_main(processes, config.run_dir, record, model, config.resume, config.overwrite) as state:
        history = []
        if state is None:
            seed_everything(config.seed)
        else:
            restore(parts, state)  # on every process; the RNG states are rank 0's (see the README)
            history = state["history"]
        try:
            return run_epochs(parts, processes, train_loader, val_loader, config, history, record, extra_scores)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (interrupts.Terminated): the same message
            raise type(interrupt)(interrupted_message(config.run_dir, processes, interrupt)) from None


def restore(parts, state):
    model, optimizer, scheduler, scaler = parts
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])


def saved_message(run_dir, processes):
    """Where the last good checkpoint is; asked of the main process only, since finding it may repair model.pt."""
    return last_checkpoint_message(run_dir) if processes.is_main else "The main process (rank 0) says which epoch was saved."


def interrupted_message(run_dir, processes=distributed.SINGLE, interrupt=None):
    resume = " Continue it with the same settings and resume=True." if (Path(run_dir) / "checkpoint.pt").is_file() else ""
    return f"{stopped(interrupt)} {saved_message(run_dir, processes)}{resume}"


def run_epochs(parts, processes, train_loader, val_loader, config, history, record, extra_scores=None):
    """Train the epochs after those in `history`, saving each one when `record` (the run's configuration) is given."""
    model, optimizer, scheduler, scaler = parts
    trainer = distributed.wrap_model(model, processes) if processes.world_size > 1 else model
    for epoch in range(len(history) + 1, config.num_epochs + 1):
        start = time.perf_counter()
        train_loss, train_loss_floor, lr = train_epoch(parts, trainer, processes, train_loader, config, epoch)
        model.eval()
        classifier = build_classifier(model, config.class_names, config.eval_templates or config.templates)
        history = history + [{"epoch": epoch, "step": epoch * len(train_loader), "train_loss": train_loss,
                              "train_loss_floor": train_loss_floor,
                              **validation_scores(model, val_loader, classifier, config.amp, config.int8_eval),
                              "lr": lr, **(extra_scores(model) if extra_scores else {}),
                              "seconds": time.perf_counter() - start}]
        if record is not None:
            on_main(processes, save_epoch, parts, epoch, history, config, record)
    return history


def train_epoch(parts, trainer, processes, train_loader, config, epoch):
    """(mean training loss, its floor, lr of the last step) of one epoch; `trainer` is the model, or its DDP wrapper.

    The floor is the mean over the epoch's batches of losses.loss_floor(batch labels): shuffled training batches
    hold several images of a class, whose targets the multi-positive loss shares, so it cannot reach 0.
    """
    _, optimizer, scheduler, scaler = parts
    reseed_sampler(train_loader, config.seed, epoch)
    text_generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch) + 500_000_000)
    trainer.train()
    losses, floors = [], []
    # tqdm.auto given the loader itself would call iter() on it twice (its asyncio variant does it
    # eagerly), starting DataLoader workers twice; a bar updated by hand does not.
    bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{config.num_epochs}", leave=False,
               disable=not (config.progress and processes.is_main))
    for images, labels in train_loader:
        # The templates are drawn for the whole global batch, as one process draws them, then cut to our share.
        batch_labels = distributed.all_labels(labels, processes)
        texts = texts_for(batch_labels, config.class_names, config.templates, text_generator)
        texts = distributed.own_part(texts, processes)
        lr = optimizer.param_groups[0]["lr"]
        try:
            loss = train_step(trainer, images, labels, texts, optimizer, scaler, config.grad_clip, config.amp)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"Stopped: {error} at epoch {epoch}, step {len(losses) + 1} (lr {lr:.3g}). "
                f"{saved_message(config.run_dir, processes)} Try a lower lr or amp=None (fp32).") from None
        scheduler.step()
        losses.append(loss)
        floors.append(loss_floor(batch_labels))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return float(np.mean(losses)), float(np.mean(floors)), lr


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
