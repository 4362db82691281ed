"""Loading CLIP: OpenAI's pretrained weights through `clip.load`, local checkpoints, and the kit's mini-CLIP.

Every model leaves here in fp32 and eval mode. `clip.load` keeps CUDA models in fp16, which is fine for
inference but breaks a training loop (Adam on fp16 weights underflows); that is why the report had to
cast the model back and forth around every optimizer step.
"""
import os
import urllib.error
from pathlib import Path

import clip
import torch
from clip.clip import _MODELS, _transform
from clip.model import CLIP, build_model

from .device import get_device

# Small enough to train from scratch on 2 CPU cores in minutes. Text heads follow clip's
# build_model rule (width // 64) so a saved state dict loads back through load_clip.
MINI_CLIP = dict(
    embed_dim=64,
    image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=16, vision_patch_size=None,
    context_length=16, vocab_size=49408,
    transformer_width=64, transformer_heads=1, transformer_layers=2,
)

# A ViT mini-CLIP (4x4 patches of 8 pixels), for checking what changes a ViT's numbers, such as int8 evaluation
# (clip_helpers.quantize): MINI_CLIP's ResNet tower has no patches and almost no linear layers.
MINI_VIT_CLIP = dict(MINI_CLIP, vision_layers=3, vision_width=128, vision_patch_size=8)

# The published shapes of two pretrained models, for randomly initialised stand-ins (tests, benchmarks).
ARCHITECTURES = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "mini": MINI_CLIP,
    "mini-vit": MINI_VIT_CLIP,
}

OFFLINE_HINT = ("Without internet, use the kit's own model: load_clip('mini'), or run the notebooks "
                "with PROFILE=offline (mini-CLIP trained on clip_helpers.shapes).")


def preprocess_for(resolution):
    """clip's own image transform (resize, centre crop, RGB, normalise) at `resolution` pixels."""
    return _transform(resolution)


def build_random_clip(name="mini", seed=0):
    """A randomly initialised CLIP of a named architecture (ARCHITECTURES), the same for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**ARCHITECTURES[name]).float().eval()


def weights_file(name, download_root="data/weights"):
    """Where `clip.load(name, download_root=...)` keeps that model's file."""
    return Path(download_root) / os.path.basename(_MODELS[name])


def weights_cached(name, download_root="data/weights"):
    return name in _MODELS and weights_file(name, download_root).is_file()


def load_clip(name_or_path, device=None, download_root="data/weights"):
    """(model, preprocess) for a pretrained name, "mini", or a checkpoint file; the model is fp32.

    Names are clip.available_models() (downloaded once into `download_root`). A path may be one of
    OpenAI's JIT archives or a plain state dict saved with torch.save(model.state_dict(), path).
    """
    device = device or get_device()
    if name_or_path == "mini":
        model = build_random_clip("mini")
    elif name_or_path in _MODELS:
        model = load_pretrained(name_or_path, download_root)
    elif Path(name_or_path).is_file():
        model = load_checkpoint(name_or_path)
    else:
        raise ValueError(f"Unknown CLIP model {name_or_path!r}: not a file, and not one of "
                         f"{clip.available_models() + ['mini']}.")
    model = model.float().eval().to(device)
    return model, preprocess_for(model.visual.input_resolution)


def load_pretrained(name, download_root):
    from .rehearsal import checksums_skipped

    source = name
    if weights_file(name, download_root).is_file() and checksums_skipped():
        source = str(weights_file(name, download_root))  # clip.load checks a file's SHA256 only when given the name
    try:
        model, _ = clip.load(source, device="cpu", jit=False, download_root=str(download_root))
    except (urllib.error.URLError, OSError) as error:
        raise RuntimeError(
            f"Could not download the {name} weights from {_MODELS[name]} ({error}). Expected the file "
            f"{weights_file(name, download_root)} in the cache folder {download_root}/: connect to the "
            f"internet once, or copy the file there by hand. {OFFLINE_HINT}") from error
    return model


def load_checkpoint(path):
    """A JIT archive (OpenAI's format) or a state dict; clip.load itself fails on the latter (EOFError)."""
    try:
        state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    # build_model infers the architecture but casts to fp16 before loading, which would round our
    # fp32 checkpoints; load the same tensors again once the model is fp32.
    model = build_model(dict(state_dict)).float()
    model.load_state_dict(state_dict)
    return model


def model_summary(model):
    """The four numbers the report prints for its model."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "input_resolution": model.visual.input_resolution,
        "context_length": model.context_length,
        "vocab_size": model.vocab_size,
    }
