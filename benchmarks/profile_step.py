"""Where a training step's time goes: torch.profiler's self time of every operator of the kit's step, in fp32 and
under bf16 autocast, grouped into matrix products, casts and copies, attention, norms and activations, the
optimiser, and the rest.

    python benchmarks/profile_step.py --model ViT-B/32 --batch-size 32    # the benchmark's model and batch
    python benchmarks/profile_step.py --model mini-vit --batch-size 8 --json

benchmarks/finetune_speed.py puts the same breakdown into the results file ("step_profile"), so a step's
distance from its ceiling can be read off: the ceiling counts matrix products only, and everything else here is
time the ceiling does not pay for. Profiled times are a little above unprofiled ones (the profiler's own cost);
the shares, not the seconds, are the figure.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

# (category, names): an operator whose name is one of the names, or (for a name without "aten::") holds it, in
# any case, belongs to the category; the first match wins, so a fused attention kernel that multiplies matrices
# inside is attention, and clip_grad_norm_'s _foreach_norm is the optimiser's.
CATEGORIES = (
    ("optimizer", ("adam", "_foreach_", "optimizer.")),
    ("attention", ("scaled_dot_product", "attention", "flash")),
    ("casts_and_copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous")),
    ("matmul_and_conv", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul",
                         "aten::linear", "aten::conv2d", "aten::convolution", "aten::_convolution",
                         "aten::convolution_backward", "aten::mkldnn_convolution")),
    ("norms_and_activations", ("layer_norm", "softmax", "gelu", "sigmoid", "silu", "aten::tanh")),
)
OTHER = "other"


def belongs(op_name: str, names) -> bool:
    lower = op_name.lower()
    return any(op_name == name if name.startswith("aten::") else name in lower for name in names)


def category(op_name: str) -> str:
    """The CATEGORIES group of a profiler operator name ("aten::addmm" -> "matmul_and_conv"), else OTHER."""
    return next((group for group, names in CATEGORIES if belongs(op_name, names)), OTHER)


def self_seconds(event, on_cuda: bool) -> float:
    """An operator's own time (its callees' excluded, so nothing is counted twice), on the GPU when it ran there."""
    micro = event.self_device_time_total if on_cuda else event.self_cpu_time_total
    return micro / 1e6


def breakdown(fn, device="cpu", warmup=1, top=8) -> dict:
    """{"wall_seconds", "profiled_seconds", "shares": {category: share of the profiled time}, "top_ops": the `top`
    operators by own time with their category and share}: one profiled call of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    on_cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, with_flops=True) as profiler:
        start = time.perf_counter()
        fn()
        if on_cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    averages = profiler.key_averages()
    events = [(event.key, self_seconds(event, on_cuda)) for event in averages]
    total = sum(seconds for _, seconds in events) or 1e-12
    shares = {group: 0.0 for group, _ in CATEGORIES} | {OTHER: 0.0}
    for name, seconds in events:
        shares[category(name)] += seconds / total
    ranked = sorted(events, key=lambda event: -event[1])[:top]
    return {"wall_seconds": round(wall, 4), "profiled_seconds": round(total, 4),
            "matmul_gflop_per_s": round(matmul_rate(averages, on_cuda), 1),
            "shares": {group: round(share, 4) for group, share in shares.items()},
            "top_ops": [{"op": name, "category": category(name), "share": round(seconds / total, 4)}
                        for name, seconds in ranked]}


# The products whose FLOPs the profiler counts on the operator that does the work (a convolution's are counted on
# aten::conv2d, its time spent in a callee, and its backward's not at all).
RATED_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_rate(averages, on_cuda: bool) -> float:
    """GFLOP/s of the matrix products within the profiled call (the profiler's FLOP count over their own time): the
    rate the ceiling's probe stands for, measured on the model's own shapes."""
    products = [event for event in averages if event.key in RATED_PRODUCTS]
    seconds = sum(self_seconds(event, on_cuda) for event in products)
    return sum(event.flops for event in products) / 1e9 / seconds if seconds else 0.0


def step_profiles(make_step, device, precisions=(None, "bfloat16"), warmup=1) -> dict:
    """{"fp32": breakdown, "bf16": breakdown} of the training steps make_step(amp) returns (amp None: fp32).

    bf16 is profiled wherever asked (this file's command line always asks; finetune_speed only where bf16 is
    hardware), also on a CPU without bf16 hardware, where torch emulates it: there its shares say what emulation
    costs, not what a bf16 machine would show."""
    return {"bf16" if amp == "bfloat16" else "fp32": breakdown(make_step(amp), device, warmup) for amp in precisions}


def summary_line(name: str, profile_: dict) -> str:
    shares = ", ".join(f"{group} {share:.0%}" for group, share in profile_["shares"].items())
    return (f"profile     kit {name} step ({profile_['wall_seconds']:.2f} s profiled): {shares}; matrix products "
            f"at {profile_['matmul_gflop_per_s']:.0f} GFLOP/s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", choices=["ViT-B/32", "RN50", "mini", "mini-vit"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    import finetune_speed  # beside this file: the benchmark's model, batch and kit step

    base = finetune_speed.build_random_clip(args.model, seed=0)
    images, labels = finetune_speed.synthetic_batches(1, args.batch_size, base.visual.input_resolution)[0]
    texts = finetune_speed.bare_captions(labels.tolist())
    result = step_profiles(lambda amp: finetune_speed.kit_step_for(base, args.device, images, labels, texts, amp)[2],
                           args.device)
    for name, profile_ in result.items():
        print(summary_line(name, profile_))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
