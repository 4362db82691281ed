import numpy as np
import pytest

from clip_helpers import shape_captions as captions
from clip_helpers.scene_captions import MAX_TOKENS, labels_of
from clip_helpers.shapes import ShapesDataset, Item
from clip.clip import _tokenizer


@pytest.fixture(scope="module")
def items():
    dataset = ShapesDataset("all", n_per_class=10, seed=0)
    return [dataset.item(index) for index in range(len(dataset))]


def captioned(items, seed=0):
    return captions.captions_for(items, np.random.default_rng(seed))


def test_every_caption_is_true_of_its_image(items):
    texts, keys = captioned(items)
    for item, text, key in zip(items, texts, keys):
        words = text.rstrip(".").split()
        assert item.colour in words and item.shape in words
        sizes = {"small", "big"} & set(words)
        if item.distractor:
            assert sizes <= {"big", "small"} and ("small" not in words or item.distractor[1] in words)
            assert "plain" not in words  # a second shape is not a plain background
        else:
            assert sizes <= {item.size} and "and" not in words
        if "plain" in words:
            assert item.plain
        if "and" in words:
            colour, shape = item.distractor
            assert f"small {colour} {shape}" in text and f"big {item.colour} {item.shape}" in text


def test_captions_fit_the_context_and_vary(items):
    texts, _ = captioned(items)
    assert max(len(_tokenizer.encode(text)) + 2 for text in texts) <= MAX_TOKENS
    words = " ".join(texts).split()
    for word in ("small", "big", "and", "in", "plain", "photo", "drawing"):
        assert word in words, word
    assert any(text.split()[-2:] == ["in", texts[k].split()[-1]] or " in " in text for k, text in enumerate(texts))


def test_equal_meaning_equal_key_whatever_the_phrasing():
    item = Item("red", "circle", "big", ("blue", "star"), plain=False)
    rng = np.random.default_rng(1)
    sentences = {}
    for _ in range(40):
        text, key = captions.caption(item, "both", rng)
        sentences.setdefault(key, set()).add(text)
    assert len(sentences) == 1 and len(next(iter(sentences.values()))) > 2  # several phrasings, one meaning
    assert captions.caption(item, "size", rng)[1] != captions.caption(Item("red", "circle", "small", None, True),
                                                                      "size", rng)[1]
    assert labels_of([("a",), ("b",), ("a",)]) == [0, 1, 0]  # equal keys, one label (a shared positive)


def test_a_level_the_item_does_not_allow_is_refused():
    with pytest.raises(ValueError, match="both"):
        captions.caption(Item("red", "circle", "small", None, True), "both", np.random.default_rng(0))


def test_fine_tuning_captions_of_a_class_name_claim_nothing_the_name_cannot_know():
    # A caption made from the class name alone cannot know the drawn size or the clutter: no size word, no "plain".
    from clip_helpers.sources import open_source
    opened = open_source("shapes", "train", n_per_class=1)
    words = {word for template in opened.train_templates for word in template.split()}
    assert not {"small", "big", "plain"} & words and opened.train_templates
    assert {"small", "big"} <= {word for template in opened.templates for word in template.split()}  # prompts keep them
