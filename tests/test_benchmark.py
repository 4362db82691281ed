"""The speed benchmark runs and reports what it promises (its timings are not asserted: see benchmarks/)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "finetune_speed.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("finetune_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_json_on_a_tiny_vit(benchmark, capsys):
    result = benchmark.main(["--model", "mini-vit", "--device", "cpu", "--batch-size", "8", "--steps", "1",
                             "--warmup", "0", "--eval-batches", "1", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for key in ("report_train_images_per_s", "kit_train_images_per_s", "report_eval_images_per_s",
                "kit_eval_images_per_s", "kit_int8_eval_images_per_s", "device"):
        assert result[key]
    # The report's step runs the text tower over 77 tokens per caption; the kit's over a few, once per class.
    assert result["kit_train_gflop_per_step"] < result["report_train_gflop_per_step"]
    assert result["kit_train_ceiling_images_per_s"] > 0 and result["matmul_gflop_per_s"] > 0


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
