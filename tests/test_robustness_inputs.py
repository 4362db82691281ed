"""A damaged cached mini-CLIP is trained again with a warning, not crashed on; a failed write of its history leaves
no partial file.

(Bad inputs to the other modules are tested beside them: test_features, test_data, test_text, test_zeroshot,
test_models, test_profiles.)"""
import os
import warnings

import pandas as pd
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


def test_a_history_write_that_fails_midway_leaves_the_old_file_or_none(tmp_path, monkeypatch):
    """The disk fills while the history CSV is written: no half-written CSV is left for the next run to read, and a
    retrain that fails keeps the previous history whole."""
    def fit(model, recipe, progress, on_epoch):  # the recipe's training, replaced: only the files matter here
        on_epoch(model, 1)
        return pd.DataFrame({"epoch": [1, 2], "train_loss": [fit.loss, fit.loss / 2]})
    fit.loss = 3.0
    monkeypatch.setattr(recipes, "fit_on_shapes", fit)
    real_fsync = os.fsync

    def disk_full_on_the_csv(fd):
        if ".csv." in os.readlink(f"/proc/self/fd/{fd}"):  # the history's temporary; the weights' writes go through
            raise OSError(28, "No space left on device")
        real_fsync(fd)
    history_path = recipes.mini_clip_path(recipes.SMOKE_RECIPE, tmp_path).with_suffix(".csv")
    monkeypatch.setattr(os, "fsync", disk_full_on_the_csv)
    with pytest.raises(OSError, match="No space"):
        recipes.train_mini_clip(recipes.SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    assert not history_path.exists() and list(tmp_path.glob(".*.tmp")) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    recipes.train_mini_clip(recipes.SMOKE_RECIPE, cache_dir=tmp_path, progress=False)
    written = history_path.read_bytes()
    assert pd.read_csv(history_path)["train_loss"].tolist() == [3.0, 1.5]
    fit.loss = 5.0
    monkeypatch.setattr(os, "fsync", disk_full_on_the_csv)
    with pytest.raises(OSError, match="No space"):
        recipes.train_mini_clip(recipes.SMOKE_RECIPE, cache_dir=tmp_path, retrain=True, progress=False)
    assert history_path.read_bytes() == written and list(tmp_path.glob(".*.tmp")) == []
