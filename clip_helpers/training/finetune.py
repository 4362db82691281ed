"""Command line for the kit's fine-tuning loop: clip_helpers.training.recipes.fine_tune_on, which `make reproduce` calls too.

    python -m clip_helpers.training.finetune --model ViT-B/32 --dataset caltech256 --epochs 5 --batch-size 32
    python -m clip_helpers.training.finetune --model mini --dataset shapes --epochs 3 --batch-size 64   # offline
    python -m clip_helpers.training.finetune --model ViT-B/32 --dataset my_photos/   # a folder, one sub-folder per class
    python -m clip_helpers.training.finetune --batch-size 256 --accum-steps 8 --loss siglip ...   # 8 chunks of 32
    torchrun --standalone --nproc_per_node 4 -m clip_helpers.training.finetune --batch-size 256 ...   # 4 GPUs, one run

Prints the history and writes it as history.csv in the run folder (<data-dir>/runs/<run>/), beside the
checkpoint that --resume continues from. A run folder holds one run: a new run into it is refused unless
--overwrite, and --resume is refused when the settings differ from those the run was started with.
Under torchrun, --batch-size is the global batch (split over the processes) and rank 0 prints and writes.
"""
import argparse
import os
import shlex
import sys
from pathlib import Path

from . import processes
from .checkpoints import RunFolderError
from ..device import PRECISIONS, get_device, precision_amp, precision_name
from .interrupts import exit_status, sigterm_raises, stopped
from .config import FineTuneData, RunFolder, TrainConfig
from .recipes import default_lr, default_run, fine_tune_on
from .settings import LOSSES, SettingsError, at_least, fine_tune_problems, positive_float
from ..sources import KIT_PREFIX, SOURCES, registry_name


