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


def score_scenes(model, scenes, preprocess, template: str = "a {}.") -> dict[str, float]:
    """Mean saliency scores over scenes [(PIL image, [(colour, shape, box), ...]), ...] (shapes.draw_scene's
    output), each object asked for by its caption, with the random map's expectations beside them."""
    resolution = check_vit(model).input_resolution
    found, baseline = [], []
    for image, objects in scenes:
        if image.size[0] != image.size[1]:
            raise ValueError(f"scenes must be square (clip's transform crops the centre), got {image.size}")
        scale = resolution / image.size[0]
        pixels = preprocess(image)
        for colour, shape, box in objects:
            box = [v * scale for v in box]
            saliency = patch_saliency(model, pixels, fill(template, f"{colour} {shape}"))
            found.append((mass_in_box(saliency, box, resolution), pointing_hit(saliency, box, resolution)))
            baseline.append(random_map_scores(box, resolution, len(saliency)))
    if not found:
        raise ValueError("no objects to score: give scenes with at least one object")
    found, baseline = torch.tensor(found, dtype=torch.float64), torch.tensor(baseline, dtype=torch.float64)
    return {"mass_in_box": found[:, 0].mean().item(), "pointing_game": found[:, 1].mean().item(),
            "random_mass_in_box": baseline[:, 0].mean().item(), "random_pointing_game": baseline[:, 1].mean().item(),
            "n_objects": len(found)}
