"""Training settings that cannot work are refused before any work, and a stop from outside says how to resume.

A last batch of one image, a batch size of one, a bad command-line number, a caption longer than the model's
context: each used to fail only when first used (after an epoch, or after reproduce's slow steps). SIGTERM
(`timeout`, schedulers) used to end a run without a word.
"""
import copy
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.training import batches, finetune, recipes, loop as train
from clip_helpers.replication import reproduce
from clip_helpers.models import build_random_clip
from clip_helpers.training.config import FineTuneData, RunFolder, TrainConfig
from clip_helpers.training.loop import fine_tune

CLASS_NAMES = ["red circle", "blue square", "green star", "yellow heart"]
LONG_NAME = "an extraordinarily long and winding class name of many words"  # > 16 tokens in "a photo of a {}."


def images_of(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.arange(n) % len(CLASS_NAMES))


def config_for(**overrides):
    return split_settings({**dict(class_names=CLASS_NAMES, templates=["a photo of a {}."], num_epochs=1, lr=1e-3,
                                  progress=False), **overrides})

RUN_FOLDER_FIELDS = ("run_dir", "resume", "overwrite", "run_settings")


def split_settings(settings):
    """(TrainConfig, RunFolder or None) of one dict of both's fields."""
    run = {key: settings.pop(key) for key in RUN_FOLDER_FIELDS if key in settings}
    return TrainConfig(**settings), RunFolder(**run) if run.get("run_dir") else None



@pytest.fixture
def no_training_step(monkeypatch):
    """Any training step fails the test: the refusal must come before the first one."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("a training step ran before the settings were checked")
    monkeypatch.setattr(train, "train_step", must_not_run)


# ---------------------------------------------------------------- batches of one image

@pytest.mark.parametrize("size, batch_size", [(5, 4), (33, 16), (9, 2), (8, 4), (3, 16)])
def test_train_loader_for_never_yields_a_batch_of_one_image(size, batch_size):
    loader = batches.train_loader_for(images_of(size), batch_size)
    counts = [len(labels) for _, labels in loader]
    # Only a single image left over is dropped: every other image is still read each epoch.
    expected = [batch_size] * (size // batch_size) + ([size % batch_size] if size % batch_size > 1 else [])
    assert counts == expected
    assert batches.smallest_batch(loader) == min(counts)


def test_the_mini_clip_trains_an_epoch_whose_last_batch_would_hold_one_image(mini):
    # 5 images in batches of 4 used to end with a batch of 1: BatchNorm's "Expected more than 1 value per channel".
    history = fine_tune(copy.deepcopy(mini), batches.train_loader_for(images_of(5), 4),
                        DataLoader(images_of(4, seed=1), batch_size=4), *config_for())
    assert history["step"].tolist() == [1]


@pytest.mark.parametrize("architecture", ["mini", "mini-vit"])
def test_a_loader_with_batches_of_one_image_is_refused_before_the_first_step(architecture, no_training_step):
    model = build_random_clip(architecture)
    val_loader = DataLoader(images_of(4, seed=1), batch_size=4)
    with pytest.raises(ValueError, match="batches hold one image.*batch size of at least 2"):
        fine_tune(model, DataLoader(images_of(8), batch_size=1), val_loader, *config_for())
    with pytest.raises(ValueError, match=r"last batch holds one image \(5 images in batches of 4\).*drop_last=True"):
        fine_tune(model, DataLoader(images_of(5), batch_size=4, shuffle=True), val_loader, *config_for())


@pytest.mark.parametrize("argv", [["--batch-size", "1"], ["--train-size", "1"]])
def test_the_command_line_refuses_a_batch_of_one_image_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        finetune.parse_args(["--model", "mini", *argv])
    assert stop.value.code == 2 and f"argument {argv[0]}: must be >= 2, not 1" in capsys.readouterr().err


# ---------------------------------------------------------------- every argument and caption, before any work

@pytest.mark.parametrize("argv, message", [(["--epochs", "0"], "--epochs: must be >= 1"),
                                           (["--batch-size", "1"], "--batch-size: must be >= 2"),
                                           (["--train-size", "0"], "--train-size: must be >= 2"),
                                           (["--val-size", "-3"], "--val-size: must be >= 1"),
                                           (["--probe-train-size", "5"], "--probe-train-size: must be >= 20"),
                                           (["--epochs", "two"], "'two' is not a whole number")])
def test_reproduce_refuses_a_bad_argument_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("reproduce started work before checking its arguments")
    for step in ("pretrained_or_exit", "datasets_or_exit", "fig12_similarity", "fine_tune_on"):
        monkeypatch.setattr(reproduce, step, must_not_run)
    monkeypatch.setattr(reproduce.rehearsal, "build", must_not_run)
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--rehearsal", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def fine_tune_on_settings(settings):
    """fine_tune_on's (FineTuneData, TrainConfig, RunFolder) of one dict of their fields."""
    data = {key: settings.pop(key) for key in list(settings) if key in FineTuneData.__dataclass_fields__}
    run = {key: settings.pop(key) for key in RUN_FOLDER_FIELDS if key in settings}
    return FineTuneData(**data), TrainConfig(**settings), RunFolder(run_dir=data["data_dir"], **run)


