"""Recipes that put the pieces together: the mini-CLIP trained on shapes, loading a profile's model, and
fine-tuning a named model on a named source (the command line's and `make reproduce`'s fine-tuning)."""
import hashlib
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from .batches import train_loader_for, val_loader_for
from ..data import random_subset, split
from ..device import get_device
from .evaluation import validation_scores
from ..files import save_atomically, write_text_atomically
from ..models import build_random_clip, load_clip, preprocess_for
from .config import FineTuneData, RunFolder, TrainConfig
from .processes import processes_from_env
from .settings import SettingsError, data_problems
from .scene_training import fit_scenes, scene_scores, scene_splits
from .. import shape_captions
from ..shapes import SHAPES_TEMPLATES, ShapesDataset
from ..sources import open_source, source_name
from .loop import fine_tune
from ..zeroshot import build_classifier

# The mini-CLIP's recipe: one main shape per image (clip_helpers.shapes: sizes, jittered colours, clutter and
# distractors), n_per_class * (1 - val_fraction) images of each seen pair, each epoch captioned afresh with what it
# shows (shape_captions); scored on new images. Its effects and time: tools/offline_world_report.py.
# amp=None (fp32) on every machine: autocast chose bf16 only on CPUs with bf16 hardware, so the course's models
# differed between machines, and for this tiny model bf16 was no faster to train and 2-4x slower to score.
# Batch 64 at lr 1e-3, chosen over seeds 0-2 against batch 128 at lr 1e-3, 2e-3 and 4e-3 and batch 64 at 2e-3
# (README, "The mini-CLIP's recipe"): the highest mean and the smallest spread of the held-out top-1, for about 5%
# more time per epoch than batch 128; at 2e-3 and above some seeds stalled.
MINI_RECIPE = dict(world="shapes", n_per_class=100, val_fraction=0.2, num_epochs=12, batch_size=64, lr=1e-3,
                   weight_decay=0.1, warmup_fraction=0.1, seed=0, amp=None)
# The same task for the ViT mini-CLIP (models.MINI_VIT_CLIP), which needs more, smaller steps than the ResNet.
# Used to check int8 evaluation (benchmarks/finetune_speed.py --accuracy).
MINI_VIT_RECIPE = dict(MINI_RECIPE, architecture="mini-vit", num_epochs=30, batch_size=64, lr=1e-3, amp="auto")
# The harder offline world, not yet the course's default (tools/offline_world_report.py measures it): scenes of
# one to three objects (clip_helpers.scenes, n_scene_pairs scenes and their twins), scored after each epoch on
# fresh single-shape images (n_val_per_class per pair) and n_test_pairs held-back scene pairs.
SCENES_RECIPE = dict(world="scenes", n_scene_pairs=1200, n_test_pairs=100, n_val_per_class=20, num_epochs=12,
                     batch_size=128, lr=2e-3, weight_decay=0.1, warmup_fraction=0.1, seed=0, amp="auto")
# Seconds, for tests and the smoke profile: proves the pipeline runs, learns little.
SMOKE_RECIPE = dict(world="shapes", n_per_class=4, val_fraction=0.25, num_epochs=1, batch_size=32, lr=2e-3,
                    weight_decay=0.1, warmup_fraction=0.1, seed=0, amp="auto")
SCENES_SMOKE_RECIPE = dict(SCENES_RECIPE, n_scene_pairs=24, n_test_pairs=8, n_val_per_class=1, num_epochs=1,
                           batch_size=32)
RECIPES = {"default": MINI_RECIPE, "smoke": SMOKE_RECIPE, "scenes": SCENES_RECIPE, "scenes-smoke": SCENES_SMOKE_RECIPE}
HISTORY_VERSION = "v6"  # a new version retrains every cached mini-CLIP (v6: held_out_top1 scored at the recipe's amp)


