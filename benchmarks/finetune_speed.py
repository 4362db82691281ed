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
kit's fp32 step as a fraction of it (kit_fraction_of_ceiling; the target is speed_summary.FRACTION_TARGET). Where the
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

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_helpers.replication import report  # noqa: E402
from clip_helpers.training import optim, step  # noqa: E402
from clip_helpers.training.config import TrainConfig  # noqa: E402
from clip_helpers.device import autocast_dtype, cpu_has_bf16, get_device, make_scaler, precision_name  # noqa: E402
from clip_helpers.models import build_random_clip  # noqa: E402
from clip_helpers.quantize import int8_image_tower  # noqa: E402
from clip_helpers.text import CIFAR10_CLASSES, CIFAR10_TEMPLATES  # noqa: E402
from clip_helpers.zeroshot import build_classifier, evaluate  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by path, its modules are beside it
import accuracy_costs  # noqa: E402
import compiled_step  # noqa: E402
import profile_step  # noqa: E402
import results_file  # noqa: E402
from speed_summary import print_evaluation, print_training, result_figures  # noqa: E402
from timing import interleaved_seconds, matmul_gflop_per_s, matmul_probe, step_gflop  # noqa: E402


# Published dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a piece of torch.cuda.get_device_name();
# the first piece found in the name wins, so the more specific come first.
BF16_PEAK_TFLOPS = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989),
                    ("A100", 312), ("L40S", 362), ("L4", 121)]


def bf16_peak_tflops(gpu_name):
    """The published dense bf16 peak of a GPU by name, or None when the table does not know it."""
    return next((peak for piece, peak in BF16_PEAK_TFLOPS if piece in gpu_name), None)


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


def time_training(base, batch, device, steps, warmup, matmul_size=2048, compile_bf16=False):
    """(figures, report_model, kit_model). figures: "report", "kit" (fp32) and, where bf16 is hardware,
    "kit_bf16" images/s over `steps` timed steps each after `warmup` untimed ones; "<name>_gflop" per step;
    "kit_optimizer_seconds", the kit's AdamW update alone (work every exact step must do besides its matrix
    products). kit_model is the fp32 one. `compile_bf16` (with bf16): also "kit_bf16_compiled", the bf16 step
    with its image tower compiled (benchmarks/compiled_step.py), and "compile_seconds", its first call's."""
    images, labels = batch
    texts = bare_captions(labels.tolist())
    # The report's loader yields clip.tokenize(texts): 77 tokens, the context of OpenAI's models.
    report_batch = (images, clip.tokenize(texts, context_length=base.context_length))
    report_model, report_optimizer = report_setup(base, device)
    report_model.train()

    def report_step():
        report.trainStep(report_model, report_optimizer, report_batch, device).item()  # its loop calls .item()

    kits = {name: kit_step_for(base, device, images, labels, texts, amp) for name, amp in kit_precisions(device).items()}
    compiled = compiled_step.add_compiled(kits, lambda: kit_step_for(base, device, images, labels, texts, "bfloat16"),
                                          enabled=compile_bf16)
    steps_fns = {"report": report_step} | {name: step for name, (_, _, step) in kits.items()}
    # The ceiling's parts (matrix-product rate, AdamW's update on the kit's gradients) are timed inside the same
    # rounds as the steps: timed apart, a busy moment of the machine would put the kit above its own ceiling.
    probes = {"": matmul_probe(device, matmul_size, torch.float32)}
    if "kit_bf16" in kits:
        probes["bf16_"] = matmul_probe(device, matmul_size, torch.bfloat16)
    fns = steps_fns | {f"{prefix}matmul": fn for prefix, (fn, _) in probes.items()} | {"adamw": kits["kit"][1].step}
    times = dict(zip(fns, interleaved_seconds(list(fns.values()), device, steps, warmup)))
    figures = {name: steps * len(images) / times[name] for name in steps_fns}
    # the compiled step does the eager bf16 step's work; FlopCounterMode would count it through a recompile
    figures |= {f"{name}_gflop": step_gflop(fn) for name, fn in steps_fns.items() if name != "kit_bf16_compiled"}
    figures |= {f"{prefix}matmul_rate": steps * gflop / times[f"{prefix}matmul"] for prefix, (_, gflop) in probes.items()}
    figures["kit_optimizer_seconds"] = times["adamw"] / steps
    figures["fused_adamw"] = bool(kits["kit"][1].defaults.get("fused"))
    return figures | compiled, report_model, kits["kit"][0]


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
        int8_model = int8_image_tower(kit_model, calibration_images=batches[0][0])
        result["int8_copy_seconds"] = time.perf_counter() - start
        fns["kit_int8"] = zero_shot(int8_model)
    n_images = repeats * sum(len(images) for images, _ in batches)
    times = interleaved_seconds(list(fns.values()), device, repeats, warmup)
    # evaluate's "auto": the kit's fp32-labelled pass is bf16 on hardware that has it; say which ran
    result["kit_precision"] = precision_name(device, "auto")
    return result | {name: n_images / t for name, t in zip(fns, times)}


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
    if "kit_bf16_compiled" in training:  # the same work as the eager bf16 step, so the same ceiling
        result["kit_bf16_compiled_fraction_of_bf16_ceiling"] = round(
            training["kit_bf16_compiled"] / result["bf16_ceiling_images_per_s"], 3)
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
    parser.add_argument("--no-profile", action="store_true", help="skip the profile of the kit's fp32 and bf16 steps "
                        "(benchmarks/profile_step.py: where each step's time goes, in the results as step_profile)")
    parser.add_argument("--compile", action="store_true", help="also time the bf16 step with its image tower "
                        "compiled by torch.compile (needs a C++ compiler; compiling takes a minute or more)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--out", default=None, help="write the speed figures to this .json file and a markdown "
                        "table of the key ones, with the machine, beside it (.md); `make benchmark`: outputs/benchmark.json")
    args = parser.parse_args(argv)
    if args.out and (args.precision or args.accuracy):
        parser.error("--out writes the speed comparison; run --precision or --accuracy with --json instead")
    if args.out and not args.out.endswith(".json"):
        parser.error(f"--out {args.out}: give a .json path (the markdown table is written beside it as .md)")
    return args


