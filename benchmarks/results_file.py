"""The benchmark's results file: the JSON figures, and a markdown table of the key ones with the machine they
were measured on (CPU model and its matrix flags, threads, torch version, date), both written atomically."""
import datetime
import json
import platform
from pathlib import Path

import torch

from clip_helpers.files import write_text_atomically

# CPU flags that decide which matrix-product paths torch can use (fp32 FMA, int8 VNNI, bf16 in hardware).
MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")

# (figure, key in the JSON, how it is printed): the key figures of a run, those of the target first.
KEY_FIGURES = [
    ("kit fp32 step / fp32 ceiling", "kit_fraction_of_ceiling", "{:.0%}"),
    ("kit bf16 step / bf16 ceiling", "kit_bf16_fraction_of_bf16_ceiling", "{:.0%}"),
    ("kit bf16 step, image tower compiled / bf16 ceiling", "kit_bf16_compiled_fraction_of_bf16_ceiling", "{:.0%}"),
    ("target for both", "fraction_target", "{:.0%}"),
    ("int8 evaluation / report's evaluation", "int8_eval_speedup", "{:.2f}x"),
    ("kit evaluation / report's evaluation", "eval_speedup", "{:.2f}x"),
    ("kit fp32 step / report's step", "train_speedup", "{:.2f}x"),
    ("report's step, images/s", "report_train_images_per_s", "{:.2f}"),
    ("kit fp32 step, images/s", "kit_train_images_per_s", "{:.2f}"),
    ("kit bf16 step, images/s", "kit_bf16_train_images_per_s", "{:.2f}"),
    ("fp32 ceiling, images/s", "ceiling_images_per_s", "{:.2f}"),
    ("bf16 ceiling, images/s", "bf16_ceiling_images_per_s", "{:.2f}"),
    ("fp32 matrix products, GFLOP/s", "matmul_gflop_per_s", "{:.0f}"),
    ("bf16 matrix products, GFLOP/s", "bf16_matmul_gflop_per_s", "{:.0f}"),
    ("bf16 model FLOPs utilisation (GPU)", "kit_bf16_mfu", "{:.1%}"),
    ("torch.compile of the image tower (its first step), s", "compile_seconds", "{:.1f}"),
]


def cpu_description(cpuinfo="/proc/cpuinfo") -> dict:
    """{"cpu": model name, "cpu_flags": the MATRIX_FLAGS it has}; platform.processor() where /proc is absent."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"cpu": platform.processor() or "unknown", "cpu_flags": []}
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in lines.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.processor() or "unknown"),
            "cpu_flags": [flag for flag in MATRIX_FLAGS if flag in flags]}


def machine(now=None) -> dict:
    """What the figures depend on besides the code: CPU, threads, torch, GPU, and when they were measured."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return cpu_description() | {"threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": gpu,
                                "date": now.strftime("%Y-%m-%d %H:%M UTC")}


def markdown(result: dict) -> str:
    """A table of the KEY_FIGURES that `result` holds, headed by the machine they were measured on."""
    about = result["machine"]
    flags = ", ".join(about["cpu_flags"]) or "none of " + ", ".join(MATRIX_FLAGS)
    lines = [f"# Benchmark: {result['model']}, batch {result['batch_size']}, {result['device']}", "",
             f"Measured {about['date']} with torch {about['torch']} on {about['cpu']} ({about['threads']} threads; "
             f"matrix flags: {flags})" + (f", GPU {about['gpu']}" if about["gpu"] else "") +
             f"; {result['warmup']} warm-up and {result['steps']} timed steps, interleaved.", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {form.format(result[key])} |" for name, key, form in KEY_FIGURES
              if result.get(key) is not None]
    return "\n".join(lines + profile_table(result.get("step_profile"), result)) + "\n"


def profile_table(step_profile, result=None) -> list[str]:
    """Markdown lines: the share of each step's profiled time per kind of operator (benchmarks/profile_step.py),
    and the rate of its matrix products beside the probe's that the ceiling assumes (where `result` has it)."""
    if not step_profile:
        return []
    names = list(step_profile)
    groups = list(step_profile[names[0]]["shares"])
    lines = ["", "Where the kit's step spends its time (torch.profiler, operators' own time):", "",
             "| operators | " + " | ".join(f"{name} step" for name in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {group} | " + " | ".join(f"{step_profile[name]['shares'][group]:.0%}" for name in names) + " |"
              for group in groups]
    rates = [step_profile[name].get("matmul_gflop_per_s") for name in names]
    probes = [(result or {}).get(PROBE_KEYS[name]) for name in names]
    if None not in rates + probes:
        lines.append("| matrix products' GFLOP/s in the step / the ceiling's probe | " +
                     " | ".join(f"{rate:.0f} / {probe:.0f}" for rate, probe in zip(rates, probes)) + " |")
    return lines


PROBE_KEYS = {"fp32": "matmul_gflop_per_s", "bf16": "bf16_matmul_gflop_per_s"}  # the probe of each profiled step


def write_results(result: dict, out) -> tuple[Path, Path]:
    """(json path, markdown path): `result` with its machine added, as `out` and as `out` with the suffix .md."""
    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"--out {out}: give a .json path; the markdown table goes beside it as {out.stem}.md")
    result = result | {"machine": result.get("machine") or machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    table = out.with_suffix(".md")
    write_text_atomically(out, json.dumps(result, indent=1) + "\n")
    write_text_atomically(table, markdown(result))
    return out, table
