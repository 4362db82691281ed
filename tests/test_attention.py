"""Under bf16 autocast on a CPU the kit computes attention in fp32 (device.fp32_attention): the same attention,
more precisely, and a bf16 training step with the same loss and gradients within bf16's rounding."""
import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clip_helpers import device
from clip_helpers.models import build_random_clip
from clip_helpers.text import CIFAR10_CLASSES
from clip_helpers.training.step import one_pass_backward

MASKS = {"none": None, "causal bool": torch.ones(7, 7, dtype=torch.bool).tril(),
         "causal float": torch.full((7, 7), float("-inf")).triu(1)}  # CLIP's text mask is the float one


def written_out_attention(query, key, value, mask):
    """softmax(q k^T / sqrt(d) + mask) v in float64."""
    query, key, value = (t.double() for t in (query, key, value))
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return scores.softmax(dim=-1) @ value


@pytest.mark.parametrize("mask", list(MASKS))
def test_cpu_bf16_attention_runs_in_fp32_and_equals_the_written_out_formula(monkeypatch, mask):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 7, 8, generator=generator).bfloat16() for _ in range(3))
    seen, torchs = [], device.SDPA
    monkeypatch.setattr(device, "SDPA", lambda *args, **kwargs: seen.append(args[0].dtype) or torchs(*args, **kwargs))
    with device.autocast("cpu", dtype=torch.bfloat16):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=MASKS[mask])
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    # computed exactly from the bf16 inputs, then rounded once to bf16 (8 significant bits)
    torch.testing.assert_close(out.double(), written_out_attention(query, key, value, MASKS[mask]),
                               rtol=2 ** -8, atol=1e-6)


def test_other_dtypes_get_torchs_attention_unchanged():
    query = torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(0))
    with device.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False):
        inside = F.scaled_dot_product_attention(query, query, query)
    assert torch.equal(inside, device.SDPA(query, query, query))


def test_torchs_attention_is_back_after_the_autocast_even_after_an_error():
    with pytest.raises(KeyError):
        with device.autocast("cpu", dtype=torch.bfloat16):
            assert F.scaled_dot_product_attention is device.fp32_attention
            raise KeyError
    assert F.scaled_dot_product_attention is device.SDPA
    with device.autocast("cpu", dtype=torch.float16):  # measured for bf16 only: fp16 keeps torch's attention
        assert F.scaled_dot_product_attention is device.SDPA


@pytest.fixture(scope="module")
def vit_batch():
    """A ViT mini-CLIP (attention in both towers, a causal mask in the text's) and a batch of 8 captioned images."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(8) % 4
    texts = [f"a photo of a {CIFAR10_CLASSES[label]}." for label in labels]
    return build_random_clip("mini-vit", seed=0).train(), torch.randn(8, 3, 32, 32, generator=generator), labels, texts


def loss_and_gradient(batch, amp, attention=None):
    """(loss, every parameter's gradient as one vector) of one_pass_backward on a copy of the model; `attention`: the
    context that replaces device.attention_in_fp32 (None: the kit's own)."""
    model, images, labels, texts = batch
    model = copy.deepcopy(model)
    with pytest.MonkeyPatch.context() as patch:
        if attention is not None:
            patch.setattr(device, "attention_in_fp32", attention)
        loss = one_pass_backward(model, images, texts, labels, amp=amp)
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def relative_difference(a, b):
    return ((a - b).norm() / b.norm()).item()


def without_the_causal_mask():
    """A wrong attention, to show the tolerance below catches one."""
    @contextlib.contextmanager
    def context():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(F, "scaled_dot_product_attention",
                          lambda q, k, v, attn_mask=None, *args, **kwargs: device.fp32_attention(q, k, v, None, *args,
                                                                                                   **kwargs))
            yield
    return context


def test_a_bf16_step_with_fp32_attention_keeps_the_loss_and_gradients(vit_batch):
    """Against the bf16 step with torch's bf16 attention and against the fp32 step: the loss within 0.005 and the
    gradient within 10% of its norm, bf16's rounding (8 significant bits) through a few layers."""
    fp32_loss, fp32_gradient = loss_and_gradient(vit_batch, None)
    loss, gradient = loss_and_gradient(vit_batch, "bfloat16")
    bf16_loss, bf16_gradient = loss_and_gradient(vit_batch, "bfloat16", attention=contextlib.nullcontext)
    assert not torch.equal(gradient, bf16_gradient)  # the attention did change precision
    for other_loss, other_gradient in [(fp32_loss, fp32_gradient), (bf16_loss, bf16_gradient)]:
        assert loss == pytest.approx(other_loss, abs=0.005)
        assert relative_difference(gradient, other_gradient) < 0.1
    _, maskless = loss_and_gradient(vit_batch, "bfloat16", attention=without_the_causal_mask())
    assert relative_difference(maskless, fp32_gradient) > 0.1
