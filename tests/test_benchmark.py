"""The speed benchmark runs and reports what it promises (its timings are not asserted: see benchmarks/)."""
import json
import math

import clip
import pytest
import torch

from clip_helpers.replication import report
from clip_helpers.device import cpu_has_bf16


@pytest.mark.slow  # times every step and evaluation it compares
def test_benchmark_json_on_a_tiny_vit(benchmark, capsys, tmp_path):
    out = tmp_path / "outputs" / "benchmark.json"
    result = benchmark.main(["--model", "mini-vit", "--device", "cpu", "--batch-size", "8", "--steps", "1",
                             "--warmup", "0", "--eval-batches", "1", "--matmul-size", "256", "--json",
                             "--out", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert json.loads(out.read_text()) == result  # the results file holds what was printed, machine included
    table = out.with_suffix(".md").read_text()
    assert f"| kit fp32 step / fp32 ceiling | {result['kit_fraction_of_ceiling']:.0%} |" in table
    assert f"| int8 evaluation / report's evaluation | {result['int8_eval_speedup']:.2f}x |" in table
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["torch"] in table
    rates = {key: value for key, value in result.items() if key.endswith("_images_per_s")}
    assert {"report_train_images_per_s", "kit_train_images_per_s", "report_eval_images_per_s", "kit_eval_images_per_s",
            "kit_int8_eval_images_per_s", "ceiling_images_per_s"} <= rates.keys()
    assert all(math.isfinite(rate) and rate > 0 for rate in rates.values()), rates
    bf16_keys = {"kit_bf16_train_images_per_s", "bf16_matmul_gflop_per_s", "bf16_ceiling_images_per_s",
                 "kit_bf16_fraction_of_bf16_ceiling", "kit_bf16_speedup_over_fp32"}
    # Timed beside fp32 only where bf16 is hardware; emulated bf16 is slower than fp32.
    assert (bf16_keys <= result.keys()) if cpu_has_bf16() else not (bf16_keys & result.keys())
    assert "kit_bf16_mfu" not in result  # model FLOPs utilisation is a GPU figure
    assert set(result["step_profile"]) == ({"fp32", "bf16"} if cpu_has_bf16() else {"fp32"})
    assert ("step_profile_skipped" in result) != cpu_has_bf16()
    for profile in result["step_profile"].values():
        assert sum(profile["shares"].values()) == pytest.approx(1, abs=1e-3)
        assert profile["shares"]["matmul_and_conv"] > 0 and profile["shares"]["optimizer"] > 0
        assert profile["matmul_gflop_per_s"] > 0
    assert "| matmul_and_conv |" in table


def test_step_gflop_counts_a_matrix_product_as_2mkn(benchmark):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert benchmark.step_gflop(lambda: a @ b) == pytest.approx(2 * 64 * 32 * 16 / 1e9)


def test_the_kits_step_does_less_work_than_the_reports(benchmark):
    """The report's step runs the text tower over 77 tokens per caption; the kit's over a few, once per class."""
    base = benchmark.build_random_clip("mini-vit", seed=0)
    images, labels = benchmark.synthetic_batches(1, 8, base.visual.input_resolution)[0]
    texts = benchmark.bare_captions(labels.tolist())
    report_model, report_optimizer = benchmark.report_setup(base, "cpu")
    report_batch = (images, clip.tokenize(texts, context_length=base.context_length))
    report_gflop = benchmark.step_gflop(lambda: report.trainStep(report_model, report_optimizer, report_batch, "cpu"))
    _, _, kit_step = benchmark.kit_step_for(base, "cpu", images, labels, texts, None)
    kit_gflop = benchmark.step_gflop(kit_step)
    assert 0 < kit_gflop < report_gflop


def test_ceilings_are_the_counted_work_at_the_measured_rate_plus_adamw(benchmark, monkeypatch):
    rates = {torch.float32: 100.0, torch.bfloat16: 400.0}  # GFLOP/s, as if measured
    monkeypatch.setattr(benchmark, "matmul_gflop_per_s", lambda device, size, dtype: rates[dtype])
    training = {"kit": 2.0, "kit_gflop": 50.0, "kit_optimizer_seconds": 0.5, "kit_bf16": 3.0, "kit_bf16_gflop": 50.0}
    result = benchmark.training_ceilings(training, batch_size=8, device="cpu")
    # fp32: 8 images / (50 GFLOP / 100 GFLOP/s + 0.5 s) = 8 images/s; bf16: 8 / (50 / 400 + 0.5) = 12.8 images/s.
    assert result["ceiling_images_per_s"] == pytest.approx(8.0)
    assert result["kit_fraction_of_ceiling"] == pytest.approx(2.0 / 8.0, abs=1e-3)
    assert result["bf16_ceiling_images_per_s"] == pytest.approx(12.8)
    assert result["kit_bf16_fraction_of_bf16_ceiling"] == pytest.approx(3.0 / 12.8, abs=1e-3)
    assert result["kit_bf16_speedup_over_fp32"] == pytest.approx(1.5)
    assert "kit_bf16_mfu" not in result


@pytest.fixture(scope="module")
def profile_step(benchmark):
    return benchmark.profile_step


@pytest.mark.parametrize("op, group", [("aten::addmm", "matmul_and_conv"), ("aten::mm", "matmul_and_conv"),
                                       ("aten::convolution_backward", "matmul_and_conv"),
                                       ("aten::_to_copy", "casts_and_copies"), ("aten::copy_", "casts_and_copies"),
                                       ("aten::topk", "other"), ("aten::_fused_adamw_", "optimizer"),
                                       ("aten::_foreach_norm", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
                                       ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
                                       ("aten::native_layer_norm_backward", "norms_and_activations"),
                                       ("aten::_softmax", "norms_and_activations"), ("aten::add", "other")])
def test_profiled_operators_fall_into_their_groups(profile_step, op, group):
    assert profile_step.category(op) == group


def test_a_profile_splits_a_calls_time_by_operator_group(profile_step):
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    profile = profile_step.breakdown(lambda: (a @ b).to(torch.bfloat16), warmup=1)
    assert sum(profile["shares"].values()) == pytest.approx(1, abs=1e-3)
    assert profile["shares"]["matmul_and_conv"] > 0 and profile["shares"]["casts_and_copies"] > 0
    assert profile["shares"]["optimizer"] == 0 and profile["shares"]["attention"] == 0
    ops = {row["op"] for row in profile["top_ops"]}
    assert "aten::mm" in ops and ops & {"aten::_to_copy", "aten::copy_"}


def test_a_profiles_matrix_product_rate_is_their_flops_over_their_time(profile_step):
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    profile = profile_step.breakdown(lambda: [a @ b for _ in range(4)], warmup=1)
    seconds = profile["profiled_seconds"] * profile["shares"]["matmul_and_conv"]  # mm, and matmul's own moment
    assert profile["matmul_gflop_per_s"] == pytest.approx(4 * 2 * 256 ** 3 / 1e9 / seconds, rel=0.05)


@pytest.mark.parametrize("bf16_hardware", [True, False])
def test_the_benchmark_profiles_bf16_only_where_it_is_hardware(benchmark, monkeypatch, capsys, bf16_hardware):
    """Emulated bf16 is not timed, and not profiled either (minutes on an AVX2-only CPU); the results say so."""
    monkeypatch.setattr(benchmark, "cpu_has_bf16", lambda: bf16_hardware)
    profiled = []
    monkeypatch.setattr(benchmark, "kit_step_for", lambda base, device, images, labels, texts, amp: (
        None, None, lambda: profiled.append(amp)))
    monkeypatch.setattr(benchmark.profile_step, "breakdown", lambda fn, device, warmup: fn() or {
        "wall_seconds": 1.0, "shares": {"other": 1.0}, "matmul_gflop_per_s": 1.0})
    result = benchmark.step_profiles(None, (torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])), "cpu")
    printed = capsys.readouterr().out
    assert profiled == ([None, "bfloat16"] if bf16_hardware else [None])
    assert set(result["step_profile"]) == ({"fp32", "bf16"} if bf16_hardware else {"fp32"})
    assert ("bf16 step skipped" in printed) == ("step_profile_skipped" in result) == (not bf16_hardware)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
                                        ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40S", 362), ("NVIDIA L4", 121),
                                        ("Tesla T4", None)])
