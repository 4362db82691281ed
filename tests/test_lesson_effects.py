import math
import re
from pathlib import Path

import nbformat
import pytest

from clip_helpers.losses import clip_loss
from clip_helpers.models import preprocess_for
from conftest import load_tool

effects = load_tool("lesson_effects")
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_the_two_directions_of_the_loss_average_to_clip_loss(mini):
    image_features, text_features, labels, _ = effects.example_similarity(mini.eval(), preprocess_for(32), "04")
    row = effects.loss_effects(mini, preprocess_for(32))
    expected = clip_loss(image_features, text_features, mini.logit_scale.exp().detach().float()).item()
    assert (row["04 loss_i"] + row["04 loss_t"]) / 2 == pytest.approx(expected, rel=1e-5)
    assert row["04 |loss_i - loss_t|"] == pytest.approx(abs(row["04 loss_i"] - row["04 loss_t"]))
    # A random model is no better than chance on 8 captions: each direction's loss is near log(8).
    assert len(labels) == 8 and abs(row["04 loss_t"] - math.log(8)) < 1.0


def test_softmax_effects_are_probabilities_of_the_eight_images(mini):
    row = effects.softmax_effects(mini.eval(), preprocess_for(32))
    assert 1 / 8 <= row["06 min max prob"] <= row["06 mean max prob"] <= 1
    assert 0 <= row["06 own-caption prob"] <= 1 and 0 <= row["06 rest to shared-word captions"] <= 1


def test_temperature_effects_spread_probability_at_10_and_sharpen_it_at_100(mini):
    row = effects.temperature_effects(mini.eval(), preprocess_for(32))
    assert 1 / 6 <= row["03 p_max at 10"] <= row["03 p_max at 100"] <= 1
    assert 0 <= row["03 TV(10, 100)"] <= 1 and row["03 smallest gap"] >= 0
    matched = row["03 matched (%)"] * 6 / 100  # a count of the 6 images
    assert matched == pytest.approx(round(matched), abs=1e-4) and 0 <= matched <= 6


@pytest.mark.parametrize("notebook", sorted(effects.GRIDS))
def test_the_tool_shows_the_pairs_each_notebook_shows_offline(notebook):
    """lesson_effects measures what the notebook computes only if both draw the same examples."""
    path = next(NOTEBOOKS.glob(f"{notebook}_*.ipynb"))
    source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    colours, shapes = effects.GRIDS[notebook]
    call = re.escape(f"shared_word_examples({colours!r}, {shapes!r}, seed=seed + 1)".replace("'", '"'))
    assert re.search(call, source), f"{path.name} does not draw shared_word_examples({colours}, {shapes})"
