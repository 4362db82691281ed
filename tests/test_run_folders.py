"""A run folder holds one run, complete and checked: its settings, its checkpoints, resuming and overwriting."""
import copy
import json
import os
import shlex
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.training import checkpoints, seeds, loop as train
from clip_helpers.models import load_clip
from clip_helpers.training.batches import train_loader_for
from clip_helpers.training.config import RunFolder, TrainConfig
from clip_helpers.training.loop import fine_tune

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart"]
ROOT = Path(__file__).resolve().parent.parent

RUN_FOLDER_FIELDS = ("run_dir", "resume", "overwrite", "run_settings")


def split_settings(settings):
    """(TrainConfig, RunFolder or None) of one dict of both's fields."""
    run = {key: settings.pop(key) for key in RUN_FOLDER_FIELDS if key in settings}
    return TrainConfig(**settings), RunFolder(**run) if run.get("run_dir") else None


def config_for(run_dir, **overrides):
    settings = dict(class_names=CLASS_NAMES, templates=["a {}."], num_epochs=1, lr=1e-3, run_dir=str(run_dir),
                    progress=False)
    return split_settings({**settings, **overrides})


def run(model, tiny_data, config_and_folder, batch_size=8):
    train_set, val_set = tiny_data
    config, folder = config_and_folder
    return fine_tune(model, train_loader_for(train_set, batch_size, seed=config.seed), DataLoader(val_set, batch_size=8), config,
                     folder)


@pytest.fixture
def steps(monkeypatch):
    """Counts training steps, to show a refusal came before any work."""
    counted = {"n": 0}
    original = train.train_step

    def counting(*args, **kwargs):
        counted["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", counting)
    return counted


# ---------------------------------------------------------------- 5. resume with changed settings

@pytest.mark.slow
def test_resume_with_other_settings_is_refused_naming_each_difference(mini, tiny_data, tmp_path):
    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2, lr=1e-3))
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["lr"] == 1e-3 and recorded["num_epochs"] == 2 and recorded["train_images"] == 24
    assert recorded["templates"] == ["a {}."] and recorded["batch_size"] == 8 and recorded["seed"] == 0

    # 20 images in batches of 8 are still 3 steps an epoch: only the record of the data tells them apart.
    other_data = (TensorDataset(*tiny_data[0][:20]), tiny_data[1])
    with pytest.raises(checkpoints.RunFolderError, match=r"lr: 0\.001 -> 0\.5; .*train_images: 24 -> 20"):
        run(copy.deepcopy(mini), other_data, config_for(tmp_path, num_epochs=2, lr=0.5, resume=True))
    with pytest.raises(checkpoints.RunFolderError, match=r"templates: \['a \{\}\.'\] -> \['a photo of a \{\}\.'\]"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2, templates=["a photo of a {}."], resume=True))
    assert json.loads((tmp_path / "run.json").read_text()) == recorded  # refused resumes leave the record alone


# ---------------------------------------------------------------- 6. only finite states are saved or called good

def poison_weights_in_epoch(epoch, monkeypatch):
    """The step of `epoch` leaves a NaN in the weights (one step per epoch): a finite loss, then broken weights."""
    original, calls = train.train_step, {"n": 0}

    def poisoning(model, *args, **kwargs):
        loss = original(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == epoch:
            with torch.no_grad():
                model.visual.conv1.weight.view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(train, "train_step", poisoning)


def poison_validation_in_epoch(epoch, monkeypatch):
    """Validation of `epoch` reports a NaN loss while the weights stay finite."""
    original, calls = train.validation_scores, {"n": 0}

    def poisoning(*args, **kwargs):
        scores = original(*args, **kwargs)
        calls["n"] += 1
        return {**scores, "val_loss": float("nan")} if calls["n"] == epoch else scores

    monkeypatch.setattr(train, "validation_scores", poisoning)


@pytest.mark.slow
@pytest.mark.parametrize("poison", [poison_weights_in_epoch, poison_validation_in_epoch])
def test_a_nan_state_is_never_saved_and_the_message_names_the_last_good_checkpoint(poison, mini, tiny_data,
                                                                                      tmp_path, monkeypatch):
    poison(2, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"epoch 2 was not saved.*last good checkpoint .*\(epoch 1\)"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=3), batch_size=24)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(pd.read_csv(tmp_path / "history.csv")) == 1
    assert np.isfinite(pd.read_csv(tmp_path / "history.csv").to_numpy(float)).all()
    model, _ = load_clip(str(tmp_path / "model.pt"), device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- 8. a new run never overwrites a finished one

@pytest.mark.slow
def test_a_new_run_into_a_finished_run_is_refused_unless_overwrite(mini, tiny_data, tmp_path, steps):
    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2))
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoint.pt", "model.pt", "history.csv", "run.json")}
    steps["n"] = 0
    with pytest.raises(checkpoints.RunFolderError, match=r"already holds a run .*resume=True.*overwrite=True"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=1))
    assert steps["n"] == 0
    assert {name: (tmp_path / name).read_bytes() for name in before} == before

    replaced = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=1, overwrite=True))
    assert len(replaced) == 1 and len(pd.read_csv(tmp_path / "history.csv")) == 1
    assert json.loads((tmp_path / "run.json").read_text())["num_epochs"] == 1