def test_published_bf16_peaks_by_gpu_name(benchmark, name, peak):
    assert benchmark.bf16_peak_tflops(name) == peak


def test_patch_dropout_keeps_the_class_token_and_a_share_of_patches(benchmark):
    from torch import nn
    layer = nn.LayerNorm(4)
    layer.register_forward_pre_hook(benchmark.accuracy_costs.drop_patches(0.5))
    x = torch.randn(2, 17, 4, generator=torch.Generator().manual_seed(0))
    every = layer.eval()(x)
    assert every.shape == x.shape  # evaluation sees every patch
    kept = layer.train()(x)
    assert kept.shape == (2, 9, 4)
    assert torch.equal(kept[:, 0], every[:, 0])  # the class token is always first and kept
    for image in range(2):  # the rest are 8 distinct patches of the same image
        rows = [(every[image, 1:] == token).all(dim=1).nonzero().item() for token in kept[image, 1:]]
        assert len(set(rows)) == 8


FAKE_RESULT = {"model": "ViT-B/32", "batch_size": 32, "device": "cpu", "steps": 3, "warmup": 1,
               "kit_fraction_of_ceiling": 0.904, "fraction_target": 0.85, "int8_eval_speedup": 4.581,
               "kit_bf16_fraction_of_bf16_ceiling": None, "machine": {"cpu": "Some CPU", "cpu_flags": ["avx2"],
                                                                       "threads": 2, "torch": "9.9", "gpu": None,
                                                                       "date": "2026-01-01 00:00 UTC"}}


