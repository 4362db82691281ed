import torch

from clip_helpers.text import (CIFAR10_CLASSES, CIFAR10_TEMPLATES, texts_from_labels, encode_texts, fill,
                               tokenize)
from clip_helpers.zeroshot import check_classes_and_templates

TEXTS = ["a photo of a dog.", "cat", "a photo of a dog.", "a blurry photo of the big truck flying over a ship",
         "a photo of a dog.", ""]


def test_cifar10_templates_give_every_class_18_distinct_captions():
    # build_classifier's own check refuses a template without {} or one that cannot be filled.
    class_names, templates = check_classes_and_templates(CIFAR10_CLASSES, CIFAR10_TEMPLATES)
    captions = [template.format(name) for name in class_names for template in templates]
    assert len(set(captions)) == len(captions) == 10 * 18


def test_texts_from_labels():
    assert texts_from_labels(["cat", "dog"]) == ["cat", "dog"]  # the report's bare class names
    assert texts_from_labels(["cat", "dog"], "a photo of a {}.", labels=[1, 1, 0]) == [
        "a photo of a dog.", "a photo of a dog.", "a photo of a cat."]


def test_encode_texts_equals_encode_text(mini, vit_b32):
    for model in (mini, vit_b32):
        with torch.no_grad():
            expected = model.encode_text(tokenize(model, TEXTS))
            features = encode_texts(model, TEXTS)
        assert features.shape == expected.shape
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_encode_texts_encodes_each_distinct_text_once(mini, monkeypatch):
    seen = []
    original = mini.token_embedding.forward
    monkeypatch.setattr(mini.token_embedding, "forward", lambda tokens: seen.append(tokens.shape) or original(tokens))
    encode_texts(mini, TEXTS)
    (shape,) = seen
    longest = int(tokenize(mini, TEXTS).argmax(dim=-1).max()) + 1
    assert shape == (len(set(TEXTS)), longest) and longest < mini.context_length


def test_encode_texts_in_small_batches_gives_the_same_features_in_the_same_order(mini):
    texts = [fill(template, name) for name in ("cat", "red circle", "orange heart") for template in CIFAR10_TEMPLATES]
    texts += texts[:5]  # repeats map back to their first encoding
    with torch.no_grad():
        expected = mini.encode_text(tokenize(mini, texts))
        chunked = encode_texts(mini, texts, batch_size=7)  # 54 distinct texts: 8 batches, the last of 5
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=0)


def test_encode_texts_is_differentiable(mini):
    model = type(mini)(**__import__("clip_helpers.models", fromlist=["MINI_CLIP"]).MINI_CLIP)
    encode_texts(model, ["a red circle", "a red circle", "a blue star"]).sum().backward()
    assert model.token_embedding.weight.grad.abs().sum() > 0
    assert model.text_projection.grad.abs().sum() > 0


# ---------------------------------------------------------------- bad texts, and articles that agree

import pytest  # noqa: E402


def test_a_bare_string_is_refused_not_split_into_letters(mini):
    """encode_texts(model, "cat") used to encode "c", "a", "t"."""
    with pytest.raises(TypeError, match=r"\['cat'\]"):
        encode_texts(mini, "cat")
    with pytest.raises(TypeError, match=r"\['cat'\]"):
        tokenize(mini, "cat")
    torch.testing.assert_close(encode_texts(mini, ["cat"]), mini.encode_text(tokenize(mini, ["cat"])),
                               atol=1e-5, rtol=1e-4)


def test_no_texts_is_a_clear_error(mini):
    with pytest.raises(ValueError, match="texts is empty"):
        encode_texts(mini, [])


def test_fill_makes_the_article_agree_with_the_name_and_touches_nothing_else():
    assert fill("a photo of a {}.", "astronaut") == "a photo of an astronaut."
    assert fill("a {} on a plain background.", "orange circle") == "an orange circle on a plain background."
    assert fill("A {}.", "eagle") == "An eagle."
    assert fill("a photo of a {}.", "unicorn") == "a photo of a unicorn."  # a vowel letter, not a vowel sound
    assert fill("a photo of the {}.", "airplane") == "a photo of the airplane."
    assert fill("a photo of a small {}.", "airplane") == "a photo of a small airplane."
    assert fill("a photo of a {}.", "cat") == "a photo of a cat."
    assert texts_from_labels(["apple", "dog"], "a {}.", labels=[1, 0]) == ["a dog.", "an apple."]
