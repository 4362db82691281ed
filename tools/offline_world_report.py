"""What the offline mini-CLIP learns, measured as the notebooks measure it: one table, mean and std over seeds.

    PYTHONPATH=$PWD python tools/offline_world_report.py --recipe default --seeds 0 1 2 --threads 2

Each seed's mini-CLIP is trained from scratch by recipes.train_mini_clip (the named recipe with that seed) in a
temporary folder, so the time is the training's own. Then every lesson's effect is computed with the notebooks'
own calls (tools/lesson_effects.py: 03's temperature and caption matching, 04's loss_i / loss_t, 05's in-batch
accuracy vs top-1, 06's softmax maxima, 07's ensemble gain and seen / held-out top-1) for the trained model, its
epoch-1 checkpoint (recipes.early_checkpoint_path) and a randomly initialised one. A scenes recipe also gets
the scene tests (relation order, colour binding, size word; chance 50%).
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clip_helpers.training import recipes
from clip_helpers.models import build_random_clip, load_clip, preprocess_for
from clip_helpers.training.scene_training import cosine_spread, distractor_accuracies, scene_scores, test_scenes
from lesson_effects import lesson_effects

TEST_SEED = 5000  # scenes for scoring, drawn from a seed no training split uses


def scene_scored(model, tests) -> dict:
    row = {}
    for split in ("val", "held_out"):
        name = "seen" if split == "val" else "held_out"
        row.update({f"{name}_{key}": value for key, value in scene_scores(model, *tests[split]).items()})
        row.update({f"{name}_{key}": value for key, value in distractor_accuracies(model, *tests[split]).items()})
    row.update(cosine_spread(model, *tests["val"]))
    return row


def scored(model, tests, data_dir) -> dict:
    return {**lesson_effects(model, preprocess_for(32), data_dir), **(scene_scored(model, tests) if tests else {})}


def trained_rows(recipe: dict, seed: int, tests, cache_dir, data_dir) -> tuple[dict, dict | None]:
    """(the trained model's row, its epoch-1 checkpoint's row or None when the recipe keeps none)."""
    recipe = {**recipe, "seed": seed}
    start = time.perf_counter()
    model, _, history = recipes.train_mini_clip(recipe, cache_dir=cache_dir, retrain=True, progress=False)
    seconds = time.perf_counter() - start
    last = history.iloc[-1]
    row = {"seed": seed, "train_seconds": seconds, "epochs": len(history), "train_loss": last["train_loss"],
           "history held_out_top1": last["held_out_top1"], **scored(model, tests, data_dir)}
    early_path = recipes.early_checkpoint_path(recipe, cache_dir)
    early = None
    if early_path.is_file():
        early_model, _ = load_clip(str(early_path))
        early = {"seed": seed, **scored(early_model, tests, data_dir)}
    return row, early


def evaluated_row(path, tests, data_dir) -> dict:
    """The row of an already trained mini-CLIP file (its training seconds from the history beside it)."""
    model, _ = load_clip(str(path))
    history_path = Path(path).with_suffix(".csv")
    history = pd.read_csv(history_path) if history_path.is_file() else None
    return {"seed": str(path), "train_seconds": history["seconds"].sum() if history is not None else np.nan,
            "epochs": len(history) if history is not None else np.nan, **scored(model, tests, data_dir)}


def summary(rows: list[dict]) -> pd.DataFrame:
    rows = pd.DataFrame(rows).set_index("seed")
    return pd.DataFrame({"mean": rows.mean(), "std": rows.std(ddof=1) if len(rows) > 1 else np.nan,
                         "min": rows.min(), "max": rows.max()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default", choices=sorted(recipes.RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--evaluate", nargs="+", default=[], help="score these trained mini-CLIP files instead of "
                        "training (e.g. the course's cached data/weights/mini-clip-shapes-*.pt of several seeds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipes.RECIPES[args.recipe]
    start = time.perf_counter()
    tests = (test_scenes(2 * recipe["n_test_pairs"], TEST_SEED, preprocess_for(32)) if recipe["world"] == "scenes"
             else None)
    trained, early = [], []
    for path in args.evaluate:
        trained.append(evaluated_row(path, tests, args.data_dir))
        print(pd.Series(trained[-1]).to_string(), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        for seed in [] if args.evaluate else args.seeds:  # each seed's row as soon as it is measured: a long run shows its progress
            row, early_row = trained_rows(recipe, seed, tests, cache_dir, args.data_dir)
            trained.append(row)
            early += [early_row] if early_row else []
            print(pd.Series(row).round(3).to_string(), flush=True)
    table = summary(trained)
    if early:
        table["epoch 1 (mean)"] = summary(early)["mean"]
    table["random init"] = pd.Series(scored(build_random_clip("mini", seed=0).eval(), tests, args.data_dir))
    pd.set_option("display.width", 200)
    print(f"recipe {args.recipe}: {recipe}")
    print(f"torch threads: {args.threads}; seeds: {args.seeds}")
    print(table.round(3).to_string())
    print(f"total run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
