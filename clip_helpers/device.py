"""Where tensors live and which reduced precision is worth using there."""
import contextlib

import torch


def get_device():
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16():
    """True when the CPU multiplies bf16 in hardware; emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device):
    """The dtype autocast should use on `device`, or None where fp32 is the fastest honest choice."""
    device = str(device)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device, enabled=True, dtype=None):
    """torch.autocast with `dtype` (default: the choice above), or a no-op context where there is none."""
    dtype = (dtype or autocast_dtype(device)) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=dtype)
