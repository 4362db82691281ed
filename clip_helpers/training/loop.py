"""The fine-tuning loop, done the way the report's loop should have been.

What it changes from the report's listing (section 4.3), and why, is listed once: clip_helpers.replication.report.REPORT_BUGS.
Besides those:
- warmup then cosine decay; gradient clipping; logit_scale clamped to at most 100 as in the paper;
- each distinct caption is encoded once, and only up to its end token (text.encode_texts);
- a stop with a clear message when the loss turns NaN/inf;
- a run folder belongs to one run: locked while it trains, never overwritten unless asked, resumed only with
  the settings it was started with (clip_helpers.training.checkpoints);
- under torchrun, several processes train one run with DistributedDataParallel, the loss on the features
  gathered from all of them, rank 0 writing the files (clip_helpers.training.distributed); whether there is one
  process or several is asked once, at the top of fine_tune (clip_helpers.training.processes).

The step is clip_helpers.training.step, the configuration clip_helpers.training.config.
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..device import make_scaler
from ..losses import loss_floor
from ..siglip import SigmoidLoss, use_siglip_temperature
from ..zeroshot import build_classifier
from .accumulation import in_chunks
from .batches import check_loaders, dataset_size
from .checkpoints import describe_run, last_checkpoint_message, save_checkpoint
from .config import RunFolder, TrainConfig
from .evaluation import validation_scores
from .interrupts import sigterm_raises, stopped
from .optim import make_optimizer, make_scheduler
from .processes import OneProcess, processes_for
from .seeds import epoch_seed, restore_rng_states, seed_everything
from .settings import SettingsError, accumulation_problem, check_captions
from .state import TrainingState
from .step import LOGIT_SCALE_MAX, texts_for, train_step

# fine_tune and what it is given and calls, so that `loop` serves as the whole loop's namespace
__all__ = ["fine_tune", "reseed_sampler", "interrupted_message", "TrainConfig", "RunFolder", "train_step",
           "texts_for", "LOGIT_SCALE_MAX"]


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


def fine_tune(model, train_loader, val_loader, config: TrainConfig, run_folder: RunFolder | None = None,
              extra_scores=None) -> pd.DataFrame:
    """Train `model` in place on batches of (images, labels); returns the history, one row per epoch.

    Columns: epoch, step, train_loss, train_loss_floor (the least train_loss its batches' same-class images
    allow; NaN under SigLIP's loss, which it does not bound), val_loss (the loss the run trains with),
    val_loss_floor (the same for the validation batches: 0 for batches.val_loader_for's; NaN under SigLIP's),
    val_top1 (zero-shot %), val_inbatch_acc (the report's metric, %), val_inbatch_max (its ceiling on these
    batches, %), lr (of the epoch's last step), seconds (wall time of the epoch, evaluation
    included), then the columns extra_scores(model) returns after each epoch (e.g. held-out pairs' top-1).
    With a run_folder, a checkpoint is written after every epoch (see clip_helpers.training.checkpoints);
    run_folder.resume=True continues from it and returns the same history an uninterrupted run would have.

    Under torchrun (several processes) it trains with DistributedDataParallel: train_loader's batch_size
    is the global batch, each process reads its share (batches.shard); every process validates on the
    whole val_loader (the same weights give the same scores, so no gathering) and returns the same history;
    the main process (rank 0) alone writes the run folder, every process resumes from its checkpoint.
    One process or several is decided here, once (processes.processes_for); one process imports nothing
    distributed.

    config.accum_steps K > 1: each step's batch is encoded in K chunks (GradCache, training.accumulation), for the
    memory of one chunk and the update of the whole batch; under torchrun, N processes x K chunks, the loss over
    the features of all N x K. config.loss "siglip": SigLIP's sigmoid loss, its bias trained and checkpointed
    with the model and the temperature started at 10; the validation loss is then SigLIP's too, with the learned
    bias (comparable with train_loss, not with a CLIP-loss run's val_loss).

    Before any work it refuses loaders that cannot train (batches.check_loaders) and captions longer than the
    model's context (settings.check_captions). SIGTERM (`timeout`, a scheduler) stops it as Ctrl-C does: it
    raises interrupts.Terminated, a KeyboardInterrupt, whose message says where the last checkpoint is.
    """
    if config.class_names is None:
        raise ValueError("TrainConfig.class_names is None: give the class names (fine_tune_on fills them in).")
    processes = processes_for(model)
    train_loader = processes.shard(train_loader, config.seed)
    check_loaders(model, train_loader, val_loader, processes.world_size)
    check_accumulation(config, train_loader, processes.world_size)
    check_captions(config.class_names, [*config.templates, *(config.eval_templates or [])], model.context_length)
    with sigterm_raises():
        return pd.DataFrame(trained_history(model, train_loader, val_loader, config, run_folder, processes,
                                            extra_scores))


def check_accumulation(config, train_loader, world_size: int) -> None:
    """Refuse accum_steps that do not cut this process's batches into equal chunks (settings.accumulation_problem)."""
    local = getattr(train_loader, "batch_size", None)
    problem = local and accumulation_problem(config.accum_steps, local * world_size, world_size)
    if problem:
        raise SettingsError(f"TrainConfig: {problem}.")


def training_state(model, config, steps_per_epoch) -> TrainingState:
    """A new run's state. SigLIP's loss brings a learnable bias (trained and saved with the model) and starts
    the model's temperature where SigLIP starts it (logit_scale 10, bias -10); a resume then loads both."""
    device = model.positional_embedding.device
    loss = SigmoidLoss().to(device) if config.loss == "siglip" else None
    if loss is not None:
        use_siglip_temperature(model)
    optimizer = make_optimizer(model, config, *([loss] if loss is not None else []))
    return TrainingState(model, optimizer,
                         make_scheduler(optimizer, config.num_epochs * steps_per_epoch, config.warmup_fraction),
                         make_scaler(device, config.amp), loss)


def trained_history(model, train_loader, val_loader, config, run_folder, processes, extra_scores=None) -> list[dict]:
    """fine_tune's history rows, once its loaders and captions are checked (and train_loader is this process's)."""
    state = training_state(model, config, len(train_loader))
    if run_folder is None:
        seed_everything(config.seed)
        return run_epochs(state, processes, train_loader, val_loader, config, [], None, extra_scores)
    batch_size = getattr(train_loader, "batch_size", None)
    record = describe_run(config, **(run_folder.run_settings or {}),
                          batch_size=batch_size and batch_size * processes.world_size,
                          steps_per_epoch=len(train_loader), train_images=dataset_size(train_loader),
                          val_images=dataset_size(val_loader))
    run_dir = run_folder.run_dir
    with processes.run_folder(run_dir, record, model, run_folder.resume, run_folder.overwrite) as saved:
        history = []
        if saved is None:
            seed_everything(config.seed)
        else:
            state.load_state_dict(saved)  # on every process; the RNG states are rank 0's (see the README)
            restore_rng_states(saved["rng"])
            history = saved["history"]
        try:
            return run_epochs(state, processes, train_loader, val_loader, config, history, (run_dir, record),
                              extra_scores)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (interrupts.Terminated): the same message
            raise type(interrupt)(interrupted_message(run_dir, processes, interrupt)) from None


def saved_message(run_dir, processes):
    """Where the last good checkpoint is; asked of the main process only, since finding it may repair model.pt."""
    return last_checkpoint_message(run_dir) if processes.is_main else "The main process (rank 0) says which epoch was saved."


def interrupted_message(run_dir, processes=OneProcess(), interrupt=None):
    resume = " Continue it with the same settings and resume=True." if (Path(run_dir) / "checkpoint.pt").is_file() else ""
    return f"{stopped(interrupt)} {saved_message(run_dir, processes)}{resume}"


def run_epochs(state, processes, train_loader, val_loader, config, history, saving, extra_scores=None):
    """Train the epochs after those in `history`, saving each one when `saving` (run_dir, the run's record) is given."""
    model = state.model
    forward = processes.forward_for(model)  # None in one process; the DDP wrapper on several
    run_dir = saving[0] if saving else None
    for epoch in range(len(history) + 1, config.num_epochs + 1):
        start = time.perf_counter()
        train_loss, train_loss_floor, lr = train_epoch(state, forward, processes, train_loader, config, epoch, run_dir)
        scores = validated(state, processes, val_loader, config, extra_scores, epoch, run_dir)
        history = history + [{"epoch": epoch, "step": epoch * len(train_loader), "train_loss": train_loss,
                              "train_loss_floor": train_loss_floor, **scores, "lr": lr,
                              "seconds": time.perf_counter() - start}]
        if saving:
            processes.on_main(save_epoch, state, epoch, history, *saving)
    return history


def validated(state, processes, val_loader, config, extra_scores, epoch, run_dir):
    """The epoch's validation scores; NaN weights (finite losses can hide them) stop the run here, before the
    epoch is saved, with where the last good checkpoint is."""
    model = state.model.eval()
    try:
        classifier = build_classifier(model, config.class_names, config.eval_templates or config.templates)
        return {**validation_scores(model, val_loader, classifier, config.amp, config.int8_eval, state.loss),
                **(extra_scores(model) if extra_scores else {})}
    except FloatingPointError as error:  # NonFiniteError from the scores: the model's features are NaN/inf
        raise FloatingPointError(f"Stopped: epoch {epoch} was not saved: validating it, {error} "
                                 f"{saved_message(run_dir, processes)} "
                                 f"Try a lower lr or amp=None (fp32).") from None


def train_epoch(state, forward, processes, train_loader, config, epoch, run_dir=None):
    """(mean training loss, its floor, lr of the last step) of one epoch; `forward`: see step.train_step.

    The floor is the mean over the epoch's batches of losses.loss_floor(batch labels): shuffled training batches
    hold several images of a class, whose targets the multi-positive loss shares, so it cannot reach 0. That
    bound is the softmax loss's; the sigmoid loss (same-class pairs all positives, each its own binary decision)
    is not bounded by it, so its floor is recorded as missing (NaN), not as a bound of 0.
    config.accum_steps > 1 computes each step in chunks (accumulation.in_chunks): the same update, less memory.
    """
    reseed_sampler(train_loader, config.seed, epoch)
    text_generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch) + 500_000_000)
    state.model.train()
    losses, floors = [], []
    loss_of = state.loss if state.loss is not None else processes.loss  # SigmoidLoss gathers under torchrun itself
    backward = in_chunks(config.accum_steps) if config.accum_steps > 1 else None
    # tqdm.auto given the loader itself would call iter() on it twice (its asyncio variant does it
    # eagerly), starting DataLoader workers twice; a bar updated by hand does not.
    bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{config.num_epochs}", leave=False,
               disable=not (config.progress and processes.is_main))
    for images, labels in train_loader:
        # The templates are drawn for the whole global batch, as one process draws them, then cut to our share.
        batch_labels = processes.batch_labels(labels)
        texts = processes.own_part(texts_for(batch_labels, config.class_names, config.templates, text_generator))
        lr = state.optimizer.param_groups[0]["lr"]
        try:
            loss = train_step(state.model, images, labels, texts, state.optimizer, state.scaler, config.grad_clip,
                              config.amp, forward=forward, loss=loss_of, backward=backward)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"Stopped: {error} at epoch {epoch}, step {len(losses) + 1} (lr {lr:.3g}). "
                f"{saved_message(run_dir, processes)} Try a lower lr or amp=None (fp32).") from None
        state.scheduler.step()
        losses.append(loss)
        floors.append(float("nan") if state.loss is not None else loss_floor(batch_labels))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    return float(np.mean(losses)), float(np.mean(floors)), lr


def save_epoch(state, epoch, history, run_dir, record):
    """Save the epoch, or stop with where the last good checkpoint is (a NaN state, a full disk)."""
    try:
        save_checkpoint(run_dir, epoch, state, history, record)
    except FloatingPointError as error:
        raise FloatingPointError(f"Stopped: {error}. {last_checkpoint_message(run_dir)} "
                                 f"Try a lower lr or amp=None (fp32).") from None
    except OSError as error:
        raise OSError(f"Could not save epoch {epoch} in {run_dir} ({error}). "
                      f"{last_checkpoint_message(run_dir)}") from error
