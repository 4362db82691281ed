"""Captions of clip_helpers.scenes: one true sentence per scene at a drawn level of detail, its meaning as a
key (two captions with one key say the same thing, so a batch counts them as one positive), and the
distractor sentences that only word order or binding tells apart from the truth."""
import numpy as np
from clip.clip import _tokenizer

from .scenes import COUNT_WORDS, LEVEL_WEIGHTS, LEVELS, PREFIXES, Thing, column, scene_pairs
from .text import fill

MAX_TOKENS = 16  # the mini-CLIP's context_length, start and end tokens included


def noun(thing: Thing, sized: bool, colour_last: bool = False) -> str:
    """'a red circle', 'a small red circle' or, with colour_last, 'a circle in red' (word order varies)."""
    size = f"{thing.size} " if sized else ""
    words = f"{size}{thing.shape} in {thing.colour}" if colour_last else f"{size}{thing.colour} {thing.shape}"
    return fill("a {}", words)


def listing(nouns: list[str]) -> str:
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]


def relation_pairs(scene) -> list[tuple[Thing, Thing]]:
    """Every (left, right) pair of objects in different columns: "left is left of right" is true."""
    return [(a, b) for a in scene for b in scene if column(a) == 0 and column(b) == 1 and a.cell >= 0]


def relation(left: Thing, right: Thing, sized: bool, say_right: bool) -> str:
    """'a red circle left of a blue square' or, with say_right, the same fact as 'a blue square right of ...'."""
    if say_right:
        return f"{noun(right, sized)} right of {noun(left, sized)}"
    return f"{noun(left, sized)} left of {noun(right, sized)}"


def described(thing: Thing, sized: bool) -> tuple:
    return (thing.size, thing.colour, thing.shape) if sized else (thing.colour, thing.shape)


def levels_for(scene) -> list[str]:
    # Three sized nouns do not fit MAX_TOKENS; a single object has no relation.
    return [level for level in LEVELS if not (level == "relation" and len(scene) == 1)
            and not (level == "sizes" and len(scene) == 3)]


def caption(scene, level: str, rng) -> tuple[str, tuple]:
    """(sentence, key) for `scene` at `level`; random choices: mention order, word order, prefix, relation."""
    if level in ("names", "sizes"):
        sized = level == "sizes"
        order = rng.permutation(len(scene))
        colour_last = len(scene) == 1 and rng.random() < 0.3
        body = listing([noun(scene[i], sized, colour_last) for i in order])
        key = (level, tuple(sorted(described(t, sized) for t in scene)))
    elif level == "count":
        thing = scene[rng.integers(len(scene))]
        body = f"{COUNT_WORDS[len(scene)]} shape{'s' if len(scene) > 1 else ''} including {noun(thing, False)}"
        key = (level, len(scene), described(thing, False))
    elif level == "relation":
        pairs = relation_pairs(scene)
        left, right = pairs[rng.integers(len(pairs))]
        sized = rng.random() < 0.4
        body = relation(left, right, sized, say_right=rng.random() < 0.5)
        key = (level, described(left, sized), described(right, sized))
    else:
        raise ValueError(f"unknown caption level {level!r}; choose from {LEVELS}")
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    # shapes.SHAPES_TEMPLATES' own phrasing, so the notebooks' prompts are words the model has read.
    suffix = " on a plain background" if len(scene) == 1 and level != "count" and rng.random() < 0.15 else ""
    text = f"{prefix}{body}{suffix}."
    return (text if fits(text) else f"{body}."), key


def fits(text: str) -> bool:
    return len(_tokenizer.encode(text)) + 2 <= MAX_TOKENS


def captions_for(scenes, rng) -> tuple[list[str], list[tuple]]:
    """One caption per scene and its key. The level is drawn by LEVEL_WEIGHTS once per twin (scenes 2k and
    2k + 1, as scenes.scene_pairs lays them out), so a scene and its distractor are often described at the
    same level, side by side in one batch: the contrast a bag of words cannot pay for."""
    texts, keys = [], []
    for index, scene in enumerate(scenes):
        if index % 2 == 0:
            level = rng.choice(LEVELS, p=np.array([LEVEL_WEIGHTS[level] for level in LEVELS]))
        levels = levels_for(scene)
        text, key = caption(scene, level if level in levels else levels[rng.integers(len(levels))], rng)
        texts.append(text)
        keys.append(key)
    return texts, keys


def labels_of(keys) -> list[int]:
    """Batch labels: equal for captions of equal meaning (clip_loss's shared positives), else distinct."""
    index = {}
    return [index.setdefault(key, len(index)) for key in keys]


def order_test(scene, rng) -> tuple[str, str]:
    """(true relation, the same words with the two objects exchanged): only word order tells them apart."""
    left, right = relation_pairs(scene)[rng.integers(len(relation_pairs(scene)))]
    return f"{relation(left, right, False, False)}.", f"{relation(right, left, False, False)}."


def binding_test(scene, rng) -> tuple[str, str]:
    """(true relation, the same with the two objects' colours exchanged): only binding tells them apart."""
    left, right = relation_pairs(scene)[rng.integers(len(relation_pairs(scene)))]
    swapped_left = Thing(right.colour, left.shape, left.size, left.cell)
    swapped_right = Thing(left.colour, right.shape, right.size, right.cell)
    return f"{relation(left, right, False, False)}.", f"{relation(swapped_left, swapped_right, False, False)}."


def size_test(scene) -> tuple[str, str]:
    """(true sized names of a one-object scene, the same with the other size word)."""
    thing = scene[0]
    other = Thing(thing.colour, thing.shape, "big" if thing.size == "small" else "small", thing.cell)
    return f"{noun(thing, True)}.", f"{noun(other, True)}."


def caption_sample(n_pairs: int = 300, seed: int = 0, draws: int = 3) -> list[str]:
    """Captions of scenes.scene_pairs(n_pairs, seed) at every level each allows, `draws` times: every word the
    training captions use (their vocabulary is a few dozen tokens, all reached by a sample of this size)."""
    rng = np.random.default_rng([seed, 11])
    return [caption(scene, level, rng)[0] for scene in scene_pairs(n_pairs, seed) for level in levels_for(scene)
            for _ in range(draws)]
