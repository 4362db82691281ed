"""A fine-tuning run's settings, checked before any work starts.

A bad setting found when it is first used costs everything done before it: `reproduce --epochs 0` used to
fail after Fig 12, zero-shot and the probe had run, and a class name too long for the model's context
after the model and the data had loaded. So every value is checked here, by the functions below: when a
TrainConfig, RunFolder or FineTuneData (clip_helpers.training.config) is made, by the command lines (finetune,
reproduce) at parse time, and every caption's token length by fine_tune before its first step.
"""
import argparse
import math

import clip

from ..text import fill


class SettingsError(ValueError):
    """Settings that cannot work; the message says what to change."""


def whole_number_problem(name: str, value, minimum: int, optional: bool = False) -> str | None:
    """What is wrong with `value` as a whole number >= minimum (None allowed when optional), or None."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " (or None: all of them)" if optional else ""
        return f"{name} must be a whole number >= {minimum}{none}, not {value!r}"
    return None


def number_problem(name: str, value, minimum: float = 0, strict: bool = True, optional: str = "") -> str | None:
    """What is wrong with `value` as a finite number > minimum (>= when not strict), or None; `optional`: what None means."""
    if optional and value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if number and (value > minimum if strict else value >= minimum):
        return None
    return f"{name} must be a finite number {'>' if strict else '>='} {minimum}, not {value!r}" + \
        (f" (or None: {optional})" if optional else "")


def config_problems(config) -> list[str]:
    """What is wrong with a TrainConfig's hyperparameters: a zero lr or no epochs would train nothing, silently."""
    problems = [whole_number_problem("num_epochs", config.num_epochs, 1),
                *(number_problem(name, getattr(config, name)) for name in ("lr", "eps", "grad_clip")),
                number_problem("weight_decay", config.weight_decay, strict=False)]
    if not (isinstance(config.warmup_fraction, (int, float)) and 0 <= config.warmup_fraction < 1):
        problems.append(f"warmup_fraction must be in [0, 1), not {config.warmup_fraction!r}")
    if config.amp not in ("auto", None, "bfloat16", "float16"):
        problems.append(f"amp must be 'auto', None, 'bfloat16' or 'float16', not {config.amp!r}")
    problems += [whole_number_problem("accum_steps", config.accum_steps, 1), loss_problem(config.loss)]
    return [problem for problem in problems if problem]


LOSSES = ("clip", "siglip")


def loss_problem(loss) -> str | None:
    if loss in LOSSES:
        return None
    return f"loss must be one of {', '.join(map(repr, LOSSES))} (CLIP's softmax or SigLIP's sigmoid), not {loss!r}"


def accumulation_problem(accum_steps, batch_size, world_size: int = 1) -> str | None:
    """What is wrong with cutting each process's share of a global batch into accum_steps chunks, or None.

    Equal chunks, so each chunk needs the memory of batch_size / (world_size x accum_steps) pairs, which is
    what accum_steps is chosen for; a chunk of one pair is allowed (the loss still sees the whole batch)."""
    if whole_number_problem("accum_steps", accum_steps, 1) or not isinstance(batch_size, int):
        return None  # reported on its own
    local = batch_size // world_size
    if local % accum_steps == 0:
        return None
    per = f"each of the {world_size} processes' {local} pairs" if world_size > 1 else f"the batch of {batch_size} pairs"
    return (f"accum_steps {accum_steps} does not divide {per} into equal chunks: choose accum_steps among the "
            f"divisors of {local} ({', '.join(str(k) for k in range(1, local + 1) if local % k == 0)}), "
            f"or a batch size that is a multiple of {accum_steps * world_size}")


def run_folder_problems(resume, overwrite) -> list[str]:
    """What is wrong with how a run folder is to be used."""
    if resume not in (False, True, "auto"):
        return [f"resume must be False, True or 'auto', not {resume!r}"]
    if resume and overwrite:
        return ["resume and overwrite ask for opposite things; choose one"]
    return []


def data_problems(batch_size=2, train_size=None, val_size=None, workers=0) -> list[str]:
    """What is wrong with the sizes of a fine-tuning run's batches and splits.

    batch_size 1 (and a training set of one image) cannot work: a contrastive batch of one pair has no
    negatives (its loss is 0 whatever the model does), and a model with BatchNorm (the mini-CLIP's ResNet
    tower) cannot even run a training step on it.
    """
    problems = [None if batch_size == 1 else whole_number_problem("batch_size", batch_size, 2),
                whole_number_problem("train_size", train_size, 1, optional=True),
                whole_number_problem("val_size", val_size, 1, optional=True),
                whole_number_problem("workers", workers, 0)]
    if batch_size == 1:
        problems.append("batch_size must be >= 2, not 1: a batch of one image has no negatives for the contrastive "
                        "loss, and BatchNorm cannot train on it")
    if train_size == 1:
        problems.append("train_size 1 makes one batch of one image, which cannot train: use train_size >= 2")
    return [problem for problem in problems if problem]


def fine_tune_problems(*, num_epochs=1, batch_size=2, lr=None, train_size=None, val_size=None,
                       workers=0, resume=False, overwrite=False, accum_steps=1, world_size=1) -> list[str]:
    """Every problem of a command line's fine-tuning options, in words (an empty list: nothing), at parse time."""
    problems = [whole_number_problem("num_epochs", num_epochs, 1),
                number_problem("lr", lr, optional="the model's default"),
                *data_problems(batch_size, train_size, val_size, workers),
                *run_folder_problems(resume, overwrite),
                whole_number_problem("accum_steps", accum_steps, 1),
                accumulation_problem(accum_steps, batch_size, world_size)]
    return [problem for problem in problems if problem]


def too_long_captions(class_names, templates, context_length: int) -> list[str]:
    """The captions (every class name in every template, as fill writes them) longer than context_length tokens.

    Tokenized once with one position more than the model has: a caption that fits leaves that position 0
    (padding); one that does not puts a token there (clip.tokenize cuts it to end on the end token).
    """
    texts = list(dict.fromkeys(fill(template, name) for name in class_names for template in templates))
    tokens = clip.tokenize(texts, context_length=context_length + 1, truncate=True)
    return [text for text, last in zip(texts, tokens[:, -1].tolist()) if last != 0]


def check_captions(class_names, templates, context_length: int, what: str = "the class names") -> None:
    """Raise SettingsError naming the captions longer than the model's context (it would fail at the first step)."""
    long = too_long_captions(class_names, templates, context_length)
    if long:
        shown = "; ".join(repr(text) for text in long[:5]) + (f" (and {len(long) - 5} more)" if len(long) > 5 else "")
        raise SettingsError(
            f"{len(long)} caption(s) made from {what} are longer than the model's context of {context_length} tokens "
            f"(start and end tokens included), so the text tower cannot read them: {shown}. Shorten those class names "
            f"(of a folder dataset: rename their folders), use shorter templates, or a model with a longer context.")


# ---------------------------------------------------------------- argparse types

def at_least(minimum):
    """An argparse type: a whole number >= minimum, so a bad value stops at parse time with argparse's message."""
    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value
    return whole_number


def positive_float(text):
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value
