"""A damaged cached mini-CLIP is trained again with a warning, not crashed on.

(Bad inputs to the other modules are tested beside them: test_features, test_data, test_text, test_zeroshot,
test_models, test_profiles.)"""
import warnings

import pytest
import torch

from clip_helpers.training import recipes
from clip_helpers.models import load_clip


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty model", "empty history"])
def test_a_damaged_cached_mini_clip_is_trained_again(tmp_path, damage):
    recipe = {**recipes.MINI_RECIPE, **recipes.SMOKE_RECIPE}
    path = tmp_path / f"mini-clip-shapes-{recipes.HISTORY_VERSION}-{recipes.recipe_key(recipe)}.pt"
    model, _, history = recipes.train_mini_clip(recipes.SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    (path if damage == "empty model" else path.with_suffix(".csv")).write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, _, again_history = recipes.train_mini_clip(recipes.SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    assert any(f"cached mini-CLIP {path} is unusable" in str(w.message) for w in caught)
    assert len(again_history) == len(history)
    reloaded, _ = load_clip(str(path), device="cpu")  # the file is whole again and holds the returned model
    for name, tensor in again.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor.cpu()), name
    assert list(tmp_path.glob("*.tmp")) == []
