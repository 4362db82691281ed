"""GradCache against one pass over the whole batch: every parameter's gradient, logit_scale included.

The reference is plain autograd on one forward over all 12 pairs. The ViT mini-CLIP (LayerNorm only) is
compared in train mode; the ResNet mini-CLIP in eval mode, because in train mode its BatchNorm normalises
each chunk with the chunk's statistics (a test below shows that difference and bounds it, as the module says).
Tolerance: each gradient within 1e-5 of its own largest element plus 1e-9 (fp32; chunks change only the order
of sums). Naive accumulation (each chunk's loss on its own) is far outside it, which a test below shows. With the
ResNet in train mode, per-chunk BatchNorm statistics alone move GradCache's gradient far past the tolerance:
chunks of 4 images are far too small for BatchNorm, and that is a property of the model, not of the accumulation.
"""
import copy

import pytest
import torch

from clip_helpers.training.accumulation import chunk_slices, grad_cache_backward, naive_accumulation_backward
from clip_helpers.losses import clip_loss
from clip_helpers.models import build_random_clip
from clip_helpers.siglip import SigmoidLoss
from clip_helpers.text import encode_texts

BATCH, CHUNKS = 12, 3
LABELS = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2, 4, 5, 3, 1])  # same-class pairs across chunks
NAMES = ["red circle", "blue square", "green star", "yellow cross", "purple heart", "orange triangle"]
GRAD_ATOL = 1e-9
TEMPLATES = ["a {}.", "a photo of a {}.", "a drawing of a {}."]


def batch():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    texts = [TEMPLATES[i % 3].format(NAMES[label]) for i, label in enumerate(LABELS)]
    return images, texts


def one_pass_gradients(model, images, texts, labels, loss_of=clip_loss):
    model.zero_grad(set_to_none=True)
    loss = loss_of(model.encode_image(images), encode_texts(model, texts), model.logit_scale.exp(), labels)
    loss.backward()
    return loss.detach(), gradients(model, loss_of)


def gradients(*modules):
    return {f"{i}.{name}": p.grad.clone() for i, m in enumerate(modules) if isinstance(m, torch.nn.Module)
            for name, p in m.named_parameters() if p.grad is not None}


def largest_relative_difference(a, b):
    """max over parameters of |a - b| / max|a|; the key bias of attention (zero gradient in exact arithmetic:
    softmax ignores a shift shared by all keys) is left out, its rounding noise over its own zero scale is meaningless."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max()).item() for k in a if a[k].abs().max() > GRAD_ATOL)


def same_gradients(a, b, rtol=1e-5):
    """Every parameter's gradient within rtol of its own largest element, plus GRAD_ATOL (fp32 rounding)."""
    assert a.keys() == b.keys()
    return all((a[k] - b[k]).abs().max() <= rtol * a[k].abs().max() + GRAD_ATOL for k in a)


def grad_cache_gradients(model, images, texts, labels, loss_of=clip_loss, num_chunks=CHUNKS):
    model.zero_grad(set_to_none=True)
    loss = grad_cache_backward(model, images, texts, labels, num_chunks=num_chunks, loss_of=loss_of)
    return loss, gradients(model, loss_of)


@pytest.mark.parametrize("name, train_mode", [("mini-vit", True), ("mini", False)])
def test_grad_cache_gives_the_one_pass_gradient_of_every_parameter(name, train_mode):
    model = build_random_clip(name).train(train_mode)
    images, texts = batch()
    loss, expected = one_pass_gradients(model, images, texts, LABELS)
    cached_loss, found = grad_cache_gradients(model, images, texts, LABELS)
    assert torch.allclose(cached_loss, loss, rtol=1e-6)
    assert "0.logit_scale" in found and found["0.logit_scale"].abs() > 0
    assert set(found) == set(expected) and len(found) == len(list(model.parameters()))
    assert same_gradients(expected, found)


