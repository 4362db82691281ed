"""The report's training step and evaluateModel against the kit's, on the same model, batch and images.

    python benchmarks/finetune_speed.py                 # ViT-B/32, batch 32, this machine's device
    python benchmarks/finetune_speed.py --steps 2 --warmup 1 --json
    python benchmarks/finetune_speed.py --out outputs/benchmark.json   # what `make benchmark` runs: also writes
                                                                       # outputs/benchmark.md, with the machine
    python benchmarks/finetune_speed.py --precision     # does bf16 autocast cost accuracy? (mini-CLIP on shapes)
    python benchmarks/finetune_speed.py --accuracy      # do int8 evaluation and patch dropout? (ViT mini-CLIP)

Both sides start from the same randomly initialised ViT-B/32 (no download): the architecture, not the
weights, sets the speed. The report's step is clip_helpers.replication.report.trainStep, its listing as printed
(Adam; on CUDA the fp16 model cast to fp32 around every step); the kit's is clip_helpers.training.step.train_step
(fp32 weights + autocast where it pays, fused AdamW, each distinct caption encoded once up to its end token).
Report and kit are timed alternately in one process, so a busy machine slows both alike.

It also counts each step's floating-point operations and measures the device's fp32 matrix-product rate:
their quotient (plus AdamW's update) is the fastest any exact fp32 step could be, and the JSON gives the
kit's fp32 step as a fraction of it (kit_fraction_of_ceiling; the target is FRACTION_TARGET). Where the
device multiplies bf16 in hardware (a GPU, or a CPU with avx512_bf16/amx_bf16), the kit's step is also
timed under bf16 autocast against a bf16 ceiling measured the same way, so the default precision can be
chosen from measurements (with --precision for what bf16 costs in accuracy). On CUDA it also reports the
model FLOPs utilisation of the bf16 step against the GPU's published dense bf16 peak (BF16_PEAK_TFLOPS). Evaluation is timed in fp32 and, on a CPU
with a ViT, with the kit's int8 image tower (clip_helpers.quantize), which is not exact: --accuracy says
what it costs.
"""
import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import clip
import torch
from clip.model import VisionTransformer
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_helpers.replication import report  # noqa: E402
from clip_helpers.training import optim, recipes, step  # noqa: E402
from clip_helpers.training.config import TrainConfig  # noqa: E402
from clip_helpers.device import autocast_dtype, cpu_has_bf16, get_device, make_scaler, precision_name  # noqa: E402
from clip_helpers.features import encode_images  # noqa: E402
from clip_helpers.models import build_random_clip  # noqa: E402
from clip_helpers.quantize import int8_image_tower  # noqa: E402
from clip_helpers.shapes import SHAPES_TEMPLATES, ShapesDataset  # noqa: E402
from clip_helpers.text import CIFAR10_CLASSES, CIFAR10_TEMPLATES  # noqa: E402
from clip_helpers.zeroshot import build_classifier, evaluate, logits  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by path, the results file is beside it
import results_file  # noqa: E402


FRACTION_TARGET = 0.85  # the kit's exact fp32 step against the ceiling measured in the same run

# Published dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a piece of torch.cuda.get_device_name();
# the first piece found in the name wins, so the more specific come first.
BF16_PEAK_TFLOPS = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
                    ("A100", 312), ("L40S", 362), ("L4", 121)]


def bf16_peak_tflops(gpu_name):
    """The published dense bf16 peak of a GPU by name, or None when the table does not know it."""
    return next((peak for piece, peak in BF16_PEAK_TFLOPS if piece in gpu_name), None)


def amp_name(dtype):
    """"bfloat16", "float16", or None for fp32 (JSON null)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def seconds(fn, device):
    """Wall time of fn(), waiting for the GPU to finish so queued kernels are counted."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_seconds(fns, device, rounds, warmup):
    """Seconds each of `fns` took over `rounds` timed rounds after `warmup` untimed ones.

    They alternate within every round, so a slowdown of the machine hits all of them alike.
    """
    times = [0.0] * len(fns)
    for round_ in range(warmup + rounds):
        for i, fn in enumerate(fns):
            elapsed = seconds(fn, device)
            if round_ >= warmup:
                times[i] += elapsed
    return times


