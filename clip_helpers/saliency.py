"""Where the model looks: a patch-level saliency map of a ViT image tower for an image and a text, scored
against the boxes of procedural scenes (clip_helpers.shapes.draw_scene knows where every object is).

The map is gradient x input on the patch tokens (the conv1 patch embeddings, before the class token and the
positional embedding): s_p = sum_c (d cos(image, text) / d token_pc) token_pc, the first-order share of
patch p in the image-text cosine. Only the positive part is kept (patches that raise the similarity to
this text), normalised to sum 1. A ResNet tower has no patch tokens: the offline MINI_CLIP is a ResNet,
MINI_VIT_CLIP (models.build_random_clip("mini-vit")) and ViT-B/32 are ViTs.
Scores: the fraction of saliency mass inside the named object's box (patches weighted by the fraction of
their area inside it) and the pointing game (is the most salient patch's centre inside the box?), against
a random map, whose expectations are exact: a map of i.i.d. values puts on average the box's share of the
patch area inside it, and its argmax is a uniformly random patch.
"""
import torch
from clip.model import VisionTransformer

from .similarity import normalize
from .text import encode_texts, fill


def check_vit(model) -> VisionTransformer:
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"patch saliency needs a ViT image tower, this model's is a {type(visual).__name__} (no "
                         f"patches): use build_random_clip('mini-vit') or a ViT checkpoint such as ViT-B/32")
    return visual


def patch_saliency(model, image: torch.Tensor, text) -> torch.Tensor:
    """[grid, grid] map summing to 1: each patch's positive share of cos(image, text) (gradient x token).

    `image`: one preprocessed image [3, H, W]; `text`: a caption (str) or its text features [dim].
    """
    visual = check_vit(model)
    if image.dim() != 3:
        raise ValueError(f"patch_saliency takes one image [3, H, W], got shape {tuple(image.shape)}")
    device = visual.conv1.weight.device
    with torch.no_grad():
        text_features = encode_texts(model, [text])[0] if isinstance(text, str) else torch.as_tensor(text, device=device)
    stored = []
    hook = visual.conv1.register_forward_hook(lambda module, inputs, output: stored.append(output))
    try:
        with torch.enable_grad():
            image_features = model.encode_image(image[None].to(device, visual.conv1.weight.dtype))
            cosine = (normalize(image_features.float())[0] * normalize(text_features.float())).sum()
            tokens = stored[0]
            (grad,) = torch.autograd.grad(cosine, tokens)
    finally:
        hook.remove()
    scores = (grad * tokens).sum(dim=1)[0].detach().float().clamp_min(0)  # [grid, grid]
    if not scores.sum() > 0:
        raise ValueError(f"no patch raises the similarity to {text if isinstance(text, str) else 'this text'!r} "
                         f"(cosine {cosine.item():.3f}): the map would be all zero, there is nothing to normalise")
    return scores / scores.sum()


def box_weights(box, image_size: int, grid: int) -> torch.Tensor:
    """[grid, grid]: the fraction of each patch's area inside `box` (left, top, right, bottom in pixels)."""
    edges = torch.linspace(0, image_size, grid + 1)

    def overlap(low, high):  # per patch, along one axis
        return ((torch.minimum(edges[1:], torch.tensor(float(high))) - torch.maximum(edges[:-1], torch.tensor(float(low))))
                .clamp_min(0) / (edges[1:] - edges[:-1]))
    left, top, right, bottom = box
    return overlap(top, bottom)[:, None] * overlap(left, right)[None, :]


def mass_in_box(saliency: torch.Tensor, box, image_size: int) -> float:
    """The fraction of the map's mass inside the box."""
    return float((saliency * box_weights(box, image_size, len(saliency))).sum() / saliency.sum())


def pointing_hit(saliency: torch.Tensor, box, image_size: int) -> bool:
    """Whether the centre of the most salient patch lies inside the box."""
    grid = len(saliency)
    row, col = divmod(int(saliency.argmax()), grid)
    x, y = (col + 0.5) * image_size / grid, (row + 0.5) * image_size / grid
    left, top, right, bottom = box
    return bool(left <= x < right and top <= y < bottom)


def random_map_scores(box, image_size: int, grid: int) -> tuple[float, float]:
    """(expected mass in box, pointing-game hit rate) of a random map of i.i.d. patch values."""
    weights = box_weights(box, image_size, grid)
    centres = (torch.arange(grid) + 0.5) * image_size / grid
    left, top, right, bottom = box
    inside = ((centres >= top) & (centres < bottom))[:, None] & ((centres >= left) & (centres < right))[None, :]
    return float(weights.mean()), float(inside.float().mean())


def class_text_features(model, class_names: list[str], template: str = "a {}.") -> torch.Tensor:
    with torch.no_grad():
        return encode_texts(model, [fill(template, name) for name in class_names]).float()


