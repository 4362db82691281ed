"""Run folders and checkpoints: one run per folder, locked while it trains, checked before it is resumed.

A run folder (e.g. data/runs/<run>/) holds
    run.json       the configuration that made the run, written when it starts; a resume must match it;
    model.pt       the weights alone, a plain state dict (models.load_clip loads it);
    checkpoint.pt  everything a resume needs. Written after model.pt, it is an epoch's commit point and
                   records model.pt's sha256: a run stopped between the two saves is found and repaired;
    history.csv    one row per epoch;
    .lock          locked (flock; msvcrt on Windows) by the process that trains in the folder, which also writes its pid there.
Every file is written to a temporary file, fsynced and renamed; .pt files are loaded with weights_only=True.
"""
import dataclasses
import json
import math
import os
import pickle
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from . import locks
from ..files import save_atomically, sha256_of, write_text_atomically
from .seeds import rng_states


RUN_FILES = ("checkpoint.pt", "model.pt", "history.csv", "run.json")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (taken, busy, unwritable, another run's); the message says what to do."""


# ---------------------------------------------------------------- files

def load_weights_only(path):
    """torch.load(weights_only=True), refusing with a message a file that is not a kit checkpoint or is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise RunFolderError(
            f"{path} is not a checkpoint this version of the kit wrote, or it is damaged, so it was not loaded (nothing "
            f"in it was run). torch.load(weights_only=True) said: {str(error).splitlines()[0]}. Start a new run "
            f"(overwrite=True, or --overwrite) or restore the file from a backup.") from None


# ---------------------------------------------------------------- checkpoints

def non_finite(model, optimizer, row):
    """What in the model, the optimiser's state or the epoch's metrics is NaN/inf (an empty list: nothing)."""
    found = [name for name, tensor in model.state_dict().items()
             if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    for index, state in optimizer.state_dict()["state"].items():
        found += [f"optimizer state {index}.{key}" for key, value in state.items()
                  if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
    found += [f"{key} = {value}" for key, value in row.items() if bad_metric(key, value)]
    return found


def bad_metric(key, value) -> bool:
    """A NaN/inf metric of the epoch, except a floor recorded as missing (NaN): floors are computed from the batches'
    labels, never from the model, and are NaN where they bound nothing (SigLIP's loss, loop.train_epoch)."""
    missing_floor = key.endswith("_floor") and isinstance(value, float) and math.isnan(value)
    return isinstance(value, float) and not math.isfinite(value) and not missing_floor


def save_checkpoint(run_dir, epoch, state, history, config=None):
    """Save epoch `epoch` of `state` (a state.TrainingState) into `run_dir`: model.pt first, then checkpoint.pt
    (which records model.pt's sha256).

    Refuses (FloatingPointError) a state with a NaN/inf weight or metric: only a good state is ever saved.
    """
    run_dir = Path(run_dir)
    bad = non_finite(state.model, state.optimizer, history[-1])
    if bad:
        raise FloatingPointError(f"after epoch {epoch} these are NaN/inf: {', '.join(bad[:5])}"
                                 f"{' ...' if len(bad) > 5 else ''}; epoch {epoch} was not saved")
    model_sha256 = save_atomically(state.model.state_dict(), run_dir / "model.pt")
    save_atomically({"epoch": epoch, "config": config, "model_sha256": model_sha256, **state.state_dict(),
                     "rng": rng_states(), "history": history}, run_dir / "checkpoint.pt")
    write_text_atomically(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))


def load_checkpoint(run_dir):
    """The full training state, or None when the run has no checkpoint yet. Loaded with weights_only=True."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    return load_weights_only(path)


def repair_model_file(run_dir, state):
    """Make model.pt the checkpoint's weights again if a stop between the two saves left it another epoch's."""
    path = Path(run_dir) / "model.pt"
    if path.is_file() and sha256_of(path) == state.get("model_sha256"):
        return
    save_atomically(state["model"], path)
    write_text_atomically(Path(run_dir) / "history.csv", pd.DataFrame(state["history"]).to_csv(index=False))
    warnings.warn(f"{path} did not hold the weights of {Path(run_dir) / 'checkpoint.pt'} (epoch {state['epoch']}); "
                  f"the run had stopped between the two saves. It was rewritten from the checkpoint.")


def last_checkpoint_message(run_dir):
    """Where the last good checkpoint is (checked finite, model.pt repaired to match it), in a sentence."""
    if run_dir is None:
        return "Nothing was saved (no run folder was given)."
    try:
        state = load_checkpoint(run_dir)
    except ValueError as error:
        return f"The checkpoint in {run_dir} cannot be used: {error}"
    if state is None:
        return f"No epoch finished, so {run_dir} holds no checkpoint."
    weights_ok = all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    metrics_ok = not any(bad_metric(key, value) for key, value in state["history"][-1].items())
    if not (weights_ok and metrics_ok):
        return (f"The checkpoint in {run_dir} (epoch {state['epoch']}) holds NaN/inf values (written by an older "
                f"version of the kit): do not use it; start a new run.")
    repair_model_file(run_dir, state)
    return (f"The last good checkpoint is {Path(run_dir) / 'checkpoint.pt'} (epoch {state['epoch']}); "
            f"its weights alone are in {Path(run_dir) / 'model.pt'}.")


# ---------------------------------------------------------------- the run's configuration

def as_json(value):
    """The value as JSON types (tuples become lists), so that a record compares equal to its reloaded self."""
    return json.loads(json.dumps(value, default=str))


def describe_run(config, **measured):
    """The run's configuration: the dataclass `config`'s fields that change what it computes (not those marked
    {"recorded": False}, such as progress), plus `measured` (sizes, the model's and the dataset's names)."""
    record = {item.name: getattr(config, item.name) for item in dataclasses.fields(config)
              if item.metadata.get("recorded", True)}
    return as_json({**record, **measured})


def differences(saved, current):
    keys = sorted(set(saved) | set(current))
    missing = "(not recorded)"
    return [f"{key}: {saved.get(key, missing)!r} -> {current.get(key, missing)!r}"
            for key in keys if saved.get(key, missing) != current.get(key, missing)]


# Settings added after run.json existed, with the value every run recorded without them trained with: such a
# run resumes with that value (and is refused with another), not refused for the record's age.
ADDED_LATER = {"accum_steps": 1, "loss": "clip"}


def check_same_run(saved, current, run_dir):
    """Refuse to resume with another configuration: the saved schedule, data and weights belong to the old one."""
    changed = differences({**ADDED_LATER, **saved} if saved else {}, current)
    if changed:
        raise RunFolderError(
            f"Cannot resume {run_dir} with other settings; it was started with different ones (old -> new): "
            f"{'; '.join(changed)}. Resume with the run's own settings (see {Path(run_dir) / 'run.json'}), or start "
            f"a new run (another run folder, or overwrite=True / --overwrite to replace this one).")


# ---------------------------------------------------------------- the run folder

def lock(run_dir):
    """An open, locked run_dir/.lock holding our pid (clip_helpers.locks). The system drops the lock when the process
    ends, however it ends, so a lock is never stale: a leftover .lock file with a dead pid in it locks nothing."""
    try:
        return locks.hold(Path(run_dir) / ".lock")
    except locks.Busy as busy:
        raise RunFolderError(f"Another run (process {busy.holder}) is training in {run_dir}: two runs must not share a "
                             f"run folder. Wait for it to finish (or stop it), or choose another run folder.") from None


def unlock(file):
    locks.release(file)


def check_writable(run_dir, needed_bytes):
    """Fail before the first epoch, not after it, on a read-only run folder or a disk without room for the saves."""
    probe = Path(run_dir) / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"Cannot write in the run folder {run_dir} ({error.strerror}): make it writable or choose "
                      f"another run folder (or --data-dir).") from None
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunFolderError(f"The disk of {run_dir} has {free / 2**20:.0f} MiB free; saving this run's checkpoints needs "
                      f"about {needed_bytes / 2**20:.0f} MiB. Free some space or choose another run folder.")


def bytes_needed(model, run_dir):
    """Room for one save beside the previous one: model.pt (1x the weights) and checkpoint.pt (the weights and
    Adam's two moments, 3x), written twice over, less what the files already on disk will give back."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    existing = sum((Path(run_dir) / name).stat().st_size for name in ("checkpoint.pt", "model.pt")
                   if (Path(run_dir) / name).is_file())
    return 2 * 4 * weights - existing


def remove_stale_temporaries(run_dir):
    """A run killed mid-save (SIGKILL: no finally runs) leaves a temporary file: the lock says its writer is gone."""
    for path in Path(run_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def make_run_dir(run_dir):
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"Cannot create the run folder {run_dir} ({error.strerror or error}): choose another run "
                      f"folder (or --data-dir).") from None


def checkpoint_to_resume(run_dir, record):
    """The checked checkpoint of `run_dir`, or an error that says why there is nothing to resume."""
    state = load_checkpoint(run_dir)
    if state is None:
        started = (Path(run_dir) / "run.json").is_file()
        raise RunFolderError(
            f"Nothing to resume in {run_dir}: " + ("the run there stopped before its first epoch finished. "
                                                  if started else "there is no run there. ") +
            "Start it as a new run (without resume" + (", with overwrite=True / --overwrite)." if started else ")."))
    check_same_run(state.get("config"), record, run_dir)
    repair_model_file(run_dir, state)
    return state


def claim_for_a_new_run(run_dir, record, overwrite):
    """Refuse to overwrite a run that finished an epoch unless asked; then clear the old run's files."""
    finished = [name for name in RUN_FILES[:3] if (Path(run_dir) / name).exists()]
    if finished and not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a run ({', '.join(finished)}). A new run would overwrite it: resume it "
            f"(resume=True / --resume), choose another run folder (--run), or replace it (overwrite=True / --overwrite).")
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
    write_text_atomically(Path(run_dir) / "run.json", json.dumps(record, indent=1) + "\n")


@contextmanager
def run_folder(run_dir, record, model, resume=False, overwrite=False):
    """Lock `run_dir` for one run and check it before any work; yields the checkpoint to resume from, or None.

    resume: True continues the run (refused when there is none or `record` differs from its run.json);
    "auto" continues it when it has a checkpoint and starts it otherwise; False starts a new run (refused
    over a run that finished an epoch, unless overwrite=True, which deletes it).
    """
    if resume is True and not Path(run_dir).is_dir():
        raise RunFolderError(f"Nothing to resume: there is no run folder {run_dir}. Check the run name (and "
                             f"data folder), or start it as a new run (without resume).")
    make_run_dir(run_dir)
    held = lock(run_dir)
    try:
        remove_stale_temporaries(run_dir)
        if resume == "auto":
            resume = (Path(run_dir) / "checkpoint.pt").is_file()
        state = checkpoint_to_resume(run_dir, record) if resume else None
        check_writable(run_dir, bytes_needed(model, run_dir))
        if not resume:
            claim_for_a_new_run(run_dir, record, overwrite)
        yield state
    finally:
        unlock(held)
