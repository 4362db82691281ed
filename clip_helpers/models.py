"""Loading CLIP: OpenAI's pretrained weights through `clip.load`, local checkpoints, and the kit's mini-CLIP.

Every model leaves here in fp32 and eval mode. `clip.load` keeps CUDA models in fp16, which is fine for
inference but breaks a training loop (Adam on fp16 weights underflows); that is why the report had to
cast the model back and forth around every optimizer step.
"""
import pickle
import re
import urllib.error
import zipfile
from pathlib import Path

import clip
import torch
# clip has no public name for its image transform (clip.load returns it, but only with a model): one wrapper, here.
from clip.clip import _transform
from clip.model import CLIP, build_model

from .device import get_device
from .downloads import checksums_skipped, weights_file, weights_url

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


def preprocess_for(resolution: int):
    """clip's own image transform (resize, centre crop, RGB, normalise) at `resolution` pixels."""
    return _transform(resolution)


def build_random_clip(name: str = "mini", seed: int = 0) -> CLIP:
    """A randomly initialised CLIP of a named architecture (ARCHITECTURES), the same for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**ARCHITECTURES[name]).float().eval()


def load_clip(name_or_path: str, device=None, download_root="data/weights") -> tuple[CLIP, object]:
    """(model, preprocess) for a pretrained name, "mini", or a checkpoint file; the model is fp32.

    Names are clip.available_models() (downloaded once into `download_root`). A path may be one of
    OpenAI's JIT archives or a plain state dict saved with torch.save(model.state_dict(), path).
    """
    device = device or get_device()
    if name_or_path == "mini":
        model = build_random_clip("mini")
    elif name_or_path in clip.available_models():
        model = load_pretrained(name_or_path, download_root)
    elif Path(name_or_path).is_file():
        model = load_checkpoint(name_or_path)
    else:
        raise ValueError(f"Unknown CLIP model {name_or_path!r}: not a file, and not one of "
                         f"{clip.available_models() + ['mini']}.")
    check_finite_weights(model.state_dict(), name_or_path)
    model = model.float().eval().to(device)
    return model, preprocess_for(model.visual.input_resolution)


def check_finite_weights(state_dict: dict, source) -> None:
    """A ValueError naming the tensors of `state_dict` that hold NaN or inf: such a model's every feature would
    be NaN, and every score from it meaningless."""
    bad = [name for name, tensor in state_dict.items()
           if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(f"{source} has NaN or inf in {len(bad)} of its {len(state_dict)} tensors: "
                         f"{bad[:8]}{' ...' if len(bad) > 8 else ''}. It was probably saved after training diverged: "
                         f"load an earlier checkpoint, or train again with a lower lr or in fp32.")


def load_pretrained(name, download_root):
    source = name
    if weights_file(name, download_root).is_file() and checksums_skipped():
        source = str(weights_file(name, download_root))  # clip.load checks a file's SHA256 only when given the name
    try:
        model, _ = clip.load(source, device="cpu", jit=False, download_root=str(download_root))
    except (urllib.error.URLError, OSError) as error:
        raise RuntimeError(
            f"Could not download the {name} weights from {weights_url(name)} ({error}). Expected the file "
            f"{weights_file(name, download_root)} in the cache folder {download_root}/: connect to the "
            f"internet once, or copy the file there by hand. {OFFLINE_HINT}") from error
    return model


WHAT_LOADS = ("load_clip reads OpenAI's TorchScript archives and state dicts saved with "
              "torch.save(model.state_dict(), path). In a run folder, model.pt holds the weights; checkpoint.pt "
              "is the training state and history.csv the metrics.")


def text_start(path) -> str:
    """' (a text file starting "...")' when the file begins as text, else ''."""
    with open(path, "rb") as f:
        head = f.read(80)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    is_text = text.strip() and all(c.isprintable() or c.isspace() for c in text)
    return f" (a text file starting {text.splitlines()[0]!r})" if is_text else ""


def read_state_dict(path: Path) -> dict:
    """The tensors of a TorchScript archive or of a torch.save state dict, or a ValueError saying what the file is."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), probably from an interrupted download or save: delete it, "
                         f"then download or save it again.")
    if zipfile.is_zipfile(path):
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError:
            pass  # a torch.save archive, not TorchScript
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise ValueError(f"{path} holds Python objects besides tensors ({found.group(1)}); the kit loads tensors "
                             f"only (weights_only=True) so that no file can run code. {WHAT_LOADS}") from error
        raise ValueError(f"{path} is not a model file torch wrote{text_start(path)}. {WHAT_LOADS}") from error
    except Exception as error:  # a truncated archive (RuntimeError), EOFError, ...
        raise ValueError(f"{path} cannot be read as a model file{text_start(path)}: it may be truncated or damaged "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                         f"{WHAT_LOADS}") from error
    if isinstance(loaded, dict) and "model" in loaded and ("optimizer" in loaded or "epoch" in loaded):
        raise ValueError(f"{path} is a training checkpoint (epoch {loaded.get('epoch')}, with the optimizer's state), "
                         f"not a model: load model.pt from the same run folder, or save its 'model' entry alone "
                         f"with torch.save(checkpoint['model'], path) and load that.")
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds a {type(loaded).__name__} that is not a state dict (names to tensors). "
                         f"{WHAT_LOADS}")
    return loaded


def load_checkpoint(path):
    """A JIT archive (OpenAI's format) or a state dict; clip.load itself fails on the latter (EOFError)."""
    state_dict = read_state_dict(Path(path))
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    try:
        # build_model infers the architecture but casts to fp16 before loading, which would round our
        # fp32 checkpoints; load the same tensors again once the model is fp32.
        model = build_model(dict(state_dict)).float()
        model.load_state_dict(state_dict)
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as error:
        raise ValueError(f"{path} holds tensors, but not those of a CLIP model ({type(error).__name__}: {error}; its "
                         f"first names are {list(state_dict)[:4]}). {WHAT_LOADS}") from error
    return model


def model_summary(model) -> dict[str, int]:
    """The four numbers the report prints for its model."""
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "input_resolution": model.visual.input_resolution,
        "context_length": model.context_length,
        "vocab_size": model.vocab_size,
    }