def recognised(model, pixels: torch.Tensor, objects, class_names: list[str], template: str = "a {}.",
               text_features: torch.Tensor | None = None) -> list[bool]:
    """Per object of one scene: does its caption score above the caption of every class absent from the scene?
    (The model's prediction for that object is right: no absent colour/shape pair beats it.) text_features:
    class_text_features(model, class_names, template), when the caller has them already."""
    present = [f"{colour} {shape}" for colour, shape, _ in objects]
    unknown = [name for name in present if name not in class_names]
    if unknown:
        raise ValueError(f"objects {unknown} are not among the class_names {class_names}: pass the scene's classes")
    weight = check_vit(model).conv1.weight
    with torch.no_grad():
        image_features = model.encode_image(pixels[None].to(weight.device, weight.dtype)).float()
        if text_features is None:
            text_features = class_text_features(model, class_names, template)
        similarities = (normalize(image_features) @ normalize(text_features).T)[0].cpu()
    absent = torch.tensor([name not in present for name in class_names])
    best_absent = similarities[absent].max() if absent.any() else torch.tensor(float("-inf"))
    return [bool(similarities[class_names.index(name)] > best_absent) for name in present]


def object_scores(model, scenes, preprocess, class_names: list[str] | None = None, template: str = "a {}.") -> list[dict]:
    """One row per object of scenes [(PIL image, [(colour, shape, box), ...]), ...] (shapes.draw_scene's output):
    its map's mass_in_box and pointing_hit, the random map's expectations, and with class_names whether the
    model recognised it (`recognised`). An object whose map has no positive patch (patch_saliency refuses to
    normalise it) gets has_map False and no scores: it is counted, not scored."""
    resolution = check_vit(model).input_resolution
    # The captions are the same for every scene: encode them once, not once per scene.
    text_features = class_text_features(model, class_names, template) if class_names is not None else None
    rows = []
    for index, (image, objects) in enumerate(scenes):
        if image.size[0] != image.size[1]:
            raise ValueError(f"scenes must be square (clip's transform crops the centre), got {image.size}")
        scale = resolution / image.size[0]
        pixels = preprocess(image)
        right = (recognised(model, pixels, objects, class_names, template, text_features) if class_names is not None
                 else [None] * len(objects))
        for (colour, shape, box), is_right in zip(objects, right):
            box = [v * scale for v in box]
            row = {"scene": index, "object": f"{colour} {shape}", "recognised": is_right, "has_map": True,
                   "mass_in_box": float("nan"), "pointing_hit": float("nan")}
            try:
                saliency = patch_saliency(model, pixels, fill(template, f"{colour} {shape}"))
                row.update(mass_in_box=mass_in_box(saliency, box, resolution),
                           pointing_hit=float(pointing_hit(saliency, box, resolution)))
            except ValueError as error:
                if "no patch raises" not in str(error):
                    raise
                row["has_map"] = False
            grid = resolution // check_vit(model).conv1.kernel_size[0]  # patches per side
            row["random_mass_in_box"], row["random_pointing_game"] = random_map_scores(box, resolution, grid)
            rows.append(row)
    if not rows:
        raise ValueError("no objects to score: give scenes with at least one object")
    return rows


def mean_scores(rows: list[dict]) -> dict[str, float]:
    """The mean scores of object_scores' rows that have a map (NaN where none has), with their count
    (n_objects) and the count of rows without a map (n_without_map)."""
    scored = [row for row in rows if row["has_map"]]
    columns = {"mass_in_box": "mass_in_box", "pointing_game": "pointing_hit", "random_mass_in_box": "random_mass_in_box",
               "random_pointing_game": "random_pointing_game"}
    means = {name: (torch.tensor([row[column] for row in scored], dtype=torch.float64).mean().item() if scored
                    else float("nan")) for name, column in columns.items()}
    return {**means, "n_objects": len(scored), "n_without_map": len(rows) - len(scored)}


def scores_by_prediction(rows: list[dict]) -> dict[str, dict[str, float]]:
    """mean_scores of the objects the model recognised and of those it did not (rows of object_scores with
    class_names); a group with no object has n_objects 0 and NaN scores."""
    if any(row["recognised"] is None for row in rows):
        raise ValueError("these rows carry no prediction: call object_scores with class_names")
    return {"recognised": mean_scores([row for row in rows if row["recognised"]]),
            "not recognised": mean_scores([row for row in rows if not row["recognised"]])}


def score_scenes(model, scenes, preprocess, template: str = "a {}.") -> dict[str, float]:
    """Mean saliency scores over scenes (object_scores' rows, averaged by mean_scores), with the random map's
    expectations beside them."""
    scores = mean_scores(object_scores(model, scenes, preprocess, template=template))
    if not scores["n_objects"]:
        raise ValueError(f"no patch raises the similarity to any of the {scores['n_without_map']} objects' captions: "
                         f"no map, nothing to score")
    return scores
