"""Peak memory and step time of the kit's training step at one global batch: one pass against accum_steps K.

    python benchmarks/accumulation.py                                   # mini-ViT, batch 256, K = 1 2 4 8, CPU
    python benchmarks/accumulation.py --batch-size 512 --rounds 5 --out outputs/accumulation.json
    python benchmarks/accumulation.py --device cuda                     # torch.cuda.max_memory_allocated instead

Each step is clip_helpers.training.step.train_step as fine_tune calls it (AdamW, clipping, the scaler), with
`backward=accumulation.in_chunks(K)` for K > 1: the same update, computed in K chunks (GradCache).
Memory: each measurement runs in a fresh subprocess, because a process's peak resident memory (getrusage's
ru_maxrss) never goes down; the subprocess builds the model and the batch, reads ru_maxrss, runs the first
step, and reports how far the peak rose: the memory the step needed beyond the model and the data (AdamW's
two moments, created by that first step, are in it for every K alike). Not tracemalloc: it sees only
Python's own allocator, not the memory torch allocates for tensors. On CUDA: the peak of allocated tensor
memory during the first step (torch.cuda.max_memory_allocated), which is exact and needs no subprocess trick.
Time: the median of --steps further steps. Rounds interleave the K values (1 2 4 8, 1 2 4 8, ...), so a change
in the machine's load falls on all of them; each figure is the median over rounds.
Writes the JSON and a markdown table (--out, and the same name with .md), both atomically.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_file, beside this file


def step_for(model_name: str, batch_size: int, accum_steps: int, device: str):
    """(model, a function that runs one kit training step on a fixed batch and returns its loss)."""
    import torch

    from clip_helpers.device import make_scaler
    from clip_helpers.models import build_random_clip
    from clip_helpers.shapes import SHAPES_TEMPLATES
    from clip_helpers.training import optim
    from clip_helpers.training.accumulation import in_chunks
    from clip_helpers.training.config import TrainConfig
    from clip_helpers.training.step import train_step

    model = build_random_clip(model_name, seed=0).train().to(device)
    size = model.visual.input_resolution
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(batch_size) % 36
    texts = [SHAPES_TEMPLATES[i % len(SHAPES_TEMPLATES)].format(f"shape {label}") for i, label in enumerate(labels)]
    optimizer = optim.make_optimizer(model, TrainConfig(lr=1e-4))
    scaler = make_scaler(device, None)
    backward = in_chunks(accum_steps) if accum_steps > 1 else None
    return model, lambda: train_step(model, images, labels, texts, optimizer, scaler, amp=None, backward=backward)


def peak_bytes(device: str) -> int:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(model_name: str, batch_size: int, accum_steps: int, device: str, steps: int) -> dict:
    """In this process: {"peak_mb": growth of the peak during the first step, "step_s": median of the next steps,
    "loss": the first step's loss}."""
    import torch
    if device == "cpu":
        torch.set_num_threads(1)  # a shared machine: one core, the same for every run
    _, step = step_for(model_name, batch_size, accum_steps, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_bytes(device)
    loss = step()
    peak = peak_bytes(device) - before
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_mb": peak / 2 ** 20, "step_s": statistics.median(times) if times else None, "loss": loss}


def in_subprocess(args, accum_steps: int) -> dict:
    command = [sys.executable, __file__, "--one", str(accum_steps), "--model", args.model, "--batch-size",
               str(args.batch_size), "--device", args.device, "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measurement with accum_steps {accum_steps} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(args, runs: dict) -> dict:
    """The result: per K the medians over rounds, and each round's figures (for the spread)."""
    rows = []
    for accum_steps, measured in runs.items():
        rows.append({"accum_steps": accum_steps, "chunk_size": args.batch_size // accum_steps,
                     "peak_mb": statistics.median(m["peak_mb"] for m in measured),
                     "step_s": statistics.median(m["step_s"] for m in measured),
                     "loss": measured[0]["loss"], "rounds": measured})
    one_pass = rows[0]
    for row in rows:
        row["peak_vs_one_pass"] = row["peak_mb"] / one_pass["peak_mb"]
        row["time_vs_one_pass"] = row["step_s"] / one_pass["step_s"]
    return {"model": args.model, "batch_size": args.batch_size, "device": args.device, "rounds": args.rounds,
            "steps": args.steps, "memory": "cuda max_memory_allocated" if args.device.startswith("cuda") else
            "growth of ru_maxrss during the first step, fresh process", "rows": rows}


def markdown(result: dict) -> str:
    about = result["machine"]
    lines = [f"# accum_steps: {result['model']}, global batch {result['batch_size']}, {result['device']}", "",
             f"Measured {about['date']} with torch {about['torch']} on {about['cpu']} (1 thread per measurement)"
             + (f", GPU {about['gpu']}" if about["gpu"] else "") + f"; memory: {result['memory']}; time: median of "
             f"{result['steps']} steps; medians over {result['rounds']} interleaved rounds.", "",
             "| accum_steps | chunk | peak memory of the step | vs one pass | step time | vs one pass |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['accum_steps']} | {row['chunk_size']} | {row['peak_mb']:.0f} MB | "
                     f"{row['peak_vs_one_pass']:.2f}x | {row['step_s']:.2f} s | {row['time_vs_one_pass']:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-vit", help="mini-vit (LayerNorm only: exact), mini, ViT-B/32, RN50")
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch, the same for every K")
    parser.add_argument("--accum-steps", type=int, nargs="+", default=[1, 2, 4, 8], help="1 is the one-pass step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (memory) step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/accumulation.json")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the subprocess's own run
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.model, args.batch_size, args.one, args.device, args.steps)))
        return None
    if args.accum_steps[0] != 1:
        raise SystemExit("--accum-steps must start with 1: the one-pass step every other is compared with")
    runs = {k: [] for k in args.accum_steps}
    for round_number in range(1, args.rounds + 1):
        for accum_steps in args.accum_steps:
            runs[accum_steps].append(in_subprocess(args, accum_steps))
            print(f"round {round_number}, accum_steps {accum_steps}: {runs[accum_steps][-1]}", flush=True)
    from clip_helpers.files import write_text_atomically
    from results_file import machine
    result = summary(args, runs) | {"machine": machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(result, indent=1) + "\n")
    write_text_atomically(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
