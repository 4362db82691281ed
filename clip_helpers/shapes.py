"""Coloured shapes with captions: a dataset that needs no download, for teaching and for training mini-CLIP.

Every image shows one shape in one colour on a pale noisy background, e.g. "red circle". Six (colour, shape)
pairs are held out of the training split, so a model trained on "train" can be asked about pairs it has
never seen (compositional zero-shot): it saw red things and circles, but never a red circle.
"""
import math

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RGB = {
    "red": (215, 25, 30), "green": (25, 150, 45), "blue": (30, 70, 215),
    "yellow": (235, 205, 15), "purple": (135, 40, 175), "orange": (245, 125, 15),
}
# A diagonal: each colour and each shape is held out exactly once, so each is still seen in training.
HELD_OUT = [(colour, SHAPES[i]) for i, colour in enumerate(COLOURS)]
SHAPES_TEMPLATES = [
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
    "a small {}.",
    "a big {}.",
]
# Prompts the mini-CLIP never trained on (clip_helpers.compositional tests them). The first list reorders the
# training captions' own words; the second brings words ("image", "this", "is", ...) that no training
# caption holds, whose token embeddings therefore never received a gradient: they are still random.
SHAPES_RECOMBINED_TEMPLATES = [
    "a picture of a small {}.",
    "a big {} on a plain background.",
    "a drawing of a big {}.",
    "a photo of a {} on a plain background.",
]
SHAPES_NEW_WORD_TEMPLATES = [
    "an image of a {}.",
    "a {} drawn on paper.",
    "this is a {}.",
    "there is a {} here.",
]
# Synonyms are all new words to the mini-CLIP (compositional.training_texts: its few dozen tokens); some are one BPE token,
# others several ("quadrilateral" is quad+ril+ateral, "pentagram" pent+agram, "tangerine" one).
COLOUR_SYNONYMS = {"red": "crimson", "green": "emerald", "blue": "navy",
                   "yellow": "golden", "purple": "violet", "orange": "tangerine"}
SHAPE_SYNONYMS = {"circle": "disc", "square": "quadrilateral", "triangle": "wedge",
                  "star": "pentagram", "cross": "plus", "heart": "valentine"}
SUPERSAMPLE = 4  # shapes are drawn 4x larger then shrunk with antialiasing, so edges stay clean at 32 px


def outline(shape):
    """The shape as polygon points around (0, 0), radius about 1, y pointing down."""
    angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    if shape == "circle":
        return [(math.cos(a), math.sin(a)) for a in angles]
    if shape == "square":
        return [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    if shape == "triangle":
        return [(math.cos(a), 0.1 + math.sin(a)) for a in np.radians([-90, 30, 150])]
    if shape == "star":
        radii = [1.0 if k % 2 == 0 else 0.42 for k in range(10)]
        return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, np.radians(np.arange(-90, 270, 36)))]
    if shape == "cross":
        w, e = 0.32, 0.95
        return [(-w, -e), (w, -e), (w, -w), (e, -w), (e, w), (w, w),
                (w, e), (-w, e), (-w, w), (-e, w), (-e, -w), (-w, -w)]
    if shape == "heart":  # the classic parametric heart, centred and scaled to radius 1
        x = 16 * np.sin(angles) ** 3
        y = -(13 * np.cos(angles) - 5 * np.cos(2 * angles) - 2 * np.cos(3 * angles) - np.cos(4 * angles))
        y -= (y.max() + y.min()) / 2
        scale = np.hypot(x, y).max()
        return list(zip(x / scale, y / scale))
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def draw_mask(shape, size, rng):
    """An L-mode mask of `shape` at a random size, position and rotation, antialiased down to size x size."""
    big = size * SUPERSAMPLE
    radius = rng.uniform(0.22, 0.38) * big
    cx, cy = rng.uniform(radius + 0.04 * big, big - radius - 0.04 * big, size=2)
    angle = math.radians(rng.uniform(-25, 25))
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in outline(shape)]
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return mask.resize((size, size), Image.Resampling.LANCZOS)


def draw_shape(colour, shape, size=32, rng=None):
    """One PIL RGB image of a `colour` `shape` on a pale, slightly tinted, noisy background."""
    rng = np.random.default_rng() if rng is None else rng
    tint = rng.uniform(205, 245) + rng.uniform(-10, 10, size=3)
    background = np.clip(tint + rng.normal(0, 6, size=(size, size, 3)), 0, 255).astype(np.uint8)
    fill = np.clip(np.array(RGB[colour]) + rng.uniform(-15, 15, size=3), 0, 255).astype(int)
    mask = draw_mask(shape, size, rng)
    return Image.composite(Image.new("RGB", (size, size), tuple(fill)), Image.fromarray(background), mask)


