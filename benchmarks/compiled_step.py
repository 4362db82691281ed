"""The kit's training step with its image tower compiled by torch.compile (inductor), for finetune_speed --compile:
does fusing the elementwise work around the matrix products (autocast's casts, QuickGELU's mul and sigmoid,
layer norms, layout copies) bring the bf16 step closer to its ceiling?

Only the image tower is compiled. It does nearly all of the step's FLOPs (ViT-B/32: 32 images x 50 tokens against
about ten distinct captions of a few tokens), and clip_helpers.text.encode_texts tokenizes and removes duplicate
captions in Python, which would break the graph and recompile for every new caption length. Compiling happens
at the first call, forward and backward; that call's seconds are returned apart, since a user pays them once
per process (more when inductor's on-disk cache is cold) while the timed rounds see only compiled steps.
"""
import shutil
import time

import torch


def compiler_missing() -> str | None:
    """Why torch.compile cannot build CPU kernels here (inductor compiles C++ with the system's compiler), or None."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) on PATH: inductor compiles its CPU kernels with one"
    return None


def compile_image_tower(model):
    """`model` with its image tower replaced by torch.compile's wrapper (parameters shared, state_dict keys gain
    "_orig_mod."): model.encode_image, and so the kit's train_step, then run the compiled tower."""
    model.visual = torch.compile(model.visual)
    return model


def ready() -> bool:
    """Whether --compile can run here; if not, says why (the rest of the benchmark runs as without it)."""
    missing = compiler_missing()
    if missing:
        print(f"--compile skipped: {missing}")
    return missing is None


def add_compiled(kits: dict, make_bf16_kit, enabled: bool = True) -> dict:
    """Where `enabled` and `kits` (finetune_speed's {name: (model, optimizer, step)}) has "kit_bf16", add
    "kit_bf16_compiled": make_bf16_kit()'s kit with its image tower compiled. Returns {"compile_seconds": its first
    step's seconds, which compile forward and backward (one step's work included)}, else {}."""
    if not enabled or "kit_bf16" not in kits:
        return {}
    model, optimizer, step = make_bf16_kit()
    compile_image_tower(model)
    start = time.perf_counter()
    step()
    kits["kit_bf16_compiled"] = (model, optimizer, step)
    return {"compile_seconds": time.perf_counter() - start}
