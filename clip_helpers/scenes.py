"""Scenes of one to three coloured shapes, captioned at several levels of detail: a harder offline world for the mini-CLIP (recipes.SCENES_RECIPE; not yet the course's default).

A single shape per image (clip_helpers.shapes) lets a model win with a bag of two words. Here a caption may
name the objects ("a red circle and a blue square."), their drawn sizes ("a small red circle."), how many
there are ("two shapes including a red circle."), or a relation whose word order carries the meaning
("a red circle left of a blue square." is false of the same objects the other way round). Training scenes
come in pairs that differ only in what the bag of words cannot see (the mirror image, the colours swapped
between two objects, the other size), so every batch holds the distractors that make order and binding pay.
shapes.HELD_OUT pairs never appear in a training scene. Everything is drawn from a seed: same seed, same pixels.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import COLOURS, HELD_OUT, RGB, SHAPES, SUPERSAMPLE, outline

CANVAS = 32  # the mini-CLIP's image_resolution
CELL = CANVAS // 2  # several objects sit in distinct cells of a 2 x 2 grid, so "left of" is never ambiguous
# Radii in pixels at CANVAS. Every "small" is smaller than every "big", so a size word is true of the drawing.
RADII = {1: {"small": (3.5, 5.0), "big": (7.0, 11.0)}, 2: {"small": (3.5, 5.0), "big": (6.3, 7.3)}}
PREFIXES = ["", "a photo of ", "a drawing of ", "a picture of "]
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
LEVELS = ("names", "sizes", "count", "relation")
OUTLINES = {shape: outline(shape) for shape in SHAPES}  # computed once: scenes are drawn by the thousand
LEVEL_WEIGHTS = {"names": 0.3, "sizes": 0.2, "count": 0.1, "relation": 0.4}


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str  # "small" or "big", true of the drawn radius
    cell: int  # 0..3 of the 2 x 2 grid (column = cell % 2), or -1 when alone on the canvas


def seen_pairs() -> list[tuple[str, str]]:
    return [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in HELD_OUT]


def column(thing: Thing) -> int:
    return thing.cell % 2


def random_scene(rng, pairs, n_objects: int) -> tuple[Thing, ...]:
    """n_objects distinct (colour, shape) pairs from `pairs`, random sizes, in distinct cells; at least two
    columns are used when there are several, so every scene of two or more has a left-right relation."""
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=n_objects, replace=False)]
    sizes = rng.choice(["small", "big"], size=n_objects)
    if n_objects == 1:
        return (Thing(*chosen[0], str(sizes[0]), -1),)
    while True:
        cells = rng.choice(4, size=n_objects, replace=False)
        if len({int(c) % 2 for c in cells}) == 2:
            return tuple(Thing(c, s, str(z), int(cell)) for (c, s), z, cell in zip(chosen, sizes, cells))


def mirrored(scene) -> tuple[Thing, ...]:
    """The scene flipped left to right: every "left of" becomes "right of", the objects and sizes stay."""
    return tuple(Thing(t.colour, t.shape, t.size, t.cell ^ 1 if t.cell >= 0 else -1) for t in scene)


def colours_swapped(scene, rng) -> tuple[Thing, ...]:
    """Two objects exchange their colours: the same words, bound the other way."""
    i, j = rng.choice(len(scene), size=2, replace=False)
    things = list(scene)
    a, b = things[i], things[j]
    things[i], things[j] = Thing(b.colour, a.shape, a.size, a.cell), Thing(a.colour, b.shape, b.size, b.cell)
    return tuple(things)


def resized(scene) -> tuple[Thing, ...]:
    return tuple(Thing(t.colour, t.shape, "big" if t.size == "small" else "small", t.cell) for t in scene)


def twin(scene, rng, swap_colours: bool = True) -> tuple[Thing, ...]:
    """The scene's distractor: what a bag of words cannot tell from it (mirror, swapped colours, other size).
    Swapped colours are used only where every new pair is a seen one (and never with swap_colours=False)."""
    if len(scene) == 1:
        return resized(scene)
    if swap_colours and rng.random() < 0.5:
        swapped = colours_swapped(scene, rng)
        if all((t.colour, t.shape) not in HELD_OUT for t in swapped) and swapped != scene:
            return swapped
    return mirrored(scene)


def scene_pairs(n_pairs: int, seed: int = 0, held_out: bool = False) -> list[tuple[Thing, ...]]:
    """2 * n_pairs scenes, each followed by its twin. held_out=True: every scene holds one HELD_OUT pair
    (its other objects are seen pairs); otherwise no HELD_OUT pair appears at all."""
    rng = np.random.default_rng([seed, 1 if held_out else 0, 19])
    seen = seen_pairs()
    scenes = []
    for _ in range(n_pairs):
        n_objects = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        scene = random_scene(rng, seen, n_objects)
        if held_out:
            # A seen pair whose colour or shape clashes with another object would repeat a word; avoid it.
            unused = [p for p in HELD_OUT if all(p[0] != t.colour and p[1] != t.shape for t in scene[1:])]
            colour, shape = unused[rng.integers(len(unused))]
            scene = (Thing(colour, shape, scene[0].size, scene[0].cell),) + scene[1:]
        # A held-out scene's twin keeps its held-out pair where it is: mirrored or resized, never recoloured.
        scenes += [scene, twin(scene, rng, swap_colours=not held_out)]
    return scenes


def draw(scene, seed) -> Image.Image:
    """The scene on a pale noisy CANVAS x CANVAS background; `seed` fixes the jitter, tint and rotation.

    All objects are drawn on one supersampled canvas and shrunk once (with an object mask, so the noise stays
    on the background): one resize per scene rather than one per object, as scenes are drawn by the thousand."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(205, 245) + rng.uniform(-10, 10, size=3)
    big = Image.new("RGB", (CANVAS * SUPERSAMPLE,) * 2, tuple(int(v) for v in np.clip(tint, 0, 255)))
    mask = Image.new("L", big.size, 0)
    for thing in scene:
        fill_rgb = np.clip(np.array(RGB[thing.colour]) + rng.uniform(-15, 15, size=3), 0, 255).astype(int)
        points = object_points(thing, rng)
        ImageDraw.Draw(big).polygon(points, fill=tuple(int(v) for v in fill_rgb))
        ImageDraw.Draw(mask).polygon(points, fill=255)
    small = np.asarray(big.reduce(SUPERSAMPLE), dtype=np.float64)  # a box filter: the mean of each block
    background = 1 - np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float64)[..., None] / 255
    noise = rng.normal(0, 6, size=(CANVAS, CANVAS, 3)) * background
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8))


def object_points(thing: Thing, rng) -> list[tuple[float, float]]:
    """The polygon of `thing` on the supersampled canvas: its drawn radius, jittered in its cell, rotated."""
    low, high = RADII[1 if thing.cell < 0 else 2][thing.size]
    radius = rng.uniform(low, high)
    if thing.cell < 0:
        left, top, span = 0.0, 0.0, float(CANVAS)
    else:
        left, top, span = float(column(thing) * CELL), float(thing.cell // 2 * CELL), float(CELL)
    margin = radius + 0.5
    cx, cy = left + rng.uniform(margin, span - margin), top + rng.uniform(margin, span - margin)
    angle = np.radians(rng.uniform(-20, 20))
    cos, sin = np.cos(angle), np.sin(angle)
    return [(SUPERSAMPLE * (cx + radius * (x * cos - y * sin)), SUPERSAMPLE * (cy + radius * (x * sin + y * cos)))
            for x, y in OUTLINES[thing.shape]]
