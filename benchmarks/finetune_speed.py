"""The report's training step and evaluateModel against the kit's, on the same model, batch and images.

    python benchmarks/finetune_speed.py                 # ViT-B/32, batch 32, this machine's device
    python benchmarks/finetune_speed.py --steps 2 --warmup 1 --json
    python benchmarks/finetune_speed.py --precision     # does bf16 autocast cost accuracy? (mini-CLIP on shapes)

Both sides start from the same randomly initialised ViT-B/32 (no download): the architecture, not the
weights, sets the speed. The report's step is clip_helpers.report.trainStep, its listing as printed
(Adam; on CUDA the fp16 model cast to fp32 around every step); the kit's is clip_helpers.train.train_step
(fp32 weights + autocast where it pays, fused AdamW, each distinct caption encoded once up to its end token).
Report and kit are timed alternately in one process, so a busy machine slows both alike.
"""
import argparse
import copy
import json
import time
import warnings

import clip
import torch

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from clip_helpers import report, train  # noqa: E402
from clip_helpers.device import autocast_dtype, get_device  # noqa: E402
from clip_helpers.models import build_random_clip  # noqa: E402
from clip_helpers.text import CIFAR10_CLASSES, CIFAR10_TEMPLATES  # noqa: E402
from clip_helpers.zeroshot import build_classifier, evaluate  # noqa: E402


def seconds(fn, device):
    """Wall time of fn(), waiting for the GPU to finish so queued kernels are counted."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_seconds(report_fn, kit_fn, device, rounds, warmup):
    """(report seconds, kit seconds) over `rounds` timed rounds after `warmup` untimed ones.

    The two alternate within every round, so a slowdown of the machine hits both alike.
    """
    times = [0.0, 0.0]
    for round_ in range(warmup + rounds):
        for i, fn in enumerate((report_fn, kit_fn)):
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


def kit_setup(base, device):
    model = copy.deepcopy(base).to(device).train()
    config = train.TrainConfig(class_names=CIFAR10_CLASSES, lr=5e-5, weight_decay=0.2)
    return model, train.make_optimizer(model, config), train.make_scaler(device, config.amp)


def time_training(base, batch, device, steps, warmup):
    """(report images/s, kit images/s) over `steps` timed steps each, after `warmup` untimed ones."""
    images, labels = batch
    texts = bare_captions(labels.tolist())
    # The report's loader yields clip.tokenize(texts): 77 tokens, the context of OpenAI's models.
    report_batch = (images, clip.tokenize(texts, context_length=base.context_length))
    report_model, report_optimizer = report_setup(base, device)
    kit_model, kit_optimizer, scaler = kit_setup(base, device)
    report_model.train()

    def report_step():
        report.trainStep(report_model, report_optimizer, report_batch, device).item()  # its loop calls .item()

    def kit_step():
        train.train_step(kit_model, images, labels, texts, kit_optimizer, scaler)

    rates = tuple(steps * len(images) / t for t in interleaved_seconds(report_step, kit_step, device, steps, warmup))
    return rates, report_model, kit_model


def time_evaluation(report_model, kit_model, batches, device, repeats, warmup, templates=("{}",)):
    """(report images/s, kit images/s): evaluateModel on (images, 77-token captions) batches vs zero-shot.

    The kit's time includes building its classifier from `templates` (default: the report's bare class
    names, so both sides read the same captions), once per pass.
    """
    context = report_model.context_length
    report_batches = [(images, clip.tokenize(bare_captions(labels.tolist()), context_length=context))
                      for images, labels in batches]

    def report_eval():
        report.evaluateModel(report_model, report_batches, device)

    def kit_eval():
        kit_model.eval()
        evaluate(kit_model, batches, build_classifier(kit_model, CIFAR10_CLASSES, list(templates)))

    n_images = repeats * sum(len(images) for images, _ in batches)
    return tuple(n_images / t for t in interleaved_seconds(report_eval, kit_eval, device, repeats, warmup))


def precision_comparison():
    """Seen- and held-out-pair zero-shot top-1 of mini-CLIP trained with the kit's loop in fp32 and under bf16
    autocast (what the kit uses on GPUs; on a CPU without bf16 hardware it is emulated: slow, same rounding)."""
    from clip_helpers.train import train_mini_clip
    result = {}
    for amp in (None, "bfloat16"):
        start = time.perf_counter()
        _, _, history = train_mini_clip({"amp": amp}, progress=False)
        last = history.iloc[-1]
        name = amp or "float32"
        result[name] = {"seen_top1": round(float(last["val_top1"]), 2), "heldout_top1": round(float(last["heldout_top1"]), 2),
                        "train_loss": round(float(last["train_loss"]), 4), "seconds": round(time.perf_counter() - start, 1)}
        print(f"mini-CLIP on shapes, {name:8s}: seen pairs {last['val_top1']:6.2f}%  held-out pairs "
              f"{last['heldout_top1']:6.2f}%  final train loss {last['train_loss']:.4f}")
    result["seen_top1_difference"] = round(result["bfloat16"]["seen_top1"] - result["float32"]["seen_top1"], 2)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", choices=["ViT-B/32", "RN50", "mini"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--eval-batches", type=int, default=2, help="batches per evaluation pass")
    parser.add_argument("--eval-repeats", type=int, default=None, help="timed evaluation passes (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--ensemble", action="store_true",
                        help="build the kit's classifier from the 18 CIFAR-10 prompts instead of the bare names")
    parser.add_argument("--precision", action="store_true", help="compare fp32 and bf16 training accuracy instead")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.precision:
        result = precision_comparison()
        if args.json:
            print(json.dumps(result))
        return result
    device = args.device or get_device()
    device = "cuda:0" if device == "cuda" else device  # the report's own spelling; its step tests device == "cpu"
    on_cpu = device == "cpu"
    steps = args.steps or (3 if on_cpu else 20)
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
    repeats = args.eval_repeats or (1 if on_cpu else 5)
    base = build_random_clip(args.model, seed=0)
    resolution = base.visual.input_resolution
    batches = synthetic_batches(args.eval_batches, args.batch_size, resolution)
    print(f"{args.model}, batch {args.batch_size}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"kit autocast {autocast_dtype(device)}; {warmup} warm-up + {steps} timed steps each, interleaved")

    (report_train, kit_train), report_model, kit_model = time_training(base, batches[0], device, steps, warmup)
    print(f"train step  report {report_train:7.2f} images/s   kit {kit_train:7.2f} images/s   "
          f"kit/report {kit_train / report_train:5.2f}x")
    templates = CIFAR10_TEMPLATES if args.ensemble else ["{}"]
    report_eval, kit_eval = time_evaluation(report_model, kit_model, batches, device, repeats, 1, templates)
    print(f"evaluation  report {report_eval:7.2f} images/s   kit {kit_eval:7.2f} images/s   "
          f"kit/report {kit_eval / report_eval:5.2f}x")
    result = {"model": args.model, "batch_size": args.batch_size, "device": device,
              "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
              "report_train_images_per_s": round(report_train, 3), "kit_train_images_per_s": round(kit_train, 3),
              "train_speedup": round(kit_train / report_train, 3),
              "report_eval_images_per_s": round(report_eval, 3), "kit_eval_images_per_s": round(kit_eval, 3),
              "eval_speedup": round(kit_eval / report_eval, 3), "eval_batches": args.eval_batches,
              "kit_eval_templates": len(templates)}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
