"""The kit's training step on a GPU: bf16 autocast, fused AdamW, and its model FLOPs utilisation (MFU).

    python benchmarks/gpu.py                       # ViT-B/32, batch 256, a few minutes at most
    python benchmarks/gpu.py --batch-size 512 --steps 30 --out outputs/gpu_benchmark.json
    python benchmarks/gpu.py --device cpu --model mini-vit --batch-size 8 --steps 1   # does it run? (the tests)

Ready for the day a GPU is lent: the model is a randomly initialised ViT-B/32 (no download: the architecture,
not the weights, sets the speed), each step is the kit's own train_step, and MFU is the step's counted FLOPs
(torch's FlopCounterMode) times steps per second over the GPU's published dense bf16 peak
(finetune_speed.BF16_PEAK_TFLOPS). The same rounds also time a bf16 matrix product, the ceiling the GPU
actually reaches here, so the step is given against both.
"""
import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from clip_helpers.models import build_random_clip

HERE = Path(__file__).parent


def finetune_speed():
    """The CPU benchmark's module, for its step, FLOP counter, timer and peak table (one definition of each)."""
    spec = importlib.util.spec_from_file_location("finetune_speed", HERE / "finetune_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", choices=["ViT-B/32", "RN50", "mini", "mini-vit"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--out", default="outputs/gpu_benchmark.json", help="where the JSON result is written")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    bench = finetune_speed()
    device = "cuda:0" if args.device == "cuda" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No GPU is visible to PyTorch: run with --device cpu to check the script, or on a GPU machine.")
    amp = "bfloat16"
    base = build_random_clip(args.model, seed=0)
    images, labels = bench.synthetic_batches(1, args.batch_size, base.visual.input_resolution)[0]
    texts = bench.bare_captions(labels.tolist())
    model, optimizer, step = bench.kit_step_for(base, device, images, labels, texts, amp)
    gflop = bench.step_gflop(step)
    matmul, matmul_gflop = bench.matmul_probe(device, args.matmul_size, torch.bfloat16)
    step_s, matmul_s = bench.interleaved_seconds([step, matmul], device, args.steps, args.warmup)
    images_per_s = args.steps * args.batch_size / step_s
    achieved_tflops = gflop * args.steps / step_s / 1e3
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = bench.bf16_peak_tflops(name) if device.startswith("cuda") else None
    result = {"model": args.model, "batch_size": args.batch_size, "device": device, "gpu_name": name,
              "amp": amp, "fused_adamw": bool(optimizer.defaults.get("fused")), "steps": args.steps,
              "train_images_per_s": round(images_per_s, 2), "gflop_per_step": round(gflop, 2),
              "achieved_tflop_per_s": round(achieved_tflops, 2),
              "bf16_matmul_tflop_per_s": matmul_gflop * args.steps / matmul_s / 1e3,
              "published_bf16_peak_tflop_per_s": peak,
              "mfu": None if peak is None else round(achieved_tflops / peak, 4),
              "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
              if device.startswith("cuda") else None,
              "date": time.strftime("%Y-%m-%d")}
    result["fraction_of_matmul_rate"] = round(achieved_tflops / result["bf16_matmul_tflop_per_s"], 4)
    result["bf16_matmul_tflop_per_s"] = round(result["bf16_matmul_tflop_per_s"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