def test_naive_accumulation_gives_another_gradient():
    model = build_random_clip("mini-vit").train()
    images, texts = batch()
    _, expected = one_pass_gradients(model, images, texts, LABELS)
    model.zero_grad(set_to_none=True)
    naive_accumulation_backward(model, images, texts, LABELS, num_chunks=CHUNKS)
    naive = gradients(model)
    # Not a rounding effect: the chunks score 4 captions instead of 12, so the gradients differ at the percent level.
    assert largest_relative_difference(expected, naive) > 0.05
    assert (naive["0.logit_scale"] - expected["0.logit_scale"]).abs() > 1e-3 * expected["0.logit_scale"].abs()


def test_grad_cache_with_the_sigmoid_loss_trains_its_bias_too():
    model, loss_module = build_random_clip("mini-vit").train(), SigmoidLoss()
    images, texts = batch()
    _, expected = one_pass_gradients(model, images, texts, LABELS, loss_of=loss_module)
    expected = gradients(model, loss_module)
    model.zero_grad(set_to_none=True)
    loss_module.zero_grad(set_to_none=True)
    grad_cache_backward(model, images, texts, LABELS, num_chunks=4, loss_of=loss_module)
    found = gradients(model, loss_module)
    assert "1.bias" in found and same_gradients(expected, found)


def test_batchnorm_in_train_mode_uses_each_chunks_statistics():
    """The ResNet tower in train mode: GradCache is exact for per-chunk statistics, not for the one pass."""
    model = build_random_clip("mini").train()
    images, texts = batch()
    _, expected = one_pass_gradients(model, images, texts, LABELS)
    chunked = copy.deepcopy(model)
    _, found = grad_cache_gradients(model, images, texts, LABELS)
    assert largest_relative_difference(expected, found) > 1e-3
    # The running statistics are updated once per chunk (by step 3), not twice (steps 1 and 3).
    with torch.no_grad():
        for part in chunk_slices(BATCH, CHUNKS):
            chunked.encode_image(images[part])
    for after, once in zip(model.buffers(), chunked.buffers()):
        assert torch.allclose(after, once)


def with_attention_dropout(model, p=0.3):
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = p
    return model


def test_dropout_is_replayed_chunk_by_chunk():
    """With dropout, the reference is the same chunks encoded once with autograd from the same seed: GradCache's
    second pass must draw the masks its first pass drew, or its cached gradients belong to other features."""
    model = with_attention_dropout(build_random_clip("mini-vit")).train()
    images, texts = batch()
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    parts = [(model.encode_image(images[s]), encode_texts(model, texts[s])) for s in chunk_slices(BATCH, CHUNKS)]
    loss = clip_loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), model.logit_scale.exp(), LABELS)
    loss.backward()
    expected = gradients(model)
    torch.manual_seed(7)
    cached_loss, found = grad_cache_gradients(model, images, texts, LABELS)
    assert torch.allclose(cached_loss, loss.detach(), rtol=1e-6)
    assert same_gradients(expected, found)
    torch.manual_seed(8)  # a different seed draws other masks: the comparison above can fail
    _, other = grad_cache_gradients(model, images, texts, LABELS)
    assert largest_relative_difference(expected, other) > 1e-3


def test_chunk_slices_cover_the_batch_and_refuse_too_many_chunks():
    slices = chunk_slices(10, 3)
    assert [i for s in slices for i in range(10)[s]] == list(range(10))
    assert {s.stop - s.start for s in slices} <= {3, 4}
    with pytest.raises(ValueError, match="at most 4 chunks"):
        chunk_slices(4, 5)
    with pytest.raises(ValueError, match="whole number"):
        chunk_slices(4, 0)


def test_the_accumulation_benchmark_measures_the_kit_step_at_one_global_batch():
    """benchmarks/accumulation.py in this process (its numbers are not asserted, only that it runs the kit's
    step and that one pass and 4 chunks reach the same loss on a ViT tower)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[1] / "benchmarks" / "accumulation.py"
    spec = importlib.util.spec_from_file_location("accumulation_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    threads = torch.get_num_threads()
    try:
        one_pass, cached = (benchmark.measure("mini-vit", 8, n, "cpu", steps=1) for n in (1, 4))
    finally:
        torch.set_num_threads(threads)
    assert cached["loss"] == pytest.approx(one_pass["loss"], rel=1e-6)
    assert {"peak_mb", "step_s"} <= set(cached)