def rendered(dataset) -> TensorDataset:
    """The dataset drawn once into a TensorDataset: shapes are drawn in PIL, too slow to redo every epoch."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def recipe_key(recipe: dict) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def shapes_splits(recipe: dict, preprocess):
    """(train, val, held_out, class_names): val holds unseen images of seen pairs, held_out the HELD_OUT pairs."""
    seen = open_source("shapes", "train", n_per_class=recipe["n_per_class"], transform=preprocess, seed=recipe["seed"])
    train, val = split(seen.dataset, recipe["val_fraction"], seed=recipe["seed"])
    n_held_out = max(1, round(recipe["n_per_class"] * recipe["val_fraction"]))
    held_out = open_source("shapes", "held_out", n_per_class=n_held_out, transform=preprocess, seed=recipe["seed"])
    return rendered(train), rendered(val), rendered(held_out.dataset), seen.class_names


def mini_clip_path(recipe: dict | None = None, cache_dir="data/weights") -> Path:
    """Where train_mini_clip caches the mini-CLIP of `recipe` (its file exists once it has been trained)."""
    return Path(cache_dir) / f"mini-clip-shapes-{HISTORY_VERSION}-{recipe_key({**MINI_RECIPE, **(recipe or {})})}.pt"


def train_mini_clip(recipe: dict | None = None, cache_dir="data/weights", retrain: bool = False,
                    progress: bool = True, device="cpu") -> tuple[torch.nn.Module, object, pd.DataFrame]:
    """(model, preprocess, history): MINI_CLIP trained from scratch on clip_helpers.shapes, cached on disk.

    The file name carries a hash of the recipe, so the smoke recipe never overwrites the real one, and
    HISTORY_VERSION, so a cache whose history was computed differently is not reused. The recipe's
    "architecture" (default "mini") names the model in models.ARCHITECTURES. The history has a column
    held_out_top1: zero-shot top-1 (%) after each epoch on colour/shape pairs never trained on.
    """
    recipe = {**MINI_RECIPE, **(recipe or {})}
    path = mini_clip_path(recipe, cache_dir)
    history_path = path.with_suffix(".csv")
    if path.is_file() and history_path.is_file() and not retrain:
        try:
            model, preprocess = load_clip(str(path), device=device)
            return model, preprocess, pd.read_csv(history_path)
        except ValueError as error:  # load_clip's messages for a damaged file; pandas' EmptyDataError is one too
            warnings.warn(f"The cached mini-CLIP {path} is unusable, so it is trained again: {error}", stacklevel=2)
    model = build_random_clip(recipe.get("architecture", "mini"), seed=recipe["seed"]).to(device)
    early = {}

    def keep_epoch_one(model, epoch):
        if epoch == 1:
            early["state"] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    history = (fit_on_scenes if recipe.get("world") == "scenes" else fit_on_shapes)(model, recipe, progress,
                                                                                  on_epoch=keep_epoch_one)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(early["state"], early_checkpoint_path(recipe, cache_dir))  # before the final one, so a final
    save_atomically(model.state_dict(), path)  # file always has its early one beside it
    write_text_atomically(history_path, history.to_csv(index=False))
    return model.eval(), preprocess_for(32), history


def recipe_config(recipe: dict, class_names: list[str], progress: bool) -> TrainConfig:
    """The TrainConfig of a mini-CLIP recipe (fit_on_shapes and fit_on_scenes train with the same one)."""
    return TrainConfig(class_names=class_names, templates=SHAPES_TEMPLATES, num_epochs=recipe["num_epochs"],
                       lr=recipe["lr"], weight_decay=recipe["weight_decay"], warmup_fraction=recipe["warmup_fraction"],
                       seed=recipe["seed"], amp=recipe["amp"], progress=progress)


def single_shape_scores(model, val_loader, held_out, class_names: list[str], amp) -> dict:
    """fine_tune's val_* scores on new images of the seen pairs and held_out_top1 on the held-out pairs (36-way)."""
    classifier = build_classifier(model, class_names, SHAPES_TEMPLATES)
    return {**validation_scores(model, val_loader, classifier, amp),
            "held_out_top1": held_out_top1(model, held_out, class_names, SHAPES_TEMPLATES, classifier, amp)}