def synthetic_batches(n_batches, batch_size, resolution, seed=0):
    """[(images, labels)]: random pixels and CIFAR-10 labels; speed does not depend on the content."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, resolution, resolution, generator=generator),
             torch.randint(len(CIFAR10_CLASSES), (batch_size,), generator=generator)) for _ in range(n_batches)]


def bare_captions(labels):
    return [CIFAR10_CLASSES[label] for label in labels]


def report_setup(base, device):
    """The report's model and optimizer: clip.load gives an fp16 model on CUDA; on CPU the report calls model.float()."""
    model = copy.deepcopy(base).to(device)
    if device != "cpu":
        clip.model.convert_weights(model)
    return model, report.prepareModelAndOptimizer(model, device)


def kit_step_for(base, device, images, labels, texts, amp):
    """(model, optimizer, step): a copy of `base`, its own fused AdamW, and one kit training step on it under `amp`."""
    model = copy.deepcopy(base).to(device).train()
    config = TrainConfig(class_names=CIFAR10_CLASSES, lr=5e-5, weight_decay=0.2, amp=amp)
    optimizer, scaler = optim.make_optimizer(model, config), make_scaler(device, amp)
    return model, optimizer, lambda: step.train_step(model, images, labels, texts, optimizer, scaler, amp=amp)


def kit_precisions(device):
    """{name: amp} of the kit steps to time: always fp32 (exact), and bf16 autocast where it is hardware."""
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported() or device == "cpu" and cpu_has_bf16()
    return {"kit": None} | ({"kit_bf16": "bfloat16"} if bf16 else {})


def matmul_probe(device, size, dtype):
    """(fn, gflop): ten `dtype` products of two size x size matrices, the work one call of fn does."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return (lambda: [a @ b for _ in range(10)]), 2 * size ** 3 * 10 / 1e9


def time_training(base, batch, device, steps, warmup, matmul_size=2048):
    """(figures, report_model, kit_model). figures: "report", "kit" (fp32) and, where bf16 is hardware,
    "kit_bf16" images/s over `steps` timed steps each after `warmup` untimed ones; "<name>_gflop" per step;
    "kit_optimizer_seconds", the kit's AdamW update alone (work every exact step must do besides its matrix
    products). kit_model is the fp32 one."""
    images, labels = batch
    texts = bare_captions(labels.tolist())
    # The report's loader yields clip.tokenize(texts): 77 tokens, the context of OpenAI's models.
    report_batch = (images, clip.tokenize(texts, context_length=base.context_length))
    report_model, report_optimizer = report_setup(base, device)
    report_model.train()

    def report_step():
        report.trainStep(report_model, report_optimizer, report_batch, device).item()  # its loop calls .item()

    kits = {name: kit_step_for(base, device, images, labels, texts, amp) for name, amp in kit_precisions(device).items()}
    steps_fns = {"report": report_step} | {name: step for name, (_, _, step) in kits.items()}
    # The ceiling's parts (matrix-product rate, AdamW's update on the kit's gradients) are timed inside the same
    # rounds as the steps: timed apart, a busy moment of the machine would put the kit above its own ceiling.
    probes = {"": matmul_probe(device, matmul_size, torch.float32)}
    if "kit_bf16" in kits:
        probes["bf16_"] = matmul_probe(device, matmul_size, torch.bfloat16)
    fns = steps_fns | {f"{prefix}matmul": fn for prefix, (fn, _) in probes.items()} | {"adamw": kits["kit"][1].step}
    times = dict(zip(fns, interleaved_seconds(list(fns.values()), device, steps, warmup)))
    figures = {name: steps * len(images) / times[name] for name in steps_fns}
    figures |= {f"{name}_gflop": step_gflop(fn) for name, fn in steps_fns.items()}
    figures |= {f"{prefix}matmul_rate": steps * gflop / times[f"{prefix}matmul"] for prefix, (_, gflop) in probes.items()}
    figures["kit_optimizer_seconds"] = times["adamw"] / steps
    figures["fused_adamw"] = bool(kits["kit"][1].defaults.get("fused"))
    return figures, report_model, kits["kit"][0]


def time_evaluation(report_model, kit_model, batches, device, repeats, warmup, templates=("{}",)):
    """{"report", "kit", and on a CPU with a ViT "kit_int8"}: images/s of evaluateModel on (images, 77-token
    captions) batches, and of the kit's zero-shot evaluation in fp32 and with its int8 image tower.

    The kit's times include building its classifier from `templates` (default: the report's bare class names,
    so both sides read the same captions) once per pass. The int8 copy is made once, before (its seconds are
    returned as "int8_copy_seconds"), as a model is loaded once: fine_tune makes one per epoch's evaluation.
    """
    context = report_model.context_length
    report_batches = [(images, clip.tokenize(bare_captions(labels.tolist()), context_length=context))
                      for images, labels in batches]

    def zero_shot(model):
        return lambda: evaluate(model, batches, build_classifier(model, CIFAR10_CLASSES, list(templates)))

    kit_model.eval()
    fns = {"report": lambda: report.evaluateModel(report_model, report_batches, device), "kit": zero_shot(kit_model)}
    result = {}
    if device == "cpu" and isinstance(kit_model.visual, VisionTransformer):
        start = time.perf_counter()
        int8_model = int8_image_tower(kit_model)
        result["int8_copy_seconds"] = time.perf_counter() - start
        fns["kit_int8"] = zero_shot(int8_model)
    n_images = repeats * sum(len(images) for images, _ in batches)
    times = interleaved_seconds(list(fns.values()), device, repeats, warmup)
    # evaluate's "auto": the kit's fp32-labelled pass is bf16 on hardware that has it; say which ran
    result["kit_precision"] = precision_name(device, "auto")
    return result | {name: n_images / t for name, t in zip(fns, times)}


def matmul_gflop_per_s(device, size=2048, repeats=10, dtype=torch.float32):
    """The `dtype` matrix-product rate this device sustains (GFLOP/s): the ceiling for a ViT's training step."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    elapsed = seconds(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size ** 3 * repeats / elapsed / 1e9