def test_results_file_holds_the_figures_and_a_table_of_the_key_ones(benchmark, tmp_path):
    json_path, table_path = benchmark.results_file.write_results(FAKE_RESULT, tmp_path / "outputs" / "benchmark.json")
    assert json.loads(json_path.read_text()) == FAKE_RESULT
    assert table_path == tmp_path / "outputs" / "benchmark.md"
    table = table_path.read_text()
    for row in ("| kit fp32 step / fp32 ceiling | 90% |", "| target for both | 85% |",
                "| int8 evaluation / report's evaluation | 4.58x |"):
        assert row in table
    assert "bf16 step" not in table  # a figure the run did not measure gets no row
    assert "Some CPU" in table and "avx2" in table and "torch 9.9" in table and "2026-01-01" in table
    assert sorted(path.name for path in json_path.parent.iterdir()) == ["benchmark.json", "benchmark.md"]


def test_results_file_has_a_row_per_operator_group_of_the_profile(benchmark, tmp_path):
    shares = {"matmul_and_conv": 0.5, "casts_and_copies": 0.25, "other": 0.25}
    result = FAKE_RESULT | {"step_profile": {"fp32": {"shares": shares, "matmul_gflop_per_s": 170.4},
                                             "bf16": {"shares": shares | {"other": 0.3}, "matmul_gflop_per_s": 350.0}},
                            "matmul_gflop_per_s": 184.2, "bf16_matmul_gflop_per_s": 402.0}
    _, table_path = benchmark.results_file.write_results(result, tmp_path / "benchmark.json")
    table = table_path.read_text()
    assert "| operators | fp32 step | bf16 step |" in table
    assert "| matmul_and_conv | 50% | 50% |" in table and "| other | 25% | 30% |" in table
    assert "| matrix products' GFLOP/s in the step / the ceiling's probe | 170 / 184 | 350 / 402 |" in table


def test_results_file_must_be_json(benchmark, tmp_path):
    with pytest.raises(ValueError, match="give a .json path"):
        benchmark.results_file.write_results(FAKE_RESULT, tmp_path / "benchmark.md")
    assert not list(tmp_path.iterdir())


def test_cpu_description_reads_the_model_and_the_matrix_flags(benchmark, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512_bf16 sse\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512_bf16 sse\n")
    assert benchmark.results_file.cpu_description(cpuinfo) == {"cpu": "Test CPU 9000",
                                                                "cpu_flags": ["avx2", "fma", "avx512_bf16"]}
