"""Captions of clip_helpers.shapes images that are true of what was drawn (shapes.Item): the main shape's name,
with its size word or not, in either word order, with the distractor named or not, and "on a plain background"
only where there is no clutter; and each caption's meaning as a key (equal keys share a positive in clip_loss).

The mini-CLIP reads these (recipes.fit_on_shapes): a caption's size word, its second object and its "plain
background" are each true or false of an image, so the text tower has to read more than a colour and a shape.
"""
from .scene_captions import fits
from .shapes import Item
from .text import fill

PREFIXES = ["", "a photo of ", "a drawing of ", "a picture of "]
LEVELS = ("name", "size", "both")  # "both": both objects named, where there is a distractor
LEVEL_WEIGHTS = {"name": 0.4, "size": 0.3, "both": 0.3}


def noun(colour: str, shape: str, size: str | None = None, colour_last: bool = False) -> str:
    """'a red circle', 'a big red circle', 'a circle in red', 'a small circle in red'."""
    words = f"{shape} in {colour}" if colour_last else f"{colour} {shape}"
    return fill("a {}", f"{size} {words}" if size else words)


def levels_for(item: Item) -> list[str]:
    return [level for level in LEVELS if level != "both" or item.distractor]


def caption(item: Item, level: str, rng) -> tuple[str, tuple]:
    """(sentence, key) for `item` at `level`; random choices: prefix, word order, which object comes first."""
    colour_last = rng.random() < 0.25
    if level == "name":
        body, key = noun(item.colour, item.shape, None, colour_last), (level, item.colour, item.shape)
    elif level == "size":
        body, key = noun(item.colour, item.shape, item.size, colour_last), (level, item.size, item.colour, item.shape)
    elif level == "both" and item.distractor:
        main, other = noun(item.colour, item.shape, "big"), noun(*item.distractor, "small")
        body = f"{main} and {other}" if rng.random() < 0.6 else f"{other} and {main}"
        key = (level, item.colour, item.shape, *item.distractor)
    else:
        raise ValueError(f"no caption level {level!r} for {item}; choose from {levels_for(item)}")
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    suffix = " on a plain background" if item.plain and not item.distractor and rng.random() < 0.3 else ""
    text = f"{prefix}{body}{suffix}."
    return (text if fits(text) else f"{body}{suffix}."), key


def captions_for(items, rng) -> tuple[list[str], list[tuple]]:
    """One caption per item, its level drawn by LEVEL_WEIGHTS among those the item allows, and its key."""
    texts, keys = [], []
    for item in items:
        levels = levels_for(item)
        weights = [LEVEL_WEIGHTS[level] for level in levels]
        level = levels[rng.choice(len(levels), p=[w / sum(weights) for w in weights])]
        text, key = caption(item, level, rng)
        texts.append(text)
        keys.append(key)
    return texts, keys