def training_ceilings(training, batch_size, device, matmul_size=2048):
    """The fastest an exact fp32 step (and, where timed, a bf16-autocast step) could be on this device, the
    kit's steps as fractions of them, and on CUDA the bf16 step's model FLOPs utilisation (None: unknown GPU).

    A step's ceiling: its counted FLOPs at the measured matrix-product rate, plus AdamW's update. Under
    autocast a few operations stay fp32 (softmax, norms, the loss); their FLOPs are negligible, so the bf16
    ceiling counts every FLOP at the bf16 rate.
    """
    result = {}
    precisions = {"": torch.float32} | ({"bf16_": torch.bfloat16} if "kit_bf16" in training else {})
    for prefix, dtype in precisions.items():
        rate = training.get(f"{prefix}matmul_rate") or matmul_gflop_per_s(device, matmul_size, dtype=dtype)
        kit = "kit_bf16" if prefix else "kit"
        ceiling = batch_size / (training[f"{kit}_gflop"] / rate + training["kit_optimizer_seconds"])
        result |= {f"{prefix}matmul_gflop_per_s": round(rate, 1), f"{prefix}ceiling_images_per_s": round(ceiling, 3),
                   f"{kit}_fraction_of_{prefix}ceiling": round(training[kit] / ceiling, 3)}
    if "kit_bf16" in training:
        result["kit_bf16_gflop_per_step"] = round(training["kit_bf16_gflop"], 4)
        result["kit_bf16_speedup_over_fp32"] = round(training["kit_bf16"] / training["kit"], 3)
    if device.startswith("cuda") and "kit_bf16" in training:
        name = torch.cuda.get_device_name(device)
        peak = bf16_peak_tflops(name)
        achieved = training["kit_bf16_gflop"] * training["kit_bf16"] / batch_size / 1e3  # TFLOP/s
        result |= {"gpu_name": name, "gpu_bf16_peak_tflop_per_s": peak, "kit_bf16_tflop_per_s": round(achieved, 2),
                   "kit_bf16_mfu": None if peak is None else round(achieved / peak, 4)}
    return result