def fit_on_shapes(model, recipe: dict, progress: bool = True, on_epoch=None) -> pd.DataFrame:
    """Train `model` in place on the shapes of `recipe`, each image captioned afresh every epoch with what it shows
    (shape_captions.captions_for; captions of equal meaning share a positive), batches keeping pairs of images of
    one pair together (one often small, the other big: size words pay). Its history has fine_tune's columns val_*
    (36-way zero-shot, SHAPES_TEMPLATES, on new images of the seen pairs) and held_out_top1 after every epoch."""
    if recipe.get("accum_steps", 1) != 1 or recipe.get("loss", "clip") != "clip":
        raise ValueError("the mini-CLIP's shapes training (scene_training.fit_scenes) takes neither accum_steps nor "
                         "loss='siglip': fine-tune with them instead (TrainConfig, or --accum-steps/--loss).")
    preprocess = preprocess_for(32)
    n_train = max(2, 2 * round(recipe["n_per_class"] * (1 - recipe["val_fraction"]) / 2))  # even: pairs of one pair
    train = ShapesDataset("train", n_per_class=n_train, seed=recipe["seed"])
    images = rendered(ShapesDataset("train", n_per_class=n_train, seed=recipe["seed"], transform=preprocess)).tensors[0]
    items = [train.item(index) for index in range(len(train))]
    n_val = max(1, round(recipe["n_per_class"] * recipe["val_fraction"]))
    # seed + 100: new images, none of them those the notebooks test on (seed + 1 to seed + 3)
    val, held_out = (rendered(ShapesDataset(split, n_per_class=n_val, seed=recipe["seed"] + 100, transform=preprocess))
                     for split in ("train", "heldout"))
    class_names = train.classes
    config = recipe_config(recipe, class_names, progress)
    val_loader = val_loader_for(val, recipe["batch_size"], recipe["seed"])

    def epoch_scores(model):
        return single_shape_scores(model, val_loader, held_out, class_names, recipe["amp"])
    return fit_scenes(model, images, items, config, recipe["batch_size"], epoch_scores,
                      captions=shape_captions.captions_for, on_epoch=on_epoch)


def fit_on_scenes(model, recipe: dict, progress: bool = True, on_epoch=None) -> pd.DataFrame:
    """Train `model` in place on the scenes of `recipe` (scene_training.fit_scenes). Its history has fine_tune's
    columns, val_* and held_out_top1 on fresh single-shape images of the seen and the held-out pairs (36-way,
    SHAPES_TEMPLATES), plus scene_loss and scene_inbatch_top1 on held-back scenes of seen pairs."""
    preprocess = preprocess_for(32)
    splits = scene_splits(recipe["n_scene_pairs"], recipe["n_test_pairs"], recipe["seed"], preprocess)
    val, held_out = (rendered(ShapesDataset(split, n_per_class=recipe["n_val_per_class"], seed=recipe["seed"] + 1,
                                            transform=preprocess)) for split in ("train", "heldout"))
    class_names = ShapesDataset("all", n_per_class=1).classes
    config = recipe_config(recipe, class_names, progress)
    val_loader = val_loader_for(val, recipe["batch_size"], recipe["seed"])

    def epoch_scores(model):
        scene = scene_scores(model, *splits["val"], seed=recipe["seed"], batch_size=recipe["batch_size"])
        return {**single_shape_scores(model, val_loader, held_out, class_names, recipe["amp"]),
                "scene_loss": scene["scene_loss"], "scene_inbatch_top1": scene["inbatch_top1"]}
    return fit_scenes(model, *splits["train"], config, recipe["batch_size"], epoch_scores, on_epoch=on_epoch)


def held_out_top1(model, dataset, class_names: list[str], templates: list[str], classifier=None,
                  amp: str | None = "auto") -> float:
    """Zero-shot top-1 (%) over all classes on `dataset`: images of pairs the model never saw captioned.
    classifier: build_classifier(model, class_names, templates) when the caller has it already."""
    model.eval()
    if classifier is None:
        classifier = build_classifier(model, class_names, templates)
    return validation_scores(model, DataLoader(dataset, batch_size=256), classifier, amp)["val_top1"]


def load_model(model_name: str, data_dir="data", device=None, mini_recipe: str = "default",
               progress: bool = True) -> tuple[torch.nn.Module, object, pd.DataFrame | None]:
    """(model, preprocess, history): pretrained weights via load_clip (history None), or for "mini" the
    kit's mini-CLIP trained on shapes by train_mini_clip, cached in <data_dir>/weights after the first run.

    mini_recipe: "default" (MINI_RECIPE; tools/offline_world_report.py times it) or "smoke" (SMOKE_RECIPE, seconds).
    """
    device = device or get_device()
    download_root = Path(data_dir) / "weights"
    if model_name == "mini":
        return train_mini_clip(RECIPES[mini_recipe], cache_dir=download_root, progress=progress, device=device)
    model, preprocess = load_clip(model_name, device=device, download_root=download_root)
    return model, preprocess, None


