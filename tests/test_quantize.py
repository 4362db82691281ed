import copy

import pytest
import torch
import torch.nn.functional as F
from clip.model import QuickGELU
from torch import nn

from clip_helpers.models import build_random_clip
from clip_helpers.quantize import (FixedRangeInt8Linear, LinearAttention, int8_image_tower, with_linear_attention,
                                   with_silu_mlps)
from torch.utils.data import DataLoader, TensorDataset

from clip_helpers.features import encode_images
from clip_helpers.training.evaluation import validation_scores
from clip_helpers.zeroshot import build_classifier, evaluate


@pytest.fixture(scope="module")
def vit():
    return build_random_clip("mini-vit", seed=0)


def test_linear_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(32, 4).eval()
    x = torch.randn(7, 3, 32)
    causal = torch.full((7, 7), float("-inf")).triu_(1)
    for mask in (None, causal):
        expected = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        assert torch.allclose(LinearAttention(attention)(x, x, x, attn_mask=mask)[0], expected, atol=1e-6)


def test_silu_mlp_is_the_same_function_as_quick_gelu_mlp(vit):
    x = torch.randn(4, 3, 32, 32)
    rewritten = with_silu_mlps(copy.deepcopy(vit.visual))
    assert not any(isinstance(m, QuickGELU) for m in rewritten.modules())
    assert any(isinstance(m, QuickGELU) for m in vit.visual.modules())  # the original is untouched
    with torch.no_grad():
        assert torch.allclose(rewritten(x), vit.visual(x), atol=1e-5)
        assert torch.allclose(with_linear_attention(copy.deepcopy(vit.visual))(x), vit.visual(x), atol=1e-5)


def test_int8_image_tower_is_close_to_fp32_and_leaves_the_text_tower_alone(vit):
    torch.manual_seed(1)
    images = torch.randn(16, 3, 32, 32)
    int8 = int8_image_tower(vit)
    quantized = [m for m in int8.visual.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 4 * vit.visual.transformer.layers  # in_proj, out_proj, c_fc, c_proj per block
    with torch.no_grad():
        expected, got = vit.encode_image(images), int8.encode_image(images)
        tokens = torch.randint(1, 100, (2, vit.context_length))
        assert torch.equal(int8.encode_text(tokens), vit.encode_text(tokens))
    assert not torch.equal(got, expected)  # int8 is not exact...
    assert F.cosine_similarity(got, expected).min() > 0.99  # ...but close
    assert isinstance(vit.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)  # a copy was quantized


def test_int8_evaluation_agrees_with_fp32_evaluation(vit):
    torch.manual_seed(2)
    batches = [(torch.randn(32, 3, 32, 32), torch.randint(4, (32,))) for _ in range(2)]
    classifier = build_classifier(vit, ["red", "green", "blue", "yellow"], ["a {} shape."])
    fp32, int8 = evaluate(vit, batches, classifier), evaluate(vit, batches, classifier, int8=True)
    # Random weights give near-ties between classes, where int8 rounding may flip a few predictions.
    assert abs(fp32["top1"] - int8["top1"]) <= 100 * 4 / 64
    scores_int8 = validation_scores(vit, batches, classifier, amp=None, int8=True)
    assert scores_int8["val_top1"] == pytest.approx(int8["top1"])


def test_int8_image_tower_refuses_a_resnet_tower_with_a_reason():
    with pytest.raises(ValueError, match="ViT image towers.*ModifiedResNet"):
        int8_image_tower(build_random_clip("mini"))


def test_int8_copy_shares_the_text_weights_but_not_the_training_mode(vit):
    model = copy.deepcopy(vit).train()
    int8 = int8_image_tower(model)
    assert int8.token_embedding.weight is model.token_embedding.weight  # no second copy of the text tower
    assert int8.visual is not model.visual and not int8.training
    assert model.training and model.transformer.training  # the original keeps its mode


@pytest.mark.parametrize("calibrated", [False, True])
def test_an_images_int8_features_do_not_depend_on_its_batch(vit, calibrated):
    torch.manual_seed(3)
    images = torch.randn(20, 3, 32, 32)
    int8 = int8_image_tower(vit, torch.randn(32, 3, 32, 32) if calibrated else None)
    with torch.no_grad():
        whole = int8.encode_image(images)
        for batch_size in (1, 8):
            batched = torch.cat([int8.encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
            assert torch.equal(batched, whole), batch_size
        # an image among very different ones (10x the contrast) keeps its features too
        mixed = int8.encode_image(torch.cat([images[:1], 10 * images[1:]]))
    assert torch.equal(mixed[0], whole[0])


def test_int8_evaluation_encodes_the_same_features_at_any_batch_size(vit):
    torch.manual_seed(4)
    dataset = TensorDataset(torch.randn(24, 3, 32, 32), torch.randint(4, (24,)))
    int8 = int8_image_tower(vit)
    first, second = (encode_images(int8, DataLoader(dataset, batch_size=size), progress=False, precision="fp32")[0]
                     for size in (3, 24))
    assert torch.equal(first, second)
    classifier = build_classifier(vit, ["red", "green", "blue", "yellow"], ["a {} shape."])
    assert evaluate(vit, DataLoader(dataset, batch_size=8), classifier, int8=True)["precision"] == "int8"


def test_a_fixed_range_int8_layer_is_the_linear_layer_of_its_quantized_input_and_weight():
    torch.manual_seed(5)
    linear = nn.Linear(64, 48)
    layer = FixedRangeInt8Linear(linear, -2.0, 3.0, torch.ao.quantization.quantize_dynamic)
    assert layer.scale == pytest.approx(5.0 / 127) and layer.zero_point == round(2.0 / (5.0 / 127))
    x = torch.empty(10, 64).uniform_(-2.0, 3.0)
    # by hand: x on the fixed scale, the weight as int8 stores it, fp32 bias
    x_int8 = torch.quantize_per_tensor(x, layer.scale, layer.zero_point, torch.quint8).dequantize()
    weight, bias = layer.packed_weight._weight_bias()
    expected = F.linear(x_int8, weight.dequantize(), bias)
    assert torch.allclose(layer(x), expected, atol=1e-4)
    assert not torch.equal(x_int8, x) and (layer(x) - linear(x)).abs().max() < 0.1  # rounded, and close


def test_a_calibrated_int8_tower_is_close_to_fp32_with_no_dynamic_layers_left(vit):
    torch.manual_seed(6)
    images = torch.randn(16, 3, 32, 32)
    int8 = int8_image_tower(vit, calibration_images=torch.randn(32, 3, 32, 32))
    fixed = [m for m in int8.visual.modules() if isinstance(m, FixedRangeInt8Linear)]
    assert len(fixed) == 4 * vit.visual.transformer.layers
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.visual.modules()
                   if not isinstance(m, FixedRangeInt8Linear))
    with torch.no_grad():
        expected, got = vit.encode_image(images), int8.encode_image(images)
    assert not torch.equal(got, expected)
    assert F.cosine_similarity(got, expected).min() > 0.99


def test_int8_evaluation_refuses_a_one_pass_loader_rather_than_lose_its_first_batch(vit):
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4)) for _ in range(2)]
    classifier = build_classifier(vit, ["red", "green", "blue", "yellow"], ["a {} shape."])
    with pytest.raises(ValueError, match="reads the loader twice.*not a generator"):
        evaluate(vit, iter(batches), classifier, int8=True)
