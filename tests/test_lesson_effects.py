import math

import pytest

from clip_helpers.losses import clip_loss
from clip_helpers.models import preprocess_for
from conftest import load_tool

effects = load_tool("lesson_effects")


def test_the_two_directions_of_the_loss_average_to_clip_loss(mini, tmp_path):
    image_features, text_features = effects.example_similarity(mini.eval(), preprocess_for(32), 8, tmp_path)
    row = effects.loss_effects(mini, preprocess_for(32), tmp_path)
    expected = clip_loss(image_features, text_features, mini.logit_scale.exp().detach().float()).item()
    assert (row["04 loss_i"] + row["04 loss_t"]) / 2 == pytest.approx(expected, rel=1e-5)
    # A random model is no better than chance on 8 captions: each direction's loss is near log(8).
    assert abs(row["04 loss_t"] - math.log(8)) < 1.0
    assert 1 / 8 <= row["06 min max prob"] <= row["06 mean max prob"] <= 1


def test_temperature_effects_spread_probability_at_10_and_sharpen_it_at_100(mini, tmp_path):
    row = effects.temperature_effects(mini.eval(), preprocess_for(32), tmp_path)
    assert 1 / 6 <= row["03 p_max at 10"] <= row["03 p_max at 100"] <= 1
    assert 0 <= row["03 TV(10, 100)"] <= 1
    matched = row["03 matched (%)"] * 6 / 100  # a count of the 6 images
    assert matched == pytest.approx(round(matched), abs=1e-4) and 0 <= matched <= 6