def step_gflop(step):
    """Floating-point operations of one call of `step` (GFLOP), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def precision_comparison():
    """Seen- and held-out-pair zero-shot top-1 of mini-CLIP trained with the kit's loop in fp32 and under bf16
    autocast (what the kit uses on GPUs; on a CPU without bf16 hardware it is emulated: slow, same rounding)."""
    result = {}
    for amp in (None, "bfloat16"):
        start = time.perf_counter()
        _, _, history = recipes.train_mini_clip({"amp": amp}, progress=False)
        last = history.iloc[-1]
        name = amp or "float32"
        result[name] = {"seen_top1": round(float(last["val_top1"]), 2), "held_out_top1": round(float(last["held_out_top1"]), 2),
                        "train_loss": round(float(last["train_loss"]), 4), "seconds": round(time.perf_counter() - start, 1)}
        print(f"mini-CLIP on shapes, {name:8s}: seen pairs {last['val_top1']:6.2f}%  held-out pairs "
              f"{last['held_out_top1']:6.2f}%  final train loss {last['train_loss']:.4f}")
    result["seen_top1_difference"] = round(result["bfloat16"]["seen_top1"] - result["float32"]["seen_top1"], 2)
    return result


def drop_patches(keep):
    """A forward pre-hook for visual.ln_pre: in training, keep the class token and a random `keep` share of
    the patch tokens (FLIP's patch dropout, Li et al. 2023), so the transformer does that much less work."""
    def hook(module, args):
        (x,) = args
        if not module.training:
            return None
        n, length, width = x.shape
        patches = torch.rand(n, length - 1, device=x.device).argsort(dim=1)[:, :max(1, round((length - 1) * keep))] + 1
        index = torch.cat([torch.zeros_like(patches[:, :1]), patches], dim=1)
        return (x.gather(1, index[..., None].expand(-1, -1, width)),)
    return hook


def predictions(model, dataset, classifier):
    # fp32 outside the int8 layers, always: under "auto" a CPU with bf16 hardware would make the "fp32" column bf16
    features, labels = encode_images(model, DataLoader(dataset, batch_size=256), progress=False, precision="fp32")
    return logits(features, classifier).argmax(dim=1), labels


def accuracy_comparison(patch_keep=0.5, patch_dropout=True):
    """The two speed-ups that are not exact, on the ViT mini-CLIP trained on shapes with the kit's loop
    (recipes.MINI_VIT_RECIPE): int8 evaluation of the trained model against fp32, on the same images; and
    (patch_dropout) training with half the patches dropped against training with all of them."""
    recipe = recipes.MINI_VIT_RECIPE
    model, preprocess, history = recipes.train_mini_clip(recipe, progress=False)
    int8_model = int8_image_tower(model)
    _, val, held_out, class_names = recipes.shapes_splits(recipe, preprocess)
    # New images, none of them trained on, enough that one point is 15 (seen) or 12 (held-out) images: the
    # recipe's own held-out set has 120, where one image is 0.8 points.
    fresh = {f"fresh_{split}": recipes.rendered(ShapesDataset(split, n_per_class=n, seed=recipe["seed"] + 1,
                                                              transform=preprocess))
             for split, n in (("train", 50), ("heldout", 200))}
    classifier = build_classifier(model, class_names, SHAPES_TEMPLATES)
    result = {}
    for name, dataset in {"seen_val": val, "held_out": held_out, **fresh}.items():
        (fp32, labels), (int8, _) = predictions(model, dataset, classifier), predictions(int8_model, dataset, classifier)
        row = {"n": len(labels), "fp32_top1": 100 * (fp32 == labels).float().mean().item(),
               "int8_top1": 100 * (int8 == labels).float().mean().item(),
               "same_prediction": 100 * (fp32 == int8).float().mean().item()}
        result[f"int8_{name}"] = {k: round(v, 2) for k, v in row.items()}
        print(f"ViT mini-CLIP, {name:15s} ({row['n']:4d} images): fp32 (exact) {row['fp32_top1']:6.2f}%  int8 "
              f"{row['int8_top1']:6.2f}%  same prediction {row['same_prediction']:6.2f}%")
    if not patch_dropout:
        return result
    start = time.perf_counter()
    dropped = build_random_clip("mini-vit", seed=recipe["seed"])
    dropped.visual.ln_pre.register_forward_pre_hook(drop_patches(patch_keep))
    dropped_history = recipes.fit_on_shapes(dropped, recipe, progress=False)
    for name, h in (("all patches", history), (f"{patch_keep:.0%} of patches", dropped_history)):
        print(f"ViT mini-CLIP trained on {name:15s}: seen pairs {h['val_top1'].iloc[-1]:6.2f}%  "
              f"held-out pairs {h['held_out_top1'].iloc[-1]:6.2f}%")
    result["patch_dropout"] = {"keep": patch_keep, "seconds": round(time.perf_counter() - start, 1),
                               "seen_top1": round(float(dropped_history["val_top1"].iloc[-1]), 2),
                               "held_out_top1": round(float(dropped_history["held_out_top1"].iloc[-1]), 2),
                               "all_patches_seen_top1": round(float(history["val_top1"].iloc[-1]), 2),
                               "all_patches_held_out_top1": round(float(history["held_out_top1"].iloc[-1]), 2)}
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", choices=["ViT-B/32", "RN50", "mini", "mini-vit"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the matrices that measure the ceiling (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--eval-batches", type=int, default=4, help="batches per evaluation pass")
    parser.add_argument("--eval-repeats", type=int, default=None, help="timed evaluation passes (default 3 on CPU, 5 on CUDA)")
    parser.add_argument("--ensemble", action="store_true",
                        help="build the kit's classifier from the 18 CIFAR-10 prompts instead of the bare names")
    parser.add_argument("--precision", action="store_true", help="compare fp32 and bf16 training accuracy instead")
    parser.add_argument("--accuracy", action="store_true",
                        help="what int8 evaluation and patch dropout cost in accuracy instead (ViT mini-CLIP on shapes)")
    parser.add_argument("--no-patch-dropout", action="store_true",
                        help="with --accuracy: only int8 against fp32, without training a second model")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--out", default=None, help="write the speed figures to this .json file and a markdown "
                        "table of the key ones, with the machine, beside it (.md); `make benchmark`: outputs/benchmark.json")
    args = parser.parse_args(argv)
    if args.out and (args.precision or args.accuracy):
        parser.error("--out writes the speed comparison; run --precision or --accuracy with --json instead")
    if args.out and not args.out.endswith(".json"):
        parser.error(f"--out {args.out}: give a .json path (the markdown table is written beside it as .md)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.precision or args.accuracy:
        result = precision_comparison() if args.precision else accuracy_comparison(patch_dropout=not args.no_patch_dropout)
        if args.json:
            print(json.dumps(result))
        return result
    device = args.device or get_device()
    device = "cuda:0" if device == "cuda" else device  # the report's own spelling; its step tests device == "cpu"
    on_cpu = device == "cpu"
    steps = args.steps or (3 if on_cpu else 20)
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
    repeats = args.eval_repeats or (3 if on_cpu else 5)
    base = build_random_clip(args.model, seed=0)
    resolution = base.visual.input_resolution
    batches = synthetic_batches(args.eval_batches, args.batch_size, resolution)
    print(f"{args.model}, batch {args.batch_size}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"kit autocast by default {autocast_dtype(device)}; {warmup} warm-up + {steps} timed steps each, interleaved")

    matmul_size = args.matmul_size or (2048 if on_cpu else 8192)
    training, report_model, kit_model = time_training(base, batches[0], device, steps, warmup, matmul_size)
    report_train, kit_train = training["report"], training["kit"]
    for name in ("kit", "kit_bf16"):
        if name in training:
            print(f"train step  report {report_train:7.2f} images/s   {name:8s} {training[name]:7.2f} images/s   "
                  f"{name}/report {training[name] / report_train:5.2f}x")
    ceilings = training_ceilings(training, args.batch_size, device, matmul_size)
    print(f"            one step is {training['report_gflop']:.0f} GFLOP (report) and {training['kit_gflop']:.0f} GFLOP "
          f"(kit). At the fp32 matmul rate measured in the same rounds, {ceilings['matmul_gflop_per_s']:.0f} GFLOP/s, plus AdamW's "
          f"{training['kit_optimizer_seconds']:.2f} s, an exact fp32 step cannot exceed {ceilings['ceiling_images_per_s']:.2f}"
          f" images/s; the kit's runs at {ceilings['kit_fraction_of_ceiling']:.0%} of that (target {FRACTION_TARGET:.0%})")
    if "kit_bf16" in training:
        print(f"            bf16: matmul {ceilings['bf16_matmul_gflop_per_s']:.0f} GFLOP/s, ceiling "
              f"{ceilings['bf16_ceiling_images_per_s']:.2f} images/s, the kit's bf16 step at "
              f"{ceilings['kit_bf16_fraction_of_bf16_ceiling']:.0%} of it and {ceilings['kit_bf16_speedup_over_fp32']:.2f}x "
              f"its fp32 step")
    if "kit_bf16_mfu" in ceilings:
        mfu = ceilings["kit_bf16_mfu"]
        print(f"            {ceilings['gpu_name']}: model FLOPs utilisation of the bf16 step "
              + (f"{mfu:.1%} of {ceilings['gpu_bf16_peak_tflop_per_s']} TFLOP/s" if mfu is not None
                 else "not available (its published bf16 peak is not in BF16_PEAK_TFLOPS)"))
    templates = CIFAR10_TEMPLATES if args.ensemble else ["{}"]
    evaluation = time_evaluation(report_model, kit_model, batches, device, repeats, 1, templates)
    for name in ("kit", "kit_int8"):
        if name in evaluation:
            ran = evaluation["kit_precision"] if name == "kit" else "int8"
            print(f"evaluation  report {evaluation['report']:7.2f} images/s   {name:8s} {evaluation[name]:7.2f} images/s"
                  f"   {name}/report {evaluation[name] / evaluation['report']:5.2f}x   (kit in {ran})")
    if "int8_copy_seconds" in evaluation:
        print(f"            making the int8 copy took {evaluation['int8_copy_seconds']:.2f} s, once per evaluation")
    result = {"model": args.model, "batch_size": args.batch_size, "device": device,
              "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
              "report_train_images_per_s": round(report_train, 3), "kit_train_images_per_s": round(kit_train, 3),
              "train_speedup": round(kit_train / report_train, 3),
              "report_train_gflop_per_step": round(training["report_gflop"], 4),
              "kit_train_gflop_per_step": round(training["kit_gflop"], 4),
              "kit_optimizer_seconds": round(training["kit_optimizer_seconds"], 5), "fraction_target": FRACTION_TARGET,
              "train_amp_default": amp_name(autocast_dtype(device)), "fused_adamw": training["fused_adamw"],
              "report_eval_images_per_s": round(evaluation["report"], 3), "kit_eval_images_per_s": round(evaluation["kit"], 3),
              "eval_speedup": round(evaluation["kit"] / evaluation["report"], 3), "eval_batches": args.eval_batches,
              "kit_eval_templates": len(templates), "kit_eval_precision": evaluation["kit_precision"]} | ceilings
    if "kit_bf16" in training:
        result["kit_bf16_train_images_per_s"] = round(training["kit_bf16"], 3)
    if "kit_int8" in evaluation:
        result |= {"kit_int8_eval_images_per_s": round(evaluation["kit_int8"], 3),
                   "int8_eval_speedup": round(evaluation["kit_int8"] / evaluation["report"], 3),
                   "int8_copy_seconds": round(evaluation["int8_copy_seconds"], 3)}
    if args.out:
        result["machine"] = results_file.machine()
        print("wrote {} and {}".format(*results_file.write_results(result, args.out)))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
