"""The precision an evaluation runs at is chosen (--precision, precision=) and reported as the one that ran."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers import device as device_module
from clip_helpers.replication import reproduce
from clip_helpers.training import finetune
from clip_helpers.features import encode_images, fingerprint
from clip_helpers.zeroshot import build_classifier, evaluate


@pytest.fixture
def bf16_cpu(monkeypatch):
    """As on a CPU with bf16 hardware (this machine may lack it): "auto" then means bf16 autocast."""
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)


@pytest.fixture
def loader():
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(images, torch.arange(12) % 3), batch_size=5)


def autocast_seen(model, monkeypatch):
    """A list that records, per encode_image call, the CPU autocast dtype in force (None: autocast off)."""
    seen, encode = [], model.encode_image

    def recording(images):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return encode(images)
    monkeypatch.setattr(model, "encode_image", recording)
    return seen


@pytest.mark.parametrize("precision, dtype", [("auto", torch.bfloat16), ("fp32", None), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_encode_images_runs_the_precision_asked_for(mini, loader, bf16_cpu, monkeypatch, precision, dtype):
    seen = autocast_seen(mini, monkeypatch)
    encode_images(mini, loader, progress=False, precision=precision)
    assert seen == [dtype] * len(loader)


def test_fp32_is_exactly_encode_image_even_where_auto_is_bf16(mini, loader, bf16_cpu):
    with torch.no_grad():
        expected = torch.cat([mini.encode_image(images) for images, _ in loader])
    features, _ = encode_images(mini, loader, progress=False, precision="fp32")
    assert torch.equal(features, expected)
    auto, _ = encode_images(mini, loader, progress=False)
    assert not torch.equal(auto, expected)  # bf16 autocast rounds: "auto" here is not fp32


def test_evaluate_reports_the_precision_that_ran(mini, loader, bf16_cpu):
    classifier = build_classifier(mini, ["red", "green", "blue"], ["a {} shape."])
    assert evaluate(mini, loader, classifier)["precision"] == "bf16"
    assert evaluate(mini, loader, classifier, precision="fp32")["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate(mini, loader, classifier, precision="float32")


def test_the_feature_cache_tells_precisions_apart(mini, bf16_cpu):
    dataset = TensorDataset(torch.zeros(4, 3, 32, 32), torch.arange(4))
    keys = {p: fingerprint(mini, DataLoader(dataset, batch_size=2), p) for p in ("auto", "fp32", "bf16")}
    assert keys["auto"] == keys["bf16"] != keys["fp32"]


def test_the_command_lines_take_a_precision_and_pass_it_on(tmp_path, monkeypatch, capsys):
    assert reproduce.parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        finetune.parse_args(["--precision", "fp64"])
    got = {}

    def fake_fine_tune_on(data, config, run_folder):
        got.update(amp=config.amp)
        import pandas as pd
        return None, pd.DataFrame({"epoch": [1]})
    monkeypatch.setattr(finetune, "fine_tune_on", fake_fine_tune_on)
    finetune.main(["--model", "mini", "--dataset", "shapes", "--precision", "fp32", "--device", "cpu",
                   "--data-dir", str(tmp_path)])
    assert got["amp"] is None  # fp32: no autocast
    assert "precision: fp32 (--precision fp32)" in capsys.readouterr().out


def test_fine_tune_on_turns_the_precision_into_the_training_autocast():
    assert [device_module.precision_amp(p) for p in ("auto", "fp32", "bf16", "fp16")] == \
        ["auto", None, "bfloat16", "float16"]


def test_reproduce_results_say_the_precision_beside_each_number():
    import pandas as pd
    summary = {"params": 1, "input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    history = pd.DataFrame({"epoch": [1], "train_loss": [1.0], "val_loss": [1.0], "val_top1": [50.0],
                            "val_inbatch_acc": [40.0]})
    table = reproduce.results_table(summary, 88.8, history, torch.eye(5), 5, probe_top1=(93.0, 50000),
                                    precision="bf16")
    assert "Zero-shot CIFAR-10 top-1, ViT-B/32, bf16," in table
    assert "Linear probe CIFAR-10 top-1, ViT-B/32, bf16," in table


def test_the_benchmarks_fp32_accuracy_column_is_fp32(mini, bf16_cpu, monkeypatch, benchmark):
    seen = autocast_seen(mini, monkeypatch)
    dataset = TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4) % 2)
    benchmark.accuracy_costs.predictions(mini, dataset, build_classifier(mini, ["a", "b"], ["{}"]))
    assert seen == [None]
