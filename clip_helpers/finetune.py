"""Command line for the kit's fine-tuning loop (clip_helpers.train.fine_tune); notebook 05 and
`make reproduce` call the same `fine_tune_on` function.

    python -m clip_helpers.finetune --model ViT-B/32 --dataset caltech256 --epochs 5 --batch-size 32
    python -m clip_helpers.finetune --model mini --dataset shapes --epochs 3 --batch-size 64   # offline

Prints the history and writes it as history.csv in the run folder (<data-dir>/runs/<run>/), beside the
checkpoint that --resume continues from. A run folder holds one run: a new run into it is refused unless
--overwrite, and --resume is refused when the settings differ from those the run was started with.
"""
import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

from .data import caltech256, cifar10, split
from .device import get_device
from .models import load_clip
from .text import CIFAR10_CLASSES, CIFAR10_TEMPLATES
from .checkpoints import RunFolderError
from .train import MINI_RECIPE, TrainConfig, fine_tune, train_loader_for

DATASETS = ("caltech256", "cifar10", "shapes")


def subset(dataset, size, seed=0):
    """`size` items of `dataset` drawn at random (all of them when size is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return Subset(dataset, np.random.default_rng(seed).permutation(len(dataset))[:size].tolist())


def check_size(name, size):
    if size is not None and not (isinstance(size, int) and size >= 1):
        raise ValueError(f"{name} must be a whole number >= 1 (or None: all of them), not {size!r}")


def datasets_for(name, preprocess, data_dir, train_size, val_size, seed=0):
    """(train, val, class_names, templates, eval_templates) for a dataset name; train and val never share an image."""
    check_size("train_size", train_size)
    check_size("val_size", val_size)
    if name == "cifar10":  # the official split: fine-tune on train, validate on test
        train, val = cifar10(data_dir, train=True, transform=preprocess), cifar10(data_dir, train=False, transform=preprocess)
        class_names, templates, eval_templates = CIFAR10_CLASSES, ["{}"], CIFAR10_TEMPLATES
    elif name == "caltech256":  # no official split: a stratified one (the report validated on training rows)
        dataset = caltech256(data_dir, transform=preprocess)
        train, val = split(dataset, val_fraction=0.2, seed=seed)
        class_names, templates, eval_templates = dataset.classes, ["{}"], CIFAR10_TEMPLATES
    elif name == "shapes":
        from .shapes import SHAPES_TEMPLATES, ShapesDataset
        dataset = ShapesDataset("train", n_per_class=MINI_RECIPE["n_per_class"], seed=seed, transform=preprocess)
        train, val = split(dataset, val_fraction=MINI_RECIPE["val_fraction"], seed=seed)
        class_names, templates, eval_templates = dataset.classes, SHAPES_TEMPLATES, SHAPES_TEMPLATES
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    return subset(train, train_size, seed), subset(val, val_size, seed), class_names, templates, eval_templates


def fine_tune_on(model_name="ViT-B/32", dataset="caltech256", num_epochs=5, batch_size=32, lr=None,
                 train_size=5000, val_size=1000, run=None, resume=False, device=None, data_dir="data",
                 workers=0, progress=True, int8_eval=False, overwrite=False):
    """(model, history): load `model_name`, fine-tune it on `dataset` with the kit's loop.

    The defaults follow the report (ViT-B/32, Caltech-256, ~5000 training and 1000 validation images).
    lr defaults to 1e-5 for pretrained weights and to MINI_RECIPE's for the from-scratch "mini" model.
    int8_eval validates with an int8 copy of a ViT image tower: about 2x faster on a CPU, not exact.
    resume: True continues the run (refused when there is none), "auto" continues it if there is one;
    overwrite=True lets a new run replace the one in the run folder.
    """
    check_size("train_size", train_size)
    check_size("val_size", val_size)
    device = device or get_device()
    model, preprocess = load_clip(model_name, device=device, download_root=str(Path(data_dir) / "weights"))
    train, val, class_names, templates, eval_templates = datasets_for(dataset, preprocess, data_dir, train_size, val_size)
    run = run or f"{dataset}-{model_name.replace('/', '-')}"
    config = TrainConfig(class_names=class_names, templates=templates, eval_templates=eval_templates,
                         num_epochs=num_epochs, lr=default_lr(model_name) if lr is None else lr,
                         run_dir=str(Path(data_dir) / "runs" / run), resume=resume, overwrite=overwrite,
                         run_settings={"model": model_name, "dataset": dataset}, progress=progress,
                         int8_eval=int8_eval)
    pin = str(device).startswith("cuda")
    history = fine_tune(model, train_loader_for(train, batch_size, config.seed, workers),
                        DataLoader(val, batch_size=batch_size, num_workers=workers, pin_memory=pin), config)
    return model, history


def default_lr(model_name):
    return MINI_RECIPE["lr"] if model_name == "mini" else 1e-5


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
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clip_helpers.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", help="a clip model name, 'mini', or a checkpoint file")
    parser.add_argument("--dataset", default="caltech256", choices=DATASETS)
    parser.add_argument("--epochs", type=at_least(1), default=5)
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--lr", type=positive_float, default=None, help="default: 1e-5 (pretrained), 2e-3 (mini)")
    parser.add_argument("--train-size", type=at_least(1), default=5000)
    parser.add_argument("--val-size", type=at_least(1), default=1000)
    parser.add_argument("--run", default=None, help="run name: checkpoints go to <data-dir>/runs/<run>/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last checkpoint, with the settings it was started with")
    parser.add_argument("--overwrite", action="store_true", help="let this new run replace the run in its folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--workers", type=at_least(0), default=0, help="DataLoader worker processes")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--int8-eval", action="store_true",
                        help="validate with an int8 image tower (CPU, ViT models): ~2x faster, not exact")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite ask for opposite things; choose one")
    return args


def resume_command(argv):
    """The command line that continues the run `argv` started."""
    kept = [arg for arg in argv if arg != "--overwrite"]
    return shlex.join([sys.executable, "-m", "clip_helpers.finetune", *kept,
                       *([] if "--resume" in kept else ["--resume"])])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    run = args.run or f"{args.dataset}-{args.model.replace('/', '-')}"
    try:
        _, history = fine_tune_on(args.model, args.dataset, args.epochs, args.batch_size, args.lr, args.train_size,
                                  args.val_size, run, args.resume, args.device, args.data_dir, args.workers,
                                  progress=not args.no_progress, int8_eval=args.int8_eval, overwrite=args.overwrite)
    except KeyboardInterrupt as interrupt:
        # A bare traceback would hide the one thing the user needs: how to continue.
        checkpoint = Path(args.data_dir) / "runs" / run / "checkpoint.pt"
        next_step = (f"Resume with:\n    {resume_command(argv)}" if checkpoint.is_file() else
                     "No checkpoint to resume from; start again with the same command (nothing finished to lose).")
        print(f"\n{interrupt or 'Interrupted.'}\n{next_step}", file=sys.stderr)
        raise SystemExit(130) from None
    except RunFolderError as error:  # a refusal that says what to do: its traceback would only bury that
        raise SystemExit(f"python -m clip_helpers.finetune: error: {error}") from None
    print(history.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"history written to {Path(args.data_dir) / 'runs' / run / 'history.csv'}")  # by fine_tune, atomically
    return history


if __name__ == "__main__":
    main()
