"""What the speed-ups that are not exact cost in accuracy: bf16 autocast in training (mini-CLIP on shapes), int8
evaluation and patch dropout (the ViT mini-CLIP on shapes), each against its exact fp32 counterpart.

    python benchmarks/finetune_speed.py --precision     # runs precision_comparison
    python benchmarks/finetune_speed.py --accuracy      # runs accuracy_comparison
"""
import time

import torch
from torch.utils.data import DataLoader

from clip_helpers.features import encode_images
from clip_helpers.models import build_random_clip
from clip_helpers.quantize import first_images, int8_image_tower
from clip_helpers.shapes import SHAPES_TEMPLATES, ShapesDataset
from clip_helpers.training import recipes
from clip_helpers.zeroshot import build_classifier, logits


def precision_comparison():
    """Seen- and held-out-pair zero-shot top-1 of mini-CLIP trained with the kit's loop in fp32 and under bf16
    autocast (what the kit uses on GPUs; on a CPU without bf16 hardware it is emulated: slow, same rounding)."""
    result = {}
    for amp in (None, "bfloat16"):
        start = time.perf_counter()
        _, _, history = recipes.train_mini_clip({"amp": amp}, progress=False)
        last = history.iloc[-1]
        name = amp or "float32"
        result[name] = {"seen_top1": round(float(last["val_top1"]), 2), "held_out_top1": round(float(last["held_out_top1"]), 2),
                        "train_loss": round(float(last["train_loss"]), 4), "seconds": round(time.perf_counter() - start, 1)}
        print(f"mini-CLIP on shapes, {name:8s}: seen pairs {last['val_top1']:6.2f}%  held-out pairs "
              f"{last['held_out_top1']:6.2f}%  final train loss {last['train_loss']:.4f}")
    result["seen_top1_difference"] = round(result["bfloat16"]["seen_top1"] - result["float32"]["seen_top1"], 2)
    return result


def drop_patches(keep):
    """A forward pre-hook for visual.ln_pre: in training, keep the class token and a random `keep` share of
    the patch tokens (FLIP's patch dropout, Li et al. 2023), so the transformer does that much less work."""
    def hook(module, args):
        (x,) = args
        if not module.training:
            return None
        n, length, width = x.shape
        patches = torch.rand(n, length - 1, device=x.device).argsort(dim=1)[:, :max(1, round((length - 1) * keep))] + 1
        index = torch.cat([torch.zeros_like(patches[:, :1]), patches], dim=1)
        return (x.gather(1, index[..., None].expand(-1, -1, width)),)
    return hook


def predictions(model, dataset, classifier):
    # fp32 outside the int8 layers, always: under "auto" a CPU with bf16 hardware would make the "fp32" column bf16
    features, labels = encode_images(model, DataLoader(dataset, batch_size=256), progress=False, precision="fp32")
    return logits(features, classifier).argmax(dim=1), labels


def accuracy_comparison(patch_keep=0.5, patch_dropout=True):
    """The two speed-ups that are not exact, on the ViT mini-CLIP trained on shapes with the kit's loop
    (recipes.MINI_VIT_RECIPE): int8 evaluation of the trained model against fp32, on the same images; and
    (patch_dropout) training with half the patches dropped against training with all of them."""
    recipe = recipes.MINI_VIT_RECIPE
    model, preprocess, history = recipes.train_mini_clip(recipe, progress=False)
    _, val, held_out, class_names = recipes.shapes_splits(recipe, preprocess)
    int8_model = int8_image_tower(model, first_images(DataLoader(val, batch_size=64)))  # as evaluate calibrates
    # New images, none of them trained on, enough that one point is 15 (seen) or 12 (held-out) images: the
    # recipe's own held-out set has 120, where one image is 0.8 points.
    fresh = {f"fresh_{split}": recipes.rendered(ShapesDataset(split, n_per_class=n, seed=recipe["seed"] + 1,
                                                              transform=preprocess))
             for split, n in (("train", 50), ("heldout", 200))}
    classifier = build_classifier(model, class_names, SHAPES_TEMPLATES)
    result = {}
    for name, dataset in {"seen_val": val, "held_out": held_out, **fresh}.items():
        (fp32, labels), (int8, _) = predictions(model, dataset, classifier), predictions(int8_model, dataset, classifier)
        row = {"n": len(labels), "fp32_top1": 100 * (fp32 == labels).float().mean().item(),
               "int8_top1": 100 * (int8 == labels).float().mean().item(),
               "same_prediction": 100 * (fp32 == int8).float().mean().item()}
        result[f"int8_{name}"] = {k: round(v, 2) for k, v in row.items()}
        print(f"ViT mini-CLIP, {name:15s} ({row['n']:4d} images): fp32 (exact) {row['fp32_top1']:6.2f}%  int8 "
              f"{row['int8_top1']:6.2f}%  same prediction {row['same_prediction']:6.2f}%")
    if not patch_dropout:
        return result
    start = time.perf_counter()
    dropped = build_random_clip("mini-vit", seed=recipe["seed"])
    dropped.visual.ln_pre.register_forward_pre_hook(drop_patches(patch_keep))
    dropped_history = recipes.fit_on_shapes(dropped, recipe, progress=False)
    for name, h in (("all patches", history), (f"{patch_keep:.0%} of patches", dropped_history)):
        print(f"ViT mini-CLIP trained on {name:15s}: seen pairs {h['val_top1'].iloc[-1]:6.2f}%  "
              f"held-out pairs {h['held_out_top1'].iloc[-1]:6.2f}%")
    result["patch_dropout"] = {"keep": patch_keep, "seconds": round(time.perf_counter() - start, 1),
                               "seen_top1": round(float(dropped_history["val_top1"].iloc[-1]), 2),
                               "held_out_top1": round(float(dropped_history["held_out_top1"].iloc[-1]), 2),
                               "all_patches_seen_top1": round(float(history["val_top1"].iloc[-1]), 2),
                               "all_patches_held_out_top1": round(float(history["held_out_top1"].iloc[-1]), 2)}
    return result