def train_and_val_sets(source: str, preprocess, data_dir, train_size: int | None, val_size: int | None, seed: int = 0,
                       split_name: str = "train"):
    """(train, val, opened source): the official split where there is one (CIFAR-10: validate on its test set),
    else a stratified 80/20 split of the pool (the report validated on training rows); then random subsets.
    The data of both the command line and notebook 05. split_name: the source's split to train on
    (sources.open_source; "all" for every shape/colour pair)."""
    problems = data_problems(train_size=train_size, val_size=val_size)
    if problems:
        raise SettingsError(f"{'; '.join(problems)}.")
    opened = open_source(source, split_name, data_dir=data_dir, transform=preprocess, seed=seed)
    if opened.has_test_split:
        train, val = opened.dataset, open_source(source, "test", data_dir=data_dir, transform=preprocess).dataset
    else:
        train, val = split(opened.dataset, val_fraction=0.2, seed=seed)
    return random_subset(train, train_size, seed), random_subset(val, val_size, seed), opened


def default_run(model_name: str, source: str) -> str:
    """The run folder's name when none is given, e.g. caltech256-ViT-B-32."""
    return f"{source_name(source)}-{model_name.replace('/', '-')}"


def default_lr(model_name: str) -> float:
    return MINI_RECIPE["lr"] if model_name == "mini" else 1e-5


def fine_tune_on(data: FineTuneData = FineTuneData(), config: TrainConfig | None = None,
                 run_folder: RunFolder | None = None, run: str | None = None) -> tuple[torch.nn.Module, pd.DataFrame]:
    """(model, history): load data.model_name, fine-tune it on data.source (a name or a folder) with the kit's loop.

    The defaults follow the report (ViT-B/32, Caltech-256, ~5000 training and 1000 validation images).
    config: the hyperparameters; its class_names None (the default) takes the source's class names, training
    templates and prompts. None: TrainConfig() with lr 1e-5 for pretrained weights, MINI_RECIPE's for "mini".
    run_folder: where the checkpoints go; None: <data_dir>/runs/<run>/ (run: default_run's name), a new run.
    Under torchrun each process takes its share of every global batch of data.batch_size (see fine_tune).
    Every setting is checked when its object is made (settings), every caption's length once the model and the
    class names are known, before the first step (fine_tune); nothing is loaded before.
    """
    config = config or TrainConfig(lr=default_lr(data.model_name))
    run_folder = run_folder or RunFolder(Path(data.data_dir) / "runs" / (run or default_run(data.model_name,
                                                                                          data.source)))
    run_folder = replace(run_folder, run_settings={"model": data.model_name, "dataset": data.source,
                                                   **(run_folder.run_settings or {})})
    processes = processes_from_env(data.device or get_device())  # under torchrun: joins its processes, one GPU each
    device = processes.device
    # Downloads and caches are written by the main process first, then read by the others.
    model, preprocess = processes.main_first(load_clip, data.model_name, device=device,
                                             download_root=str(Path(data.data_dir) / "weights"))
    train, val, opened = processes.main_first(train_and_val_sets, data.source, preprocess, data.data_dir,
                                              data.train_size, data.val_size)
    if config.class_names is None:
        config = replace(config, class_names=opened.class_names, templates=opened.train_templates,
                         eval_templates=opened.templates)
    pin = str(device).startswith("cuda")
    history = fine_tune(model, train_loader_for(train, data.batch_size, config.seed, data.workers),
                        val_loader_for(val, data.batch_size, config.seed, data.workers, pin_memory=pin), config,
                        run_folder)
    return model, history


def early_checkpoint_path(recipe: dict | None = None, cache_dir="data/weights") -> Path:
    """Where train_mini_clip keeps the epoch-1 weights of `recipe` beside the final ones (for comparisons)."""
    path = mini_clip_path(recipe, cache_dir)
    return path.with_name(path.stem + "-epoch1.pt")
