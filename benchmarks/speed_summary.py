"""What a speed comparison says: its lines on the terminal and its JSON figures (settings, rates, speed-ups,
ceilings), from the timings of benchmarks/finetune_speed.py."""
import torch

from clip_helpers.device import autocast_dtype

FRACTION_TARGET = 0.85  # the kit's exact fp32 step against the ceiling measured in the same run


def amp_name(dtype):
    """"bfloat16", "float16", or None for fp32 (JSON null)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def print_training(training, ceilings):
    report_train = training["report"]
    for name in ("kit", "kit_bf16"):
        if name in training:
            print(f"train step  report {report_train:7.2f} images/s   {name:8s} {training[name]:7.2f} images/s   "
                  f"{name}/report {training[name] / report_train:5.2f}x")
    print(f"            one step is {training['report_gflop']:.0f} GFLOP (report) and {training['kit_gflop']:.0f} GFLOP "
          f"(kit). At the fp32 matmul rate measured in the same rounds, {ceilings['matmul_gflop_per_s']:.0f} GFLOP/s, plus AdamW's "
          f"{training['kit_optimizer_seconds']:.2f} s, an exact fp32 step cannot exceed {ceilings['ceiling_images_per_s']:.2f}"
          f" images/s; the kit's runs at {ceilings['kit_fraction_of_ceiling']:.0%} of that (target {FRACTION_TARGET:.0%})")
    if "kit_bf16" in training:
        print(f"            bf16: matmul {ceilings['bf16_matmul_gflop_per_s']:.0f} GFLOP/s, ceiling "
              f"{ceilings['bf16_ceiling_images_per_s']:.2f} images/s, the kit's bf16 step at "
              f"{ceilings['kit_bf16_fraction_of_bf16_ceiling']:.0%} of it and {ceilings['kit_bf16_speedup_over_fp32']:.2f}x "
              f"its fp32 step")
    if "kit_bf16_compiled" in training:
        print(f"            bf16 with the image tower compiled (torch.compile): {training['kit_bf16_compiled']:.2f} "
              f"images/s, {ceilings['kit_bf16_compiled_fraction_of_bf16_ceiling']:.0%} of the bf16 ceiling; compiling "
              f"(its first step) took {training['compile_seconds']:.1f} s")
    if "kit_bf16_mfu" in ceilings:
        mfu = ceilings["kit_bf16_mfu"]
        print(f"            {ceilings['gpu_name']}: model FLOPs utilisation of the bf16 step "
              + (f"{mfu:.1%} of {ceilings['gpu_bf16_peak_tflop_per_s']} TFLOP/s" if mfu is not None
                 else "not available (its published bf16 peak is not in BF16_PEAK_TFLOPS)"))


def print_evaluation(evaluation):
    for name in ("kit", "kit_int8"):
        if name in evaluation:
            ran = evaluation["kit_precision"] if name == "kit" else "int8"
            print(f"evaluation  report {evaluation['report']:7.2f} images/s   {name:8s} {evaluation[name]:7.2f} images/s"
                  f"   {name}/report {evaluation[name] / evaluation['report']:5.2f}x   (kit in {ran})")
    if "int8_copy_seconds" in evaluation:
        print(f"            making the int8 copy took {evaluation['int8_copy_seconds']:.2f} s, once per evaluation")


def result_figures(args, settings, training, ceilings, evaluation, templates):
    """The JSON object of a speed comparison: settings, rates, speed-ups and ceilings, rounded."""
    report_train, kit_train = training["report"], training["kit"]
    result = {"model": args.model, "batch_size": args.batch_size, "device": settings["device"],
              "threads": torch.get_num_threads(), "steps": settings["steps"], "warmup": settings["warmup"],
              "report_train_images_per_s": round(report_train, 3), "kit_train_images_per_s": round(kit_train, 3),
              "train_speedup": round(kit_train / report_train, 3),
              "report_train_gflop_per_step": round(training["report_gflop"], 4),
              "kit_train_gflop_per_step": round(training["kit_gflop"], 4),
              "kit_optimizer_seconds": round(training["kit_optimizer_seconds"], 5), "fraction_target": FRACTION_TARGET,
              "train_amp_default": amp_name(autocast_dtype(settings["device"])), "fused_adamw": training["fused_adamw"],
              "report_eval_images_per_s": round(evaluation["report"], 3), "kit_eval_images_per_s": round(evaluation["kit"], 3),
              "eval_speedup": round(evaluation["kit"] / evaluation["report"], 3), "eval_batches": args.eval_batches,
              "kit_eval_templates": len(templates), "kit_eval_precision": evaluation["kit_precision"]} | ceilings
    if "kit_bf16" in training:
        result["kit_bf16_train_images_per_s"] = round(training["kit_bf16"], 3)
    if "kit_bf16_compiled" in training:
        result |= {"kit_bf16_compiled_train_images_per_s": round(training["kit_bf16_compiled"], 3),
                   "compile_seconds": round(training["compile_seconds"], 2)}
    if "kit_int8" in evaluation:
        result |= {"kit_int8_eval_images_per_s": round(evaluation["kit_int8"], 3),
                   "int8_eval_speedup": round(evaluation["kit_int8"] / evaluation["report"], 3),
                   "int8_copy_seconds": round(evaluation["int8_copy_seconds"], 3)}
    return result
