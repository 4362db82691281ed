import re
import shlex
import subprocess
import sys

import pandas as pd
import torch
import pytest

from clip_helpers.training import finetune, recipes
from clip_helpers.training.config import FineTuneData, TrainConfig
from clip_helpers.data import targets_of


@pytest.mark.slow
def test_cli_fine_tunes_mini_clip_on_shapes_for_one_epoch(tmp_path, capsys):
    history = finetune.main(["--model", "mini", "--dataset", "shapes", "--epochs", "1", "--batch-size", "16",
                             "--train-size", "48", "--val-size", "16", "--run", "cli", "--data-dir", str(tmp_path),
                             "--device", "cpu", "--no-progress"])
    run_dir = tmp_path / "runs" / "cli"
    written = pd.read_csv(run_dir / "history.csv")
    assert list(written.columns) == ["epoch", "step", "train_loss", "train_loss_floor", "val_loss", "val_loss_floor",
                                     "val_top1", "val_inbatch_acc", "val_inbatch_max", "lr", "seconds"]
    assert written["step"].tolist() == [3] and history["train_loss"].tolist() == pytest.approx(written["train_loss"].tolist())
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoint.pt").is_file()
    assert "val_top1" in capsys.readouterr().out


def test_cli_datasets_never_share_an_image(tmp_path):
    train, val, opened = recipes.train_and_val_sets("shapes", None, str(tmp_path), train_size=100, val_size=40)
    class_names = opened.class_names
    assert len(train) == 100 and len(val) == 40 and len(class_names) == 36
    assert set(train.dataset.indices[i] for i in train.indices).isdisjoint(val.dataset.indices[i] for i in val.indices)
    assert len(targets_of(train)) == 100


@pytest.mark.slow
def test_cli_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "clip_helpers.training.finetune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--resume" in result.stdout and "caltech256" in result.stdout


def test_reproduce_fails_fast_without_the_weights(tmp_path, monkeypatch):
    import urllib.error

    import clip.clip

    from clip_helpers.replication import reproduce

    def offline(url, root):
        raise urllib.error.URLError("no network (monkeypatched)")

    def must_not_run(*args, **kwargs):
        raise AssertionError("reproduce went on after the weights failed")

    monkeypatch.setattr(clip.clip, "_download", offline)
    monkeypatch.setattr(reproduce, "cifar10", must_not_run)
    monkeypatch.setattr(reproduce, "fine_tune_on", must_not_run)
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "outputs"), "--device", "cpu"])
    message = str(stop.value)
    assert "ViT-B/32" in message and "openaipublic" in message and str(tmp_path / "weights") in message
    assert not (tmp_path / "outputs").exists()


