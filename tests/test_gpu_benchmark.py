"""benchmarks/gpu.py runs end to end (on the CPU here, with a tiny ViT): the script is ready for a lent GPU."""
import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_writes_its_json_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    result = module.main(["--device", "cpu", "--model", "mini-vit", "--batch-size", "4", "--steps", "1",
                          "--warmup", "0", "--matmul-size", "64", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["amp"] == "bfloat16" and result["fused_adamw"] is True
    assert result["gflop_per_step"] > 0 and math.isfinite(result["train_images_per_s"])
    assert result["mfu"] is None  # no published peak for a CPU: MFU is a GPU figure
