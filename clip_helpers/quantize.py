"""An int8 copy of CLIP for faster zero-shot evaluation on a CPU. Not exact: see tests/test_quantize.py and
`benchmarks/finetune_speed.py --accuracy` for what it costs in accuracy.

Dynamic quantization stores each nn.Linear's weights in int8 and quantizes its input on the fly, so a
matrix product reads a quarter of the bytes and runs on the CPU's int8 instructions (VNNI where present).
It reaches only modules that are nn.Linear: nn.MultiheadAttention keeps its input projection as a bare
matrix, so we first swap it for the same math written with nn.Linear layers.

torch's dynamic quantization takes one activation scale for the whole input tensor, so an image's features
would depend on the other images of its batch. Two ways keep every image's int8 features the same in any
batch: FixedRangeInt8Linear quantizes its input on a range measured once, on calibration images, then fixed
(the faster: no pass over the input to find its range); RowScaledInt8Linear, without calibration images,
quantizes each row (token) on its own scale.
"""
import copy
import itertools
import warnings

import torch
import torch.nn.functional as F
from clip.model import QuickGELU, VisionTransformer
from torch import nn
from torch.nn.utils import skip_init


class LinearAttention(nn.Module):
    """nn.MultiheadAttention's forward (sequence-first, no dropout) with its projections as nn.Linear."""

    def __init__(self, attention):
        super().__init__()
        width = attention.embed_dim
        self.num_heads = attention.num_heads
        # skip_init: the weights are copied in below, so drawing random ones first would only cost time.
        self.in_proj = skip_init(nn.Linear, width, 3 * width)
        self.out_proj = skip_init(nn.Linear, width, width)
        with torch.no_grad():
            self.in_proj.weight.copy_(attention.in_proj_weight)
            self.in_proj.bias.copy_(attention.in_proj_bias)
            self.out_proj.weight.copy_(attention.out_proj.weight)
            self.out_proj.bias.copy_(attention.out_proj.bias)

    def forward(self, query, key, value, need_weights=False, attn_mask=None):
        # clip's blocks call attn(x, x, x, ...): self-attention, so key and value are query again.
        length, batch, width = query.shape
        qkv = self.in_proj(query).reshape(length, batch, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 1, 3, 0, 4)  # each [batch, heads, length, head_width]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, width)), None


def with_linear_attention(module):
    """`module` with every nn.MultiheadAttention inside it replaced by an equal LinearAttention (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, LinearAttention(child))
        else:
            with_linear_attention(child)
    return module


QUICK_GELU_SCALE = 1.702  # clip's QuickGELU(x) = x * sigmoid(1.702 x) = silu(1.702 x) / 1.702


def with_silu_mlps(module):
    """`module` with each MLP's QuickGELU rewritten as one in-place SiLU, the same function (in place).

    QuickGELU takes three passes over the MLP's widest activation (and a quarter of an int8 forward);
    SiLU takes one. The 1.702 moves into the layers around it: c_fc scaled by 1.702, c_proj's weight by 1/1.702.
    """
    for block in module.modules():
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, nn.Sequential) and isinstance(getattr(mlp, "gelu", None), QuickGELU):
            with torch.no_grad():
                mlp.c_fc.weight.mul_(QUICK_GELU_SCALE)
                mlp.c_fc.bias.mul_(QUICK_GELU_SCALE)
                mlp.c_proj.weight.div_(QUICK_GELU_SCALE)
            mlp.gelu = nn.SiLU(inplace=True)
    return module


class Float32(nn.Module):
    """`module` run in fp32 even inside autocast: the int8 kernels take only fp32 input (autocast is on by
    default on a CPU with bf16 hardware, and would hand them bf16)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return self.module(x.float())


class RowScaledInt8Linear(nn.Module):
    """An nn.Linear in int8 whose activations are quantized per row (per token), not per tensor.

    Each row is divided by its largest magnitude, so all lie in [-1, 1], and one extra row holding exactly
    +1 and -1 pins the range that the dynamic kernel reads from the tensor to [-1, 1]: every row then gets
    the same quantization whatever else is in the batch. The product is scaled back row by row and the fp32
    bias added after, so the rescaling never touches the bias.
    """

    def __init__(self, linear: nn.Linear, quantize_dynamic):
        super().__init__()
        without_bias = skip_init(nn.Linear, linear.in_features, linear.out_features, bias=False)
        with torch.no_grad():
            without_bias.weight.copy_(linear.weight)
        self.linear = quantize_dynamic(nn.Sequential(without_bias), {nn.Linear}, dtype=torch.qint8)[0]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        pin = torch.zeros(1, linear.in_features)
        pin[0, 0], pin[0, -1] = 1.0, -1.0
        self.register_buffer("range_row", pin)

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        scale = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).clamp_min_(1e-30)
        scaled = torch.empty(len(rows) + 1, rows.shape[1], dtype=torch.float32)
        torch.div(rows, scale, out=scaled[:-1])
        scaled[-1] = self.range_row[0]
        out = self.linear(scaled)[:-1]
        out = out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class FixedRangeInt8Linear(nn.Module):
    """An nn.Linear in int8 whose input is quantized on a fixed scale, [low, high] (0 included, measured on
    calibration images) mapped to levels 0..127: half the 8 bits, as torch's dynamic kernel does on x86
    (reduce_range), so that sums of two 8-bit products fit its 16-bit registers. Inputs above `high` use the
    levels above 127 and saturate at 255, where the kernel's sums may saturate too: calibrate on images like
    those to be encoded."""

    def __init__(self, linear: nn.Linear, low: float, high: float, quantize_dynamic):
        super().__init__()
        self.packed_weight = quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]._packed_params
        low, high = min(low, 0.0), max(high, 0.0)
        self.scale = max((high - low) / 127, 1e-12)
        self.zero_point = int(round(-low / self.scale))

    def forward(self, x):
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, self.scale, self.zero_point, self.packed_weight._packed_params)


