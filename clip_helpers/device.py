"""Where tensors live and which reduced precision is worth using there (autocast, and the fp16 gradient scaler)."""
import contextlib

import torch


def get_device() -> str:
    """"cuda" when an NVIDIA (or ROCm) GPU is visible, "mps" on Apple silicon, else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if mps_available():
        return "mps"
    return "cpu"


def mps_available() -> bool:
    """True on a Mac whose GPU torch can use (Apple silicon, macOS 12.3+, a torch built with MPS)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def mps_autocasts_fp16() -> bool:
    """True when this torch can autocast on mps (float16: every Mac that has mps). bf16 on mps needs macOS 14
    and not every op has it, so the kit never picks it there."""
    return torch.amp.autocast_mode.is_autocast_available("mps")


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware; emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device) -> torch.dtype | None:
    """The dtype autocast should use on `device`, or None where fp32 is the fastest honest choice."""
    device = str(device)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    if device.startswith("mps") and mps_autocasts_fp16():
        return torch.float16  # with make_scaler's GradScaler, as on a GPU without bf16
    return None


def autocast(device, enabled: bool = True, dtype: torch.dtype | None = None):
    """torch.autocast with `dtype` (default: the choice above), or a no-op context where there is none. bf16 on a
    CPU also computes attention in fp32 (fp32_attention)."""
    dtype = (dtype or autocast_dtype(device)) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    device_type = str(device).split(":")[0]
    if device_type == "cpu" and dtype == torch.bfloat16:
        return cpu_bf16_autocast()
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def cpu_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16), attention_in_fp32():
        yield


SDPA = torch.nn.functional.scaled_dot_product_attention


def fp32_attention(query, key, value, attn_mask=None, *args, **kwargs):
    """torch's scaled_dot_product_attention, computed in fp32 when its inputs are bf16 on a CPU, returned in bf16.

    torch's CPU flash-attention backward is several times slower in bf16 than in fp32 (for ViT-B/32's heads of
    50 tokens; benchmarks/profile_step.py shows it), and attention is a small share of the model's FLOPs, so
    computing it in fp32 makes the bf16 step faster and its attention more precise.
    """
    if query.dtype != torch.bfloat16 or query.device.type != "cpu":
        return SDPA(query, key, value, attn_mask, *args, **kwargs)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
        return SDPA(query.float(), key.float(), value.float(), attn_mask, *args, **kwargs).to(query.dtype)


@contextlib.contextmanager
def attention_in_fp32():
    """Within it, torch.nn.functional.scaled_dot_product_attention is fp32_attention: the name that
    nn.MultiheadAttention (OpenAI's CLIP) and open_clip's attention call, so their models need no change. Another
    thread calling it meanwhile gets the same result, more precisely, which is why a swap of the name is safe."""
    functional = torch.nn.functional
    previous, functional.scaled_dot_product_attention = functional.scaled_dot_product_attention, fp32_attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = previous


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # and "auto": autocast_dtype's choice


def precision_dtype(device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of an evaluation `precision`: "auto" (the choice above), "fp32" (None: no autocast,
    exact), "bf16" or "fp16"."""
    if precision == "auto":
        return autocast_dtype(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {['auto', *PRECISIONS]}, not {precision!r}")
    return PRECISIONS[precision]


def precision_name(device, precision: str = "auto") -> str:
    """"fp32", "bf16" or "fp16": the precision that `precision` runs at on `device` (what to print beside a number)."""
    dtype = precision_dtype(device, precision)
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def precision_amp(precision: str) -> str | None:
    """The training setting (TrainConfig.amp) of a command line's --precision."""
    precision_dtype("cpu", precision)  # a ValueError for an unknown name
    return {"auto": "auto", "fp32": None, "bf16": "bfloat16", "fp16": "float16"}[precision]


def amp_dtype(device, amp: str | None) -> torch.dtype | None:
    """The autocast dtype for a training setting: "auto" (the choice above), None (fp32), "bfloat16" or "float16"."""
    if amp == "auto":
        return autocast_dtype(device)
    return None if amp is None else getattr(torch, amp)


def amp_context(device, amp: str | None):
    return autocast(device, enabled=amp is not None, dtype=amp_dtype(device, amp))


def make_scaler(device, amp: str | None) -> torch.amp.GradScaler:
    """A GradScaler that only acts under fp16, whose small range would flush small gradients to zero."""
    device_type = str(device).split(":")[0]
    return torch.amp.GradScaler(device_type, enabled=amp_dtype(device, amp) == torch.float16)