@pytest.mark.parametrize("settings, message", [(dict(num_epochs=0), "num_epochs must be a whole number >= 1"),
                                               (dict(batch_size=1), "batch_size must be >= 2, not 1"),
                                               (dict(workers=-1), "workers must be a whole number >= 0"),
                                               (dict(resume=True, overwrite=True), "resume and overwrite")])
def test_fine_tune_on_refuses_bad_settings_before_loading_anything(settings, message, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("fine_tune_on loaded a model before checking its arguments")
    monkeypatch.setattr(recipes, "load_clip", must_not_run)
    with pytest.raises(ValueError, match=message):
        recipes.fine_tune_on(*fine_tune_on_settings(dict(model_name="mini", source="shapes", data_dir=str(tmp_path),
                                                         device="cpu", **settings)))
    assert not (tmp_path / "runs").exists()


def test_too_long_captions_agrees_with_clip_tokenize_at_the_boundary():
    import clip

    from clip_helpers.training.settings import too_long_captions
    from clip_helpers.text import fill
    names = [" ".join(["cat"] * n) for n in range(8, 16)]  # "a photo of a cat ... cat." is n + 7 tokens
    for context_length in (16, 18):
        expected = []
        for name in names:
            try:
                clip.tokenize(fill("a photo of a {}.", name), context_length=context_length)
            except RuntimeError:  # clip's own "too long for context length"
                expected.append(fill("a photo of a {}.", name))
        assert 0 < len(expected) < len(names)
        assert too_long_captions(names, ["a photo of a {}."], context_length) == expected


@pytest.mark.parametrize("where", ["templates", "eval_templates"])
def test_a_caption_longer_than_the_context_is_refused_before_the_first_step(where, mini, no_training_step):
    # Training captions used to fail at the first step; validation prompts only after the whole first epoch.
    config, _ = config_for(class_names=[*CLASS_NAMES[:3], LONG_NAME], **{"templates": ["{}"], where: ["a photo of a {}."]})
    with pytest.raises(ValueError, match=rf"1 caption\(s\) .* context of 16 tokens .*'a photo of an {LONG_NAME}\.'"):
        fine_tune(copy.deepcopy(mini), batches.train_loader_for(images_of(8), 4),
                  DataLoader(images_of(4, seed=1), batch_size=4), config)


def test_the_command_line_refuses_a_folder_name_too_long_for_the_model_before_training(tmp_path, no_training_step):
    photos = tmp_path / "photos"
    for folder in ("cat", LONG_NAME.replace(" ", "_")):
        (photos / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(photos / folder / f"{i}.png")
    with pytest.raises(SystemExit, match=r"finetune: error: .*longer than the model's context of 16 tokens.*"
                                         r"Shorten those class names"):
        finetune.main(["--model", "mini", "--dataset", str(photos), "--epochs", "1", "--batch-size", "2",
                       "--train-size", "4", "--val-size", "2", "--data-dir", str(tmp_path), "--device", "cpu",
                       "--no-progress"])
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_raises_a_keyboard_interrupt_inside_the_block_only():
    from clip_helpers.training.interrupts import Terminated, exit_status, sigterm_raises
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt) as stop:
        with sigterm_raises():
            with sigterm_raises():  # an inner block leaves the outer one's handler alone
                pass
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode: the sleep is cut short
    assert isinstance(stop.value, Terminated) and exit_status(stop.value) == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the default is back: a later SIGTERM ends as usual


def test_sigterm_mid_run_names_the_last_checkpoint(mini, tmp_path):
    from clip_helpers.training.interrupts import Terminated  # (on a kit without it, the SIGTERM below would end pytest)

    def terminated_in_epoch_2(model):
        if (tmp_path / "run" / "checkpoint.pt").is_file():
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with pytest.raises(Terminated, match=rf"Stopped by SIGTERM\. The last good checkpoint is "
                                         rf"{tmp_path / 'run' / 'checkpoint.pt'} \(epoch 1\).*resume=True"):
        fine_tune(copy.deepcopy(mini), batches.train_loader_for(images_of(4), 4),  # one step an epoch
                  DataLoader(images_of(4, seed=1), batch_size=4),
                  *config_for(num_epochs=3, run_dir=str(tmp_path / "run")), extra_scores=terminated_in_epoch_2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_the_command_line_sent_sigterm_mid_epoch_says_how_to_resume(tmp_path):
    checkpoint = tmp_path / "runs" / "term" / "checkpoint.pt"
    argv = ["--model", "mini", "--dataset", "shapes", "--epochs", "100000", "--batch-size", "8", "--train-size", "64",
            "--val-size", "8", "--run", "term", "--data-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "clip_helpers.training.finetune", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.is_file(), process.communicate(timeout=60)
        process.send_signal(signal.SIGTERM)  # epoch 1 is saved: we are in epoch 2's steps
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143 and "Traceback" not in err, err
    assert "Stopped by SIGTERM." in err and f"The last good checkpoint is {checkpoint} (epoch" in err
    command = shlex.split(err.split("Resume with:")[1].strip().splitlines()[0])
    assert command[:3] == [sys.executable, "-m", "clip_helpers.training.finetune"] and command[-1] == "--resume"