class ShapesDataset(Dataset):
    """`n_per_class` images for each "colour shape" class of `split`, drawn on demand.

    split: "train" (all pairs but HELD_OUT), "heldout" (only HELD_OUT) or "all".
    Labels index `.classes`, the same 36 names in the same order for every split, so a classifier built from
    `.classes` works on any split. Item k of a class is drawn from a generator seeded by (seed, label, k):
    the same pixels whatever the split, access order or DataLoader worker.
    """

    def __init__(self, split="train", n_per_class=100, image_size=32, seed=0, transform=None):
        if split not in ("train", "heldout", "all"):
            raise ValueError(f'split must be "train", "heldout" or "all", got {split!r}')
        self.classes = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
        held_out = {f"{colour} {shape}" for colour, shape in HELD_OUT}
        labels = [label for label, name in enumerate(self.classes)
                  if split == "all" or (name in held_out) == (split == "heldout")]
        self.targets = [label for label in labels for _ in range(n_per_class)]
        self.split, self.n_per_class, self.image_size = split, n_per_class, image_size
        self.seed, self.transform = seed, transform

    def __len__(self):
        return len(self.targets)

    def cache_key(self) -> str:
        """The settings every item is drawn from (features.items_key caches under it): the same settings, the same
        pixels."""
        return f"split={self.split!r}, n_per_class={self.n_per_class}, image_size={self.image_size}, seed={self.seed}"

    def __getitem__(self, index):
        label = self.targets[index]
        rng = np.random.default_rng([self.seed, label, index % self.n_per_class])
        colour, shape = self.classes[label].split(" ")
        image = draw_shape(colour, shape, self.image_size, rng)
        return (self.transform(image) if self.transform else image), label


def draw_scene(n_objects: int = 3, size: int = 96, object_size: int = 32, seed: int = 0,
               objects=None) -> tuple[Image.Image, list[tuple[str, str, tuple[int, int, int, int]]]]:
    """(PIL RGB image, [(colour, shape, box), ...]): several shapes on one pale noisy size x size canvas.

    The canvas is cut into (size // object_size)^2 square cells; each object is drawn as in `draw_shape`
    inside its own randomly chosen cell, and its box (left, top, right, bottom) is that cell, so boxes never
    overlap and a crop of one is a single-shape image like the training images. `objects` fixes the
    (colour, shape) pairs (e.g. "red circle, blue square" against its swap, to test attribute binding);
    otherwise n_objects distinct pairs are drawn at random. The same arguments give the same pixels.
    """
    cells_per_side = size // object_size
    rng = np.random.default_rng([seed, size, object_size])
    if objects is None:
        pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
        objects = [pairs[i] for i in rng.choice(len(pairs), size=n_objects, replace=False)]
    objects = [tuple(pair) for pair in objects]
    if not 0 < len(objects) <= cells_per_side ** 2:
        raise ValueError(f"a {size}px scene holds 1 to {cells_per_side ** 2} objects of {object_size}px, "
                         f"got {len(objects)}; make the canvas larger or the objects smaller")
    for colour, shape in objects:
        if colour not in RGB or shape not in SHAPES:
            raise ValueError(f"unknown object ({colour!r}, {shape!r}); colours {COLOURS}, shapes {SHAPES}")
    tint = rng.uniform(205, 245) + rng.uniform(-10, 10, size=3)
    canvas = Image.fromarray(np.clip(tint + rng.normal(0, 6, size=(size, size, 3)), 0, 255).astype(np.uint8))
    cells = rng.choice(cells_per_side ** 2, size=len(objects), replace=False)
    placed = []
    for (colour, shape), cell in zip(objects, cells):
        left, top = int(cell % cells_per_side) * object_size, int(cell // cells_per_side) * object_size
        box = (left, top, left + object_size, top + object_size)
        fill = np.clip(np.array(RGB[colour]) + rng.uniform(-15, 15, size=3), 0, 255).astype(int)
        canvas.paste(Image.new("RGB", (object_size, object_size), tuple(fill)), box,
                     mask=draw_mask(shape, object_size, rng))
        placed.append((colour, shape, box))
    return canvas, placed


def crop_boxes(image: Image.Image, boxes, size: int | None = None) -> list[Image.Image]:
    """One PIL image per box (left, top, right, bottom), resized to size x size when `size` is given."""
    crops = [image.crop(tuple(box)) for box in boxes]
    return [crop.resize((size, size), Image.Resampling.BICUBIC) for crop in crops] if size else crops


def grid_boxes(image: Image.Image, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """The boxes of a rows x cols grid over the image, row by row (for scenes whose objects are not known)."""
    width, height = image.size
    xs, ys = np.linspace(0, width, cols + 1).round().astype(int), np.linspace(0, height, rows + 1).round().astype(int)
    return [(int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])) for r in range(rows) for c in range(cols)]