def run_settings(args):
    """The device (the report's spelling, "cuda:0") and the timing settings, with their per-device defaults."""
    device = args.device or get_device()
    device = "cuda:0" if device == "cuda" else device  # the report's own spelling; its step tests device == "cpu"
    on_cpu = device == "cpu"
    return {"device": device, "steps": args.steps or (3 if on_cpu else 20),
            "warmup": args.warmup if args.warmup is not None else (1 if on_cpu else 3),
            "repeats": args.eval_repeats or (3 if on_cpu else 5),
            "matmul_size": args.matmul_size or (2048 if on_cpu else 8192)}


def speed_comparison(args):
    """Time the report's and the kit's training steps and evaluations, print them, and return result_figures."""
    settings = run_settings(args)
    device, steps, warmup = settings["device"], settings["steps"], settings["warmup"]
    base = build_random_clip(args.model, seed=0)
    batches = synthetic_batches(args.eval_batches, args.batch_size, base.visual.input_resolution)
    print(f"{args.model}, batch {args.batch_size}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"kit autocast by default {autocast_dtype(device)}; {warmup} warm-up + {steps} timed steps each, interleaved")
    training, report_model, kit_model = time_training(base, batches[0], device, steps, warmup, settings["matmul_size"],
                                                      compile_bf16=args.compile and compiled_step.ready())
    ceilings = training_ceilings(training, args.batch_size, device, settings["matmul_size"])
    print_training(training, ceilings)
    templates = CIFAR10_TEMPLATES if args.ensemble else ["{}"]
    evaluation = time_evaluation(report_model, kit_model, batches, device, settings["repeats"], 1, templates)
    print_evaluation(evaluation)
    result = result_figures(args, settings, training, ceilings, evaluation, templates)
    if not args.no_profile:
        result |= step_profiles(base, batches[0], device)
    return result


def step_profiles(base, batch, device):
    """{"step_profile": {"fp32": breakdown, "bf16": breakdown}} of the kit's steps (benchmarks/profile_step.py),
    printed. bf16 only where it is hardware, as in the timings: emulated, its profile takes minutes and describes
    the emulation; there "step_profile_skipped" says why."""
    images, labels = batch
    texts = bare_captions(labels.tolist())
    amps = list(kit_precisions(device).values())
    profiles = profile_step.step_profiles(lambda amp: kit_step_for(base, device, images, labels, texts, amp)[2],
                                          device, amps)
    for name, profile_ in profiles.items():
        print(profile_step.summary_line(name, profile_))
    if "bfloat16" in amps:
        return {"step_profile": profiles}
    skipped = {"bf16": f"{device} has no bf16 hardware: torch would emulate it, slower than fp32"}
    print(f"profile     kit bf16 step skipped: {skipped['bf16']}")
    return {"step_profile": profiles, "step_profile_skipped": skipped}


def main(argv=None):
    args = parse_args(argv)
    if args.precision or args.accuracy:
        result = (accuracy_costs.precision_comparison() if args.precision
                  else accuracy_costs.accuracy_comparison(patch_dropout=not args.no_patch_dropout))
        if args.json:
            print(json.dumps(result))
        return result
    result = speed_comparison(args)
    if args.out:
        result["machine"] = results_file.machine()
        print("wrote {} and {}".format(*results_file.write_results(result, args.out)))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
