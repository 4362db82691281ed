import subprocess
import sys

import pandas as pd
import torch
import pytest

from clip_helpers import finetune
from clip_helpers.data import targets_of


def test_cli_fine_tunes_mini_clip_on_shapes_for_one_epoch(tmp_path, capsys):
    history = finetune.main(["--model", "mini", "--dataset", "shapes", "--epochs", "1", "--batch-size", "16",
                             "--train-size", "48", "--val-size", "16", "--run", "cli", "--data-dir", str(tmp_path),
                             "--device", "cpu", "--no-progress"])
    run_dir = tmp_path / "runs" / "cli"
    written = pd.read_csv(run_dir / "history.csv")
    assert list(written.columns) == ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_inbatch_acc", "lr", "seconds"]
    assert written["step"].tolist() == [3] and history["train_loss"].tolist() == pytest.approx(written["train_loss"].tolist())
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoint.pt").is_file()
    assert "val_top1" in capsys.readouterr().out


def test_cli_datasets_never_share_an_image(tmp_path):
    train, val, class_names, _, _ = finetune.datasets_for("shapes", None, str(tmp_path), train_size=100, val_size=40)
    assert len(train) == 100 and len(val) == 40 and len(class_names) == 36
    assert set(train.dataset.indices[i] for i in train.indices).isdisjoint(val.dataset.indices[i] for i in val.indices)
    assert len(targets_of(train)) == 100


def test_cli_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "clip_helpers.finetune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--resume" in result.stdout and "caltech256" in result.stdout


def test_reproduce_fails_fast_without_the_weights(tmp_path, monkeypatch):
    import urllib.error

    import clip.clip

    from clip_helpers import reproduce

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
    from clip_helpers import reproduce
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


def test_cli_int8_eval_on_a_vit_checkpoint(tmp_path):
    import torch

    from clip_helpers.models import build_random_clip
    checkpoint = tmp_path / "mini-vit.pt"
    torch.save(build_random_clip("mini-vit").state_dict(), checkpoint)
    history = finetune.main(["--model", str(checkpoint), "--dataset", "shapes", "--epochs", "1", "--batch-size", "16",
                             "--train-size", "32", "--val-size", "16", "--run", "int8", "--data-dir", str(tmp_path),
                             "--device", "cpu", "--no-progress", "--int8-eval"])
    assert len(history) == 1 and 0 <= history["val_top1"].iloc[0] <= 100
