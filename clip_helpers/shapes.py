"""Coloured shapes with captions: a dataset that needs no download, for teaching and for training mini-CLIP.

Every image shows one main shape in one colour, e.g. "red circle", on a pale noisy background. Six (colour,
shape) pairs are held out of the training split, so a model trained on "train" can be asked about pairs it has
never seen (compositional zero-shot): it saw red things and circles, but never a red circle.
So that a trained model is not perfect (each lesson's effect needs mistakes and doubt to show), the main shape is
small or big (its size word is true of the drawing), its colour is jittered so that neighbouring colours
(red/orange/yellow, blue/purple) sometimes look alike, some backgrounds carry clutter lines, and some images hold
a smaller distractor shape of another seen pair (Item says what was drawn; shape_captions describes it).
"""
import colorsys
import math
from dataclasses import dataclass

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
# Fine-tuning captions filled with a class name alone (sources' train_templates): no size word or "plain background",
# which the class name cannot make true of a given image. SHAPES_TEMPLATES stay the zero-shot prompts (as the paper's
# ImageNet ensemble, "a photo of a small {}." among them: a prompt is averaged, not claimed of one image).
SHAPES_CAPTION_TEMPLATES = [t for t in SHAPES_TEMPLATES if not {"small", "big", "plain"} & set(t.split())]
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
# Radius over the image side. Every small main shape is smaller than every big one, and a distractor is smaller
# still (its main shape is then always big), so "small", "big" and "the main shape" are true of the drawing.
RADII = {"small": (0.17, 0.23), "big": (0.29, 0.38)}
DISTRACTOR_RADIUS = (0.11, 0.14)
DISTRACTOR_P = 0.4  # share of images with a distractor
CLUTTER_LINES = (0, 0, 1, 2, 3)  # lines drawn across the background: none in two images of five ("plain")
HUE_JITTER = 10.0  # degrees (std, cut at 2.5 std): red/orange sit 30 degrees apart, orange/yellow 23


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


@dataclass(frozen=True)
class Item:
    """What one image shows: its main shape's colour, shape and size word, and the distractor's (colour, shape)
    (always small) or None; plain: no clutter lines."""
    colour: str
    shape: str
    size: str
    distractor: tuple[str, str] | None
    plain: bool


def jittered(colour: str, rng) -> tuple[int, int, int]:
    """RGB[colour] with its hue moved by a cut normal of HUE_JITTER degrees, saturation and value varied."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(np.array(RGB[colour]) / 255))
    hue = (hue + np.clip(rng.normal(0, HUE_JITTER), -2.5 * HUE_JITTER, 2.5 * HUE_JITTER) / 360) % 1
    rgb = colorsys.hsv_to_rgb(hue, saturation * rng.uniform(0.8, 1.0), min(1.0, value * rng.uniform(0.85, 1.05)))
    return tuple(int(round(255 * v)) for v in rgb)


def random_item(colour: str, shape: str, rng) -> Item:
    """The main shape's size, a distractor of a seen pair sharing neither its colour nor its shape, or none."""
    distractor = None
    if rng.random() < DISTRACTOR_P:
        others = [(c, s) for c in COLOURS for s in SHAPES if c != colour and s != shape and (c, s) not in HELD_OUT]
        distractor = others[rng.integers(len(others))]
    size = "big" if distractor else str(rng.choice(["small", "big"]))
    return Item(colour, shape, size, distractor, plain=bool(rng.choice(CLUTTER_LINES) == 0))


def polygon(shape: str, centre, radius: float, rng) -> list[tuple[float, float]]:
    angle = math.radians(rng.uniform(-25, 25))
    cos, sin = math.cos(angle), math.sin(angle)
    return [(centre[0] + radius * (x * cos - y * sin), centre[1] + radius * (x * sin + y * cos)) for x, y in outline(shape)]


def placements(item: Item, big: int, rng) -> list[tuple[str, str, tuple[float, float], float]]:
    """[(colour, shape, centre, radius)] on the big canvas: the main shape, then the distractor in a corner
    far enough away that the two never overlap."""
    radius = rng.uniform(*RADII[item.size]) * big
    low, high = radius + 0.04 * big, big - radius - 0.04 * big
    if item.distractor is None:
        return [(item.colour, item.shape, tuple(rng.uniform(low, high, size=2)), radius)]
    small = rng.uniform(*DISTRACTOR_RADIUS) * big
    corner = rng.integers(2, size=2)  # 0: left/top, 1: right/bottom
    spot = np.where(corner == 0, small + 0.03 * big, big - small - 0.03 * big) + rng.uniform(-0.02, 0.02, 2) * big
    for _ in range(20):
        centre = rng.uniform(low, high, size=2)
        if np.hypot(*(centre - spot)) > 1.05 * (radius + small) + 0.03 * big:
            break
    else:  # the far side of the canvas from the distractor's corner
        centre = np.where(corner == 0, high, low)
    return [(item.colour, item.shape, tuple(centre), radius), (*item.distractor, tuple(spot), small)]


def draw_item(item: Item, size: int, rng) -> Image.Image:
    """The item on a pale, tinted, noisy size x size background (clutter lines unless plain); one resize."""
    big = size * SUPERSAMPLE
    tint = rng.uniform(205, 245) + rng.uniform(-10, 10, size=3)
    canvas = Image.new("RGB", (big, big), tuple(int(v) for v in np.clip(tint, 0, 255)))
    pen, mask = ImageDraw.Draw(canvas), Image.new("L", (big, big), 0)
    for _ in range(0 if item.plain else int(rng.integers(1, 4))):
        grey = tint.mean() - rng.uniform(30, 70) + rng.uniform(-8, 8, size=3)
        pen.line([tuple(rng.uniform(0, big, size=2)), tuple(rng.uniform(0, big, size=2))],
                 fill=tuple(int(v) for v in np.clip(grey, 0, 255)), width=int(rng.integers(1, 3)) * SUPERSAMPLE)
    for colour, shape, centre, radius in placements(item, big, rng):
        points = polygon(shape, centre, radius, rng)
        pen.polygon(points, fill=jittered(colour, rng))
        ImageDraw.Draw(mask).polygon(points, fill=255)
    pixels = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float64)
    background = 1 - np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float64)[..., None] / 255
    return Image.fromarray(np.clip(pixels + rng.normal(0, 6, size=(size, size, 3)) * background, 0, 255).astype(np.uint8))


def draw_shape(colour, shape, size=32, rng=None):
    """One PIL RGB image of a `colour` `shape` (size, distractor and clutter drawn from `rng`, see Item)."""
    rng = np.random.default_rng() if rng is None else rng
    return draw_item(random_item(colour, shape, rng), size, rng)


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

    def item_rng(self, index):
        return np.random.default_rng([self.seed, self.targets[index], index % self.n_per_class])

    def item(self, index) -> Item:
        """What image `index` shows (its size word, distractor, clutter): the facts its captions describe."""
        return random_item(*self.classes[self.targets[index]].split(" "), self.item_rng(index))

    def __getitem__(self, index):
        rng = self.item_rng(index)
        image = draw_item(random_item(*self.classes[self.targets[index]].split(" "), rng), self.image_size, rng)
        return (self.transform(image) if self.transform else image), self.targets[index]


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