def source_or_folder(text: str) -> str:
    """An argparse type: a registry source name, or an existing folder with one sub-folder per class."""
    try:
        if registry_name(text) is not None or Path(text).is_dir():
            return text
    except ValueError as error:  # a name that is both: argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(error)) from None
    raise argparse.ArgumentTypeError(f"{text!r} is neither one of {SOURCES} nor a folder (one sub-folder per class)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clip_helpers.training.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B/32", help="a clip model name, 'mini', or a checkpoint file")
    parser.add_argument("--dataset", default="caltech256", type=source_or_folder,
                        help=f"one of {', '.join(SOURCES)} ({KIT_PREFIX}NAME if a folder here has that name), or "
                             f"a folder with one sub-folder of images per class")
    parser.add_argument("--epochs", type=at_least(1), default=5)
    parser.add_argument("--batch-size", type=at_least(2), default=32,
                        help="the global batch, at least 2 (one pair has no negatives); split over torchrun's processes")
    parser.add_argument("--lr", type=positive_float, default=None, help="default: 1e-5 (pretrained), 2e-3 (mini)")
    parser.add_argument("--train-size", type=at_least(2), default=5000)
    parser.add_argument("--val-size", type=at_least(1), default=1000)
    # --run-name too: torchrun's own parser reads a bare --run as an abbreviation of its --run-path and stops
    parser.add_argument("--run", "--run-name", dest="run", default=None,
                        help="run name: checkpoints go to <data-dir>/runs/<run>/ (under torchrun: --run-name)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from its last checkpoint, with the settings it was started with")
    parser.add_argument("--overwrite", action="store_true", help="let this new run replace the run in its folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--workers", type=at_least(0), default=0, help="DataLoader worker processes")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="autocast of training and validation: auto (bf16 where the hardware has it, else fp32), "
                             "or fp32 (exact), bf16, fp16; the run prints which ran")
    parser.add_argument("--int8-eval", action="store_true",
                        help="validate with an int8 image tower (CPU, ViT models): faster, not exact")
    parser.add_argument("--accum-steps", type=at_least(1), default=1, metavar="K",
                        help="compute each step in K chunks (GradCache): the gradient of the whole --batch-size "
                             "(every pair's negatives kept) with the activations of 1/K of it; every chunk is encoded twice, so a "
                             "step takes longer (the README has measurements); K must divide each process's share of "
                             "the batch (default 1: one pass)")
    parser.add_argument("--loss", choices=LOSSES, default="clip",
                        help="clip: CLIP's softmax loss; siglip: SigLIP's sigmoid loss (each pair a yes/no decision, "
                             "a learnable bias from -10, temperature from 10)")
    args = parser.parse_args(argv)
    problems = fine_tune_problems(num_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  train_size=args.train_size, val_size=args.val_size, workers=args.workers,
                                  resume=args.resume, overwrite=args.overwrite, accum_steps=args.accum_steps,
                                  world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if problems:  # the checks fine_tune_on makes, here at parse time, in the options' own names
        parser.error("; ".join(problems).replace("resume and overwrite", "--resume and --overwrite")
                     .replace("accum_steps", "--accum-steps"))
    return args


def resume_command(argv):
    """The command line that continues the run `argv` started."""
    kept = [arg for arg in argv if arg != "--overwrite"]
    return shlex.join([sys.executable, "-m", "clip_helpers.training.finetune", *kept,
                       *([] if "--resume" in kept else ["--resume"])])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    run = args.run or default_run(args.model, args.dataset)
    try:
        with sigterm_raises():  # `timeout` and schedulers stop a run with SIGTERM: say what Ctrl-C would
            return fine_tune_and_print(args, argv, run)
    finally:
        processes.leave()  # leave torchrun's process group, if fine_tune_on joined one


def settings_of(args, run: str) -> tuple[FineTuneData, TrainConfig, RunFolder]:
    """The command line's options as fine_tune_on's three objects (already checked by parse_args)."""
    data = FineTuneData(model_name=args.model, source=args.dataset, batch_size=args.batch_size,
                        train_size=args.train_size, val_size=args.val_size, workers=args.workers,
                        data_dir=args.data_dir, device=args.device)
    config = TrainConfig(num_epochs=args.epochs, lr=default_lr(args.model) if args.lr is None else args.lr,
                         int8_eval=args.int8_eval, amp=precision_amp(args.precision), progress=not args.no_progress,
                         accum_steps=args.accum_steps, loss=args.loss)
    return data, config, RunFolder(Path(args.data_dir) / "runs" / run, resume=args.resume, overwrite=args.overwrite)


def fine_tune_and_print(args, argv, run):
    try:
        _, history = fine_tune_on(*settings_of(args, run))
    except KeyboardInterrupt as interrupt:
        # A bare traceback would hide the one thing the user needs: how to continue.
        checkpoint = Path(args.data_dir) / "runs" / run / "checkpoint.pt"
        next_step = (f"Resume with:\n    {resume_command(argv)}" if checkpoint.is_file() else
                     "No checkpoint to resume from; start again with the same command (nothing finished to lose).")
        if processes.several_processes() and checkpoint.is_file():
            next_step = "Resume with the same torchrun command, adding --resume."
        if processes.is_main():
            print(f"\n{interrupt or stopped(interrupt)}\n{next_step}", file=sys.stderr)
        raise SystemExit(exit_status(interrupt)) from None
    except (RunFolderError, SettingsError) as error:  # a refusal that says what to do: a traceback would bury that
        # every process raises it; one message is enough
        raise SystemExit(f"python -m clip_helpers.training.finetune: error: {error}" if processes.is_main() else 1) from None
    if processes.is_main():
        ran = precision_name(args.device or get_device(), args.precision)
        print(f"precision: {ran} (--precision {args.precision})"
              + (", validation images through an int8 image tower" if args.int8_eval else ""))
        print(history.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        print(f"history written to {Path(args.data_dir) / 'runs' / run / 'history.csv'}")  # by fine_tune, atomically
    return history


if __name__ == "__main__":
    main()
