"""The speed benchmark runs and reports what it promises (its timings are not asserted: see benchmarks/)."""
import importlib.util
import json
from pathlib import Path

import pytest

from clip_helpers.device import cpu_has_bf16

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "finetune_speed.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("finetune_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_json_on_a_tiny_vit(benchmark, capsys):
    result = benchmark.main(["--model", "mini-vit", "--device", "cpu", "--batch-size", "8", "--steps", "1",
                             "--warmup", "0", "--eval-batches", "1", "--matmul-size", "256", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for key in ("report_train_images_per_s", "kit_train_images_per_s", "report_eval_images_per_s",
                "kit_eval_images_per_s", "kit_int8_eval_images_per_s", "device"):
        assert result[key]
    # The report's step runs the text tower over 77 tokens per caption; the kit's over a few, once per class.
    assert result["kit_train_gflop_per_step"] < result["report_train_gflop_per_step"]
    # The ceiling is the counted FLOPs at the measured matmul rate plus AdamW; the fraction is the kit's step over it.
    ceiling = 8 / (result["kit_train_gflop_per_step"] / result["matmul_gflop_per_s"] + result["kit_optimizer_seconds"])
    assert result["ceiling_images_per_s"] == pytest.approx(ceiling, rel=0.02)
    assert result["kit_fraction_of_ceiling"] == pytest.approx(
        result["kit_train_images_per_s"] / result["ceiling_images_per_s"], rel=0.01)
    assert result["fraction_target"] == 0.85 and result["fused_adamw"] is True
    bf16_keys = {"kit_bf16_train_images_per_s", "bf16_matmul_gflop_per_s", "bf16_ceiling_images_per_s",
                 "kit_bf16_fraction_of_bf16_ceiling", "kit_bf16_speedup_over_fp32"}
    if cpu_has_bf16():  # timed beside fp32 only where bf16 is hardware; emulated bf16 is slower than fp32
        assert bf16_keys <= result.keys() and result["train_amp_default"] == "bfloat16"
        assert result["kit_bf16_speedup_over_fp32"] == pytest.approx(
            result["kit_bf16_train_images_per_s"] / result["kit_train_images_per_s"], rel=0.01)
        # Autocast changes the precision of each operation, not the operations counted.
        assert result["kit_bf16_gflop_per_step"] == pytest.approx(result["kit_train_gflop_per_step"], rel=0.01)
    else:
        assert not bf16_keys & result.keys() and result["train_amp_default"] is None
    assert "kit_bf16_mfu" not in result  # model FLOPs utilisation is a GPU figure


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
                                        ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40S", 362), ("NVIDIA L4", 121),
                                        ("Tesla T4", None)])
def test_published_bf16_peaks_by_gpu_name(benchmark, name, peak):
    assert benchmark.bf16_peak_tflops(name) == peak


def test_patch_dropout_keeps_the_class_token_and_a_share_of_patches(benchmark):
    import torch
    from torch import nn
    layer = nn.LayerNorm(4)
    layer.register_forward_pre_hook(benchmark.drop_patches(0.5))
    x = torch.randn(2, 17, 4, generator=torch.Generator().manual_seed(0))
    every = layer.eval()(x)
    assert every.shape == x.shape  # evaluation sees every patch
    kept = layer.train()(x)
    assert kept.shape == (2, 9, 4)
    assert torch.equal(kept[:, 0], every[:, 0])  # the class token is always first and kept
    for image in range(2):  # the rest are 8 distinct patches of the same image
        rows = [(every[image, 1:] == token).all(dim=1).nonzero().item() for token in kept[image, 1:]]
        assert len(set(rows)) == 8