def test_reproduce_results_table_puts_the_numbers_side_by_side():
    from clip_helpers.replication import reproduce
    history = pd.DataFrame([{"epoch": 1, "step": 10, "train_loss": 2.5, "val_loss": 2.0, "val_top1": 80.0,
                             "val_inbatch_acc": 12.5, "lr": 1e-5, "seconds": 1.0}])
    summary = {"params": 151277313, "input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    similarity = torch.eye(5) * 0.25 + 0.05
    table = reproduce.results_table(summary, 88.8, history, similarity, 5)
    assert "| Zero-shot CIFAR-10 top-1, ViT-B/32, 18-prompt ensemble, whole test set | 88.8% |" in table
    assert "| Model printout: params | 151,277,313 | over 155 million" in table
    assert "| 1 | 2.500 | 2.000 | 80.0 | 12.5 |" in table  # Fig 10's row of epoch 1
    assert "| astronaut | 0.300 | 0.050 |" in table  # Fig 12's first row
    assert "91.3%" in table and "5 / 5" in table and "REHEARSAL" not in table
    rehearsed = reproduce.results_table(summary, 88.8, history, similarity, 5, banner="REHEARSAL, meaningless")
    assert rehearsed.startswith("# clip-kit reproduction of the report's results - REHEARSAL\n\n> **REHEARSAL")
    assert "| result | kit (REHEARSAL: meaningless) | report | paper |" in rehearsed


@pytest.mark.slow
def test_cli_int8_eval_on_a_vit_checkpoint_changes_only_the_evaluation(tmp_path):
    import json

    from clip_helpers.models import build_random_clip
    checkpoint = tmp_path / "mini-vit.pt"
    torch.save(build_random_clip("mini-vit").state_dict(), checkpoint)
    argv = ["--model", str(checkpoint), "--dataset", "shapes", "--epochs", "1", "--batch-size", "16", "--train-size",
            "32", "--val-size", "16", "--data-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    fp32 = finetune.main([*argv, "--run", "fp32"])
    int8 = finetune.main([*argv, "--run", "int8", "--int8-eval"])
    assert json.loads((tmp_path / "runs" / "int8" / "run.json").read_text())["int8_eval"] is True
    assert int8["train_loss"].tolist() == fp32["train_loss"].tolist()  # the same training...
    assert int8["val_loss"].tolist() != fp32["val_loss"].tolist()  # ...validated by the int8 tower...
    assert int8["val_loss"].tolist() == pytest.approx(fp32["val_loss"].tolist(), rel=0.02)  # ...which is close


# ---------------------------------------------------------------- arguments, interrupts, run folders

SHAPES_RUN = ["--model", "mini", "--dataset", "shapes", "--epochs", "2", "--batch-size", "16", "--train-size", "32",
              "--val-size", "16", "--run", "cli", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("argument, value", [("--lr", "0"), ("--lr", "-1e-3"), ("--lr", "nan"), ("--train-size", "-5"),
                                             ("--val-size", "0"), ("--epochs", "0"), ("--batch-size", "0"),
                                             ("--workers", "-1")])
def test_cli_refuses_a_nonsense_number_at_parse_time(argument, value, capsys):
    with pytest.raises(SystemExit) as stop:
        finetune.parse_args(["--model", "mini", f"{argument}={value}"])
    assert stop.value.code == 2 and f"argument {argument}: must be" in capsys.readouterr().err


def test_fine_tune_on_refuses_a_zero_lr_and_a_negative_size_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="lr must be a finite number > 0, not 0"):
        recipes.fine_tune_on(FineTuneData(model_name="mini", source="shapes", train_size=16, val_size=16, data_dir=str(tmp_path),
                                          device="cpu"), TrainConfig(lr=0))
    with pytest.raises(ValueError, match="train_size must be a whole number >= 1"):
        recipes.fine_tune_on(FineTuneData(model_name="mini", source="shapes", train_size=-5, data_dir=str(tmp_path), device="cpu"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_ctrl_c_says_where_the_checkpoint_is_and_the_command_that_resumes(tmp_path, monkeypatch, capsys):
    from clip_helpers.training import loop as train
    original, calls = train.train_step, {"n": 0}

    def interrupted_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two steps an epoch: the first step of epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", interrupted_in_epoch_2)
    argv = [*SHAPES_RUN, "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        finetune.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "Traceback" not in err
    checkpoint = tmp_path / "runs" / "cli" / "checkpoint.pt"
    assert f"{checkpoint} (epoch 1)" in err
    command = shlex.split(err.split("Resume with:")[1].strip().splitlines()[0])
    assert command[:3] == [sys.executable, "-m", "clip_helpers.training.finetune"] and command[-1] == "--resume"
    monkeypatch.setattr(train, "train_step", original)

    # Resuming with other settings is refused, each difference named; the printed command resumes.
    recipe_lr = re.escape(f"{recipes.MINI_RECIPE['lr']:g}")  # the mini model's default lr
    with pytest.raises(SystemExit, match=rf"lr: {recipe_lr} -> 0\.5; .*train_images: 32 -> 48"):
        finetune.main([*command[3:], "--lr", "0.5", "--train-size", "48"])
    history = finetune.main(command[3:])
    assert history["epoch"].tolist() == [1, 2]
    assert pd.read_csv(tmp_path / "runs" / "cli" / "history.csv")["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_cli_resume_of_a_missing_run_and_a_new_run_over_a_finished_one_are_refused(tmp_path):
    argv = [*SHAPES_RUN, "--epochs", "1", "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="error: Nothing to resume: there is no run folder"):
        finetune.main([*argv, "--resume"])
    finetune.main(argv)
    with pytest.raises(SystemExit, match="error: .*already holds a run.*--overwrite"):
        finetune.main(argv)


def run_notebooks_main():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("run_notebooks", Path(__file__).parent.parent / "tools" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("argv, message", [(["--profile", "nonsense"], "argument --profile: invalid choice: 'nonsense' (choose from auto, smoke"),
                                           (["--out", "{file}"], "argument --out: {file} is a file, not a folder"),
                                           (["--out", "{file}/sub"], "argument --out: {file} is a file, not a folder")])
def test_run_notebooks_gives_argparse_messages(argv, message, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(SystemExit) as stop:
        run_notebooks_main()([arg.format(file=file) for arg in argv])
    assert stop.value.code == 2 and message.format(file=file) in capsys.readouterr().err


def test_reproduce_results_table_adds_the_probe_and_recall_rows():
    from clip_helpers.replication import reproduce
    history = pd.DataFrame([{"epoch": 1, "train_loss": 2.5, "val_loss": 2.0, "val_top1": 80.0, "val_inbatch_acc": 12.5}])
    summary = {"params": 151277313, "input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    recall = pd.DataFrame({"R@1": [70.0, 88.9], "R@5": [90.0, 100.0], "R@10": [95.5, 100.0]},
                          index=["text->image", "image->text"])
    table = reproduce.results_table(summary, 88.8, history, torch.eye(5), 5, probe_top1=(93.0, 50000), recall=recall)
    assert "| Linear probe CIFAR-10 top-1, ViT-B/32, 50,000 training images | 93.0% | not given | 95.1% (" in table
    assert "| Linear probe minus zero-shot, CIFAR-10 (points) | +4.2 |" in table  # 93.0 - 88.8
    assert "text->image, R@1 / R@5 / R@10 (caption partners: its class's images) | 70.0% / 90.0% / 95.5% |" in table
    assert "image->text" in table and "not comparable" in table
    assert "Linear probe" not in reproduce.results_table(summary, 88.8, history, torch.eye(5), 5)
