"""What the offline mini-CLIP learns from clip_helpers.scenes, measured: one table, mean and std over seeds.

    PYTHONPATH=$PWD python tools/offline_world_report.py --seeds 0 1 2 --threads 2

Each seed's mini-CLIP is trained from scratch by recipes.train_mini_clip (SCENES_RECIPE with that seed) in a
temporary folder, so the time is the training's own, then scored on scenes drawn from a seed no training used:
the loss and in-batch matching, zero-shot top-1 on single shapes of seen and of held-out pairs, and the
distractor tests (relation order, colour binding, size word; chance 50%), and the cosine spread. A randomly
initialised model is scored the same way as the floor.
"""
import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from clip_helpers.training import recipes
from clip_helpers.models import build_random_clip, preprocess_for
from clip_helpers.training.scene_training import cosine_spread, distractor_accuracies, scene_scores, test_scenes

TEST_SEED = 5000  # scenes for scoring, drawn from a seed no training split uses


def scored(model, tests) -> dict:
    row = {}
    for split in ("val", "held_out"):
        name = "seen" if split == "val" else "held_out"
        row.update({f"{name}_{key}": value for key, value in scene_scores(model, *tests[split]).items()})
        row.update({f"{name}_{key}": value for key, value in distractor_accuracies(model, *tests[split]).items()})
    row.update(cosine_spread(model, *tests["val"]))
    return row


def trained_row(seed: int, tests, cache_dir) -> dict:
    start = time.perf_counter()
    model, _, history = recipes.train_mini_clip({**recipes.SCENES_RECIPE, "seed": seed}, cache_dir=cache_dir, retrain=True, progress=False)
    seconds = time.perf_counter() - start
    last = history.iloc[-1]
    return {"seed": seed, "train_seconds": seconds, "train_loss": last["train_loss"],
            "train_loss_floor": last["train_loss_floor"], "val_scene_loss": last["scene_loss"],
            "val_scene_inbatch_top1": last["scene_inbatch_top1"], "single_val_loss": last["val_loss"],
            "single_inbatch_acc": last["val_inbatch_acc"], "zero_shot_seen_top1": last["val_top1"],
            "zero_shot_held_out_top1": last["held_out_top1"], **scored(model, tests)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tests = test_scenes(2 * recipes.SCENES_RECIPE["n_test_pairs"], TEST_SEED, preprocess_for(32))
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for seed in args.seeds:  # each seed's row as soon as it is measured: a long run shows its progress
            rows.append(trained_row(seed, tests, cache_dir))
            print(pd.Series(rows[-1]).round(3).to_string(), flush=True)
    rows = pd.DataFrame(rows).set_index("seed")
    floor = pd.Series(scored(build_random_clip("mini", seed=0).eval(), tests), name="random init")
    pd.set_option("display.width", 200)
    summary = pd.DataFrame({"mean": rows.mean(), "std": rows.std(ddof=1) if len(rows) > 1 else np.nan,
                            "min": rows.min(), "max": rows.max()})
    summary["random init"] = floor
    print(f"SCENES_RECIPE: {recipes.SCENES_RECIPE}")
    print(f"torch threads: {args.threads}; seeds: {args.seeds}; test scenes: {len(tests['val'][1])} seen, "
          f"{len(tests['held_out'][1])} with a held-out pair (seed {TEST_SEED})")
    print(rows.T.round(3).to_string())
    print(summary.round(3).to_string())
    print(f"total run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