def test_resume_of_a_run_that_does_not_exist_says_so(mini, tiny_data, tmp_path, steps):
    with pytest.raises(checkpoints.RunFolderError, match="Nothing to resume: there is no run folder"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "typo", resume=True))
    assert not (tmp_path / "typo").exists() and steps["n"] == 0
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "run.json").write_text("{}")
    with pytest.raises(checkpoints.RunFolderError, match="stopped before its first epoch finished"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "started", resume=True))
    assert steps["n"] == 0


# ---------------------------------------------------------------- 9. two runs never share a folder

@pytest.mark.slow
def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_other_process(mini, tiny_data, tmp_path, steps):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom clip_helpers.training.checkpoints import lock\n"
         "held = lock(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(checkpoints.RunFolderError, match=rf"Another run \(process {holder.pid}\) is training in"):
            run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))
        assert steps["n"] == 0 and time.perf_counter() - start < 5
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its process although .lock still names it: a dead run's lock is never stale.
    assert (tmp_path / ".lock").read_text() == str(holder.pid)
    assert len(run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))) == 1


# ---------------------------------------------------------------- 10. no code runs from a checkpoint

class RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_crafted_checkpoint_is_refused_not_run(mini, tiny_data, tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "run").mkdir()
    torch.save({"epoch": 1, "model": RunsACommand(f"touch {shlex.quote(str(marker))}")}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(checkpoints.RunFolderError, match=r"was not loaded \(nothing in it was run\)"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "run", resume=True))
    assert not marker.exists()


@pytest.mark.slow
def test_the_kits_own_checkpoint_loads_with_weights_only_and_restores_every_rng(mini, tiny_data, tmp_path):
    import random

    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # raises today: numpy's state is pickled
    seeds.restore_rng_states(state["rng"])
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    seeds.restore_rng_states(state["rng"])
    assert torch.equal(torch.rand(3), drawn[0]) and np.array_equal(np.random.rand(3), drawn[1])
    assert random.random() == drawn[2]


# ---------------------------------------------------------------- 11. consistent after a failure at any instant

@pytest.mark.slow
def test_a_save_that_fails_half_way_leaves_the_last_epoch_whole_and_no_temporary_file(mini, tiny_data, tmp_path,
                                                                                        monkeypatch):
    original, calls = torch.save, {"n": 0}

    def disk_fills_on_the_fourth_save(obj, file, *args, **kwargs):
        calls["n"] += 1  # epoch 1: model.pt, checkpoint.pt; epoch 2: model.pt, then checkpoint.pt fails half-written
        if calls["n"] == 4:
            if isinstance(file, (str, os.PathLike)):
                Path(file).write_bytes(b"PK\x03\x04" + bytes(1000))
            else:
                file.write(b"PK\x03\x04" + bytes(1000))
            raise OSError(28, "No space left on device")
        return original(obj, file, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", disk_fills_on_the_fourth_save)
    with pytest.warns(UserWarning, match="did not hold the weights"), \
            pytest.raises(OSError, match=r"Could not save epoch 2 .*No space left.*last good checkpoint .*\(epoch 1\)"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint.pt", "history.csv", "model.pt", "run.json"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["epoch"] == 1 and len(pd.read_csv(tmp_path / "history.csv")) == 1
    for name, tensor in state["model"].items():  # model.pt is epoch 1's again, not the epoch 2 written before
        assert torch.equal(weights[name], tensor), name


@pytest.mark.slow
def test_resume_repairs_a_model_file_left_ahead_by_a_kill_between_the_saves(mini, tiny_data, tmp_path):
    run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2), batch_size=24)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    # What SIGKILL between the two saves of epoch 3 would leave: model.pt of another epoch, a temporary file.
    other = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in state["model"].items()}
    torch.save(other, tmp_path / "model.pt")
    (tmp_path / ".checkpoint.pt.99999.tmp").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"did not hold the weights of .*epoch 2.*rewritten"):
        history = run(copy.deepcopy(mini), tiny_data, config_for(tmp_path, num_epochs=2, resume=True), batch_size=24)
    assert len(history) == 2 and not (tmp_path / ".checkpoint.pt.99999.tmp").exists()
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(weights[name], tensor) for name, tensor in state["model"].items())


# ---------------------------------------------------------------- 12. fail before the work

def test_a_full_disk_is_found_before_the_first_epoch(mini, tiny_data, tmp_path, monkeypatch, steps):
    weights = sum(t.numel() * t.element_size() for t in mini.state_dict().values())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 7 * weights, 7 * weights))
    with pytest.raises(checkpoints.RunFolderError, match=r"MiB free; saving this run's checkpoints needs about"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))
    assert steps["n"] == 0 and not (tmp_path / "checkpoint.pt").exists()
    # 8x the weights (two saves of model.pt + checkpoint.pt, 1x + 3x) is enough:
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 8 * weights, 8 * weights))
    assert len(run(copy.deepcopy(mini), tiny_data, config_for(tmp_path))) == 1


def test_a_run_folder_that_cannot_be_made_is_found_before_the_first_epoch(mini, tiny_data, tmp_path, steps):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    with pytest.raises(checkpoints.RunFolderError, match="Cannot create the run folder"):
        run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "runs" / "a"))
    assert steps["n"] == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_found_before_the_first_epoch(mini, tiny_data, tmp_path, steps):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("")
    (tmp_path / "run").chmod(0o500)
    try:
        with pytest.raises(checkpoints.RunFolderError, match="Cannot write in the run folder"):
            run(copy.deepcopy(mini), tiny_data, config_for(tmp_path / "run"))
    finally:
        (tmp_path / "run").chmod(0o700)
    assert steps["n"] == 0