def input_ranges(module, run) -> dict:
    """{name: (low, high)} of the input of every nn.Linear inside `module` while run() runs."""
    ranges = {}

    def record(name):
        def hook(_, args):
            low, high = ranges.get(name, (float("inf"), float("-inf")))
            ranges[name] = (min(low, args[0].min().item()), max(high, args[0].max().item()))
        return hook

    hooks = [child.register_forward_pre_hook(record(name)) for name, child in module.named_modules()
             if isinstance(child, nn.Linear)]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def with_fixed_range_int8(module, ranges, quantize_dynamic, prefix=""):
    """`module` with every nn.Linear inside it replaced by a FixedRangeInt8Linear on its range (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, FixedRangeInt8Linear(child, *ranges[prefix + name], quantize_dynamic))
        else:
            with_fixed_range_int8(child, ranges, quantize_dynamic, f"{prefix}{name}.")
    return module


def with_row_scaled_int8(module, quantize_dynamic):
    """`module` with every nn.Linear inside it replaced by a RowScaledInt8Linear (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, RowScaledInt8Linear(child, quantize_dynamic))
        else:
            with_row_scaled_int8(child, quantize_dynamic)
    return module


class PerImageProjection(nn.Module):
    """`x @ proj`, one matrix-vector product per image: a matrix product's summation order depends on how many
    rows it has (one image takes another kernel than many), these products' order does not."""

    def __init__(self, proj):
        super().__init__()
        self.proj = nn.Parameter(proj.detach().clone(), requires_grad=False)

    def forward(self, x):
        return torch.bmm(x.unsqueeze(1), self.proj.expand(len(x), *self.proj.shape)).squeeze(1)


def text_tower_tensors(model):
    """A deepcopy memo that makes the copy share every tensor but the image tower's (~0.3 GB less for ViT-B/32).

    Module objects are still copied, so setting the copy's train/eval mode never touches the original.
    """
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return {id(tensor): tensor for name, tensor in tensors if not name.startswith("visual.")}


def first_images(loader):
    """The images of a loader's first (images, labels) batch, to calibrate an int8 copy on; None when it is empty.

    The loader is read again afterwards, so a one-pass iterator (a generator) is refused: it would lose that batch."""
    if iter(loader) is loader:
        raise ValueError("int8 evaluation reads the loader twice (its first batch calibrates the int8 copy): pass a "
                         "DataLoader or a list of (images, labels) batches, not a generator or iterator")
    batch = next(iter(loader), None)
    return None if batch is None else batch[0]


def int8_image_tower(model, calibration_images=None):
    """A copy of `model` (CPU, eval mode) whose ViT image tower runs its linear layers in int8; it shares the fp32 text tower.

    Each image's features are the same in any batch. With `calibration_images` (a batch like those to be
    encoded, e.g. an evaluation's first) every layer's input range is measured on them once, then fixed
    (FixedRangeInt8Linear, the faster); without, each token is quantized on its own scale (RowScaledInt8Linear).
    Use it for the images of a zero-shot evaluation; build the classifier from either copy (same text
    tower). Making the copy takes a while (the README gives the time for ViT-B/32), so make it once per evaluation, not per batch.
    """
    if model.positional_embedding.device.type != "cpu":
        raise ValueError("int8_image_tower is for CPUs; on a GPU use autocast (clip_helpers.device.autocast).")
    if not isinstance(model.visual, VisionTransformer):
        raise ValueError(f"int8_image_tower speeds up ViT image towers; this one is a {type(model.visual).__name__}, "
                         "mostly convolutions, which dynamic quantization leaves in fp32. Evaluate it in fp32.")
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise RuntimeError(f"int8 evaluation needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
                           "no longer has. Evaluate in fp32 (int8=False), or install the torch of environment.yml.")
    model = copy.deepcopy(model, memo=text_tower_tensors(model)).eval()
    transformer = with_silu_mlps(with_linear_attention(model.visual.transformer))
    with warnings.catch_warnings():
        # torch marks its eager quantization deprecated in favour of torchao, whose CPU int8 path needs
        # torch.compile; this one still works in eager mode, and the tests check its numbers.
        warnings.filterwarnings("ignore", message=".*(deprecated|quantize_per_tensor).*")
        if calibration_images is None:
            model.visual.transformer = Float32(with_row_scaled_int8(transformer, quantize_dynamic))
        elif not hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"):
            raise RuntimeError(f"torch {torch.__version__} lacks the fixed-range int8 kernel: call int8_image_tower "
                               "without calibration_images (each token on its own scale), or install environment.yml's torch.")
        else:
            images = calibration_images.to(torch.float32)
            with torch.autocast("cpu", enabled=False):
                ranges = input_ranges(transformer, lambda: model.encode_image(images))
            model.visual.transformer = Float32(with_fixed_range_int8(transformer, ranges, quantize_dynamic))
    # clip's forward applies ln_post, then proj unless it is None: the projection moves behind ln_post.
    model.visual.ln_post = nn.Sequential(model.visual.ln_post, PerImageProjection(model.visual.proj))
    model.visual.proj = None
    return model
