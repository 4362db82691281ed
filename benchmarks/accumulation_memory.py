"""Peak memory of one training step's backward at one global batch: one pass against GradCache in chunks.

    python benchmarks/accumulation_memory.py                       # mini-CLIP, batch 512, 1/4/16 chunks, CPU
    python benchmarks/accumulation_memory.py --model mini-vit --batch-size 256 --chunks 1 2 8 --json
    python benchmarks/accumulation_memory.py --device cuda         # torch.cuda.max_memory_allocated instead

Each measurement runs in its own fresh subprocess, because a process's peak resident memory (getrusage's
ru_maxrss, the only CPU peak that sees torch's allocations: tracemalloc does not) never goes down. The
subprocess builds the model and the batch, records ru_maxrss, runs the step (forward, loss, backward; no
optimiser), and reports the growth of the peak: the memory the step itself needed beyond the model and
data. On CUDA the peak of allocated tensor memory during the step is reported instead. 1 chunk is the
one-pass step (plain loss.backward()); more chunks is clip_helpers.training.accumulation.grad_cache_backward.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def measure(model_name: str, batch_size: int, num_chunks: int, device: str) -> dict:
    """One step in this process: {"peak_mb", "seconds", "loss"}."""
    import torch

    from clip_helpers.training.accumulation import grad_cache_backward
    from clip_helpers.losses import clip_loss
    from clip_helpers.models import build_random_clip
    from clip_helpers.shapes import SHAPES_TEMPLATES
    from clip_helpers.text import encode_texts

    if device == "cpu":
        torch.set_num_threads(1)  # a shared machine: one core, the same for every run
    model = build_random_clip(model_name).train().to(device)
    size = model.visual.input_resolution
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.arange(batch_size) % 36
    texts = [SHAPES_TEMPLATES[i % len(SHAPES_TEMPLATES)].format(f"shape {label}") for i, label in enumerate(labels)]
    labels = labels.to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    start = time.perf_counter()
    if num_chunks == 1:
        loss = clip_loss(model.encode_image(images), encode_texts(model, texts), model.logit_scale.exp(), labels)
        loss.backward()
    else:
        loss = grad_cache_backward(model, images, texts, labels, num_chunks=num_chunks)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        after = torch.cuda.max_memory_allocated()
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mb": (after - before) / 2 ** 20, "seconds": time.perf_counter() - start, "loss": loss.item()}


def in_subprocess(model_name, batch_size, num_chunks, device) -> dict:
    command = [sys.executable, __file__, "--one", "--model", model_name, "--batch-size", str(batch_size),
               "--chunks", str(num_chunks), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the measurement with {num_chunks} chunks failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini", help="mini (ResNet tower), mini-vit, ViT-B/32 or RN50 (random weights)")
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 16], help="1 is the one-pass step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the subprocess's own run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.batch_size, args.chunks[0], args.device)))
        return
    rows = [dict(chunks=n, chunk_size=args.batch_size // n, **in_subprocess(args.model, args.batch_size, n, args.device))
            for n in args.chunks]
    if args.json:
        print(json.dumps({"model": args.model, "batch_size": args.batch_size, "device": args.device, "rows": rows}))
        return
    print(f"{args.model}, global batch {args.batch_size}, {args.device}: peak memory growth during one step")
    for row in rows:
        kind = "one pass" if row["chunks"] == 1 else f"GradCache, {row['chunks']} chunks of {row['chunk_size']}"
        print(f"  {kind:32s} {row['peak_mb']:8.1f} MB  {row['seconds']:6.2f} s  loss {row['loss']:.6f}")


if __name__ == "__main__":
    main()
