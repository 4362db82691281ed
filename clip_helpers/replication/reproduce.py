"""`make reproduce`: the report's experiments, end to end, with OpenAI's pretrained ViT-B/32 (needs internet once).

1. Fig 12: cosine similarities of five photos and five captions;
2. zero-shot CIFAR-10 test accuracy with the 18-prompt ensemble (the paper reports 91.3% for ViT-B/32);
3. a linear probe on CIFAR-10 (notebook 09) and text<->image recall@1/5/10 over CIFAR-10's test set (notebook 10);
4. fine-tuning on a Caltech-256 subset with the kit's loop, and Fig 10's two curves;
5. outputs/results.md: the model printout and each number beside the report's and the paper's.

`--rehearsal` runs all of it on clip_helpers.replication.rehearsal's stand-ins (random weights): `make rehearse`.

It checks the weights and the datasets first and stops at once, with what to do, when they cannot be fetched.
A GPU makes steps 2-3 take minutes; on a CPU they take hours (lower --train-size / --epochs).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import plots, probe, retrieval
from . import rehearsal
from ..data import cifar10, split
from ..device import PRECISIONS, get_device, precision_amp, precision_name
from ..downloads import SKIP_CHECKSUMS
from ..features import encode_images
from ..models import load_clip, model_summary
from ..photos import REPORT_FIG12, photo, photo_descriptions
from ..training.interrupts import exit_status, sigterm_raises, stopped
from ..training.config import FineTuneData, RunFolder, TrainConfig
from ..training.recipes import default_lr, fine_tune_on
from ..training.settings import SettingsError, at_least, check_captions, fine_tune_problems
from ..similarity import similarity_matrix
from ..sources import open_source
from ..text import CIFAR10_CLASSES, CIFAR10_TEMPLATES, encode_texts, fill
from ..zeroshot import build_classifier, scores

MODEL = "ViT-B/32"
PAPER_CIFAR10_ZEROSHOT = 91.3  # Radford et al. 2021, ViT-B/32, zero-shot CIFAR-10 top-1 with prompt ensembling
PAPER_CIFAR10_PROBE = 95.1  # Radford et al. 2021, Table 10, ViT-B/32 linear probe on CIFAR-10
# Fig 12: five of scikit-image's bundled photos (no download), captioned with their descriptions in photos.PHOTOS.
FIG12 = REPORT_FIG12


def pretrained_or_exit(device, download_root):
    """The pretrained model, or SystemExit straight away: nothing slow runs before the weights are here."""
    try:
        return load_clip(MODEL, device=device, download_root=download_root)
    except RuntimeError as error:
        raise SystemExit(f"make reproduce needs OpenAI's pretrained {MODEL} weights and could not get them.\n"
                         f"{error}\nNothing else was run.") from None


def datasets_or_exit(data_dir, preprocess):
    """CIFAR-10's test set and Caltech-256, downloaded now so a missing one stops the run before any training."""
    try:
        return cifar10(data_dir, train=False, transform=preprocess), open_source("caltech256", data_dir=data_dir,
                                                                                 transform=preprocess)
    except RuntimeError as error:
        raise SystemExit(f"make reproduce needs CIFAR-10 and Caltech-256.\n{error}") from None


@torch.no_grad()
def fig12_similarity(model, preprocess, out_dir):
    """(similarity [5, 5], number of images whose own caption scores highest), and the figure as a PNG."""
    images = [photo(name) for name in FIG12]
    texts = photo_descriptions(FIG12)
    device = model.positional_embedding.device
    image_features = model.encode_image(torch.stack([preprocess(image) for image in images]).to(device))
    similarity = similarity_matrix(image_features.float(), encode_texts(model, texts).float()).cpu()
    plots.save_figure(plots.similarity_heatmap(similarity, images, texts), "fig12_similarity", out_dir)
    return similarity, int((similarity.argmax(dim=1) == torch.arange(len(texts))).sum())


def cifar10_zero_shot(model, dataset, batch_size, data_dir, precision="auto"):
    """Zero-shot top-1 (%) on CIFAR-10's 10,000 test images, the 18 prompts averaged per class."""
    classifier = build_classifier(model, CIFAR10_CLASSES, CIFAR10_TEMPLATES)
    image_features, labels = encode_images(model, DataLoader(dataset, batch_size=batch_size),
                                           cache_dir=Path(data_dir) / "features", precision=precision)
    return scores(image_features, labels, classifier)["top1"]


def cifar10_probe_and_recall(model, preprocess, test_dataset, batch_size, data_dir, n_images, precision="auto"):
    """(linear-probe top-1 % on the test set, training images it used, recall DataFrame), as notebooks 09 and 10.

    The probe: n_images CIFAR-10 training images (all when n_images >= 50,000; else a stratified sample), 10% of
    them held back to choose C, then refitted on all of them with that C (probe.fit_probe(refit=True), the
    paper's appendix A.3). Recall@k: the 18 templates x 10 classes as captions over the test images, a
    caption's true partners all the images of its class.
    """
    cache_dir = Path(data_dir) / "features"
    test_features, test_labels = encode_images(model, DataLoader(test_dataset, batch_size=batch_size),
                                               cache_dir=cache_dir, precision=precision)
    pool = cifar10(data_dir, train=True, transform=preprocess)
    if n_images < len(pool):
        pool = split(pool, n_images / len(pool))[1]
    parts = [encode_images(model, DataLoader(part, batch_size=batch_size), cache_dir=cache_dir, precision=precision)
             for part in split(pool, 0.1)]
    classifier, _ = probe.fit_probe(*parts[0], *parts[1], refit=True)
    texts = [fill(template, name) for name in CIFAR10_CLASSES for template in CIFAR10_TEMPLATES]
    text_labels = torch.arange(len(CIFAR10_CLASSES)).repeat_interleave(len(CIFAR10_TEMPLATES))
    recall = retrieval.retrieval_scores(test_features, encode_texts(model, texts).float().cpu(), None,
                                        text_to_image=retrieval.same_class(text_labels, test_labels))
    return probe.probe_accuracy(classifier, test_features, test_labels), len(pool), recall


# Published numbers, each with where it is published; everything else in results.md is computed by this run.
REPORT = "CLIP Chronicles report"
PAPER = "Radford et al. 2021"
PUBLISHED = {
    "params": ("over 155 million (" + REPORT + ", section 4.2)", "not stated as one number"),
    "input_resolution": ("printed, value not shown (" + REPORT + ", section 4.3)", "224 (" + PAPER + ", ViT-B/32 hyperparameters, appendix)"),
    "context_length": ("printed, value not shown (" + REPORT + ", section 4.3)", "76 tokens, 'max sequence length was capped at 76' (" + PAPER + ", section 2.4)"),
    "vocab_size": ("printed, value not shown (" + REPORT + ", section 4.3)", "49,152 BPE tokens (" + PAPER + ", section 2.4)"),
    "zero_shot": ("not given (CIFAR-10 is described, no accuracy is stated)", f"{PAPER_CIFAR10_ZEROSHOT}% ({PAPER}, ViT-B/32, prompt ensembling)"),
    "probe": ("not given", f"{PAPER_CIFAR10_PROBE}% ({PAPER}, Table 10, ViT-B/32, all 50,000 training images)"),
    "probe_vs_zero_shot": ("not given", "zero-shot matches a 4-shot linear probe on average over the paper's datasets "
                           f"({PAPER}, Fig 6); not given for CIFAR-10 alone"),
    "recall": ("not given", "not comparable: the paper's retrieval numbers are on Flickr30k and MSCOCO, where each "
               "caption belongs to one image"),
    "fig10": ("Fig 10: curves only, no numbers; its 'accuracy' is in-batch matching (" + REPORT + ", section 4.2)", "not reported"),
    "fig12": ("'the highest similarity between images and respective captions' (" + REPORT + ", Fig 12)", "-"),
}


def markdown_table(header, rows):
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    return lines + [f"| {' | '.join(str(cell) for cell in row)} |" for row in rows]


def results_table(summary, zero_shot, history, similarity, fig12_hits, banner=None, probe_top1=None, recall=None,
                  precision=None):
    """outputs/results.md's text: the kit's numbers beside the report's and the paper's (PUBLISHED).

    probe_top1: (top-1 %, training images) of the CIFAR-10 linear probe; recall: retrieval_scores' DataFrame;
    precision: the image tower's precision that ran ("fp32", "bf16", "fp16"), said beside each number from it.
    """
    ran = f", {precision}" if precision else ""
    kit = "kit (REHEARSAL: meaningless)" if banner else "kit"
    lines = [f"# clip-kit reproduction of the report's results{' - REHEARSAL' if banner else ''}", ""]
    if banner:
        lines += [f"> **{banner}**", ""]
    rows = [(f"Model printout: {key.replace('_', ' ')}", f"{summary[key]:,}", *PUBLISHED[key])
            for key in ("params", "input_resolution", "context_length", "vocab_size")]
    rows += [(f"Zero-shot CIFAR-10 top-1, ViT-B/32{ran}, 18-prompt ensemble, whole test set", f"{zero_shot:.1f}%",
              *PUBLISHED["zero_shot"]),
             ("Fig 12: photos whose own caption is the most similar", f"{fig12_hits} / {len(FIG12)}", *PUBLISHED["fig12"])]
    if probe_top1 is not None:
        rows += [(f"Linear probe CIFAR-10 top-1, ViT-B/32{ran}, {probe_top1[1]:,} training images", f"{probe_top1[0]:.1f}%",
                  *PUBLISHED["probe"]),
                 ("Linear probe minus zero-shot, CIFAR-10 (points)", f"{probe_top1[0] - zero_shot:+.1f}",
                  *PUBLISHED["probe_vs_zero_shot"])]
    if recall is not None:
        rows += [(f"CIFAR-10 test retrieval{ran}, {direction}, R@1 / R@5 / R@10 (caption partners: its class's images)",
                  " / ".join(f"{value:.1f}%" for value in recall.loc[direction]), *PUBLISHED["recall"])
                 for direction in recall.index]
    lines += markdown_table(["result", kit, "report", "paper"], rows)
    lines += ["", f"## Fig 10: fine-tuning on Caltech-256, per epoch ({kit}{ran})", "",
              f"Report: {PUBLISHED['fig10'][0]}. Paper: {PUBLISHED['fig10'][1]}.", ""]
    columns = ["epoch", "train_loss", "val_loss", "val_top1", "val_inbatch_acc"]
    lines += markdown_table(["epoch", "training loss", "validation loss", "validation zero-shot top-1 (%)",
                             "validation in-batch accuracy, the report's metric (%)"],
                            [[int(row.epoch)] + [f"{row[c]:.3f}" if "loss" in c else f"{row[c]:.1f}" for c in columns[1:]]
                             for _, row in history.iterrows()])
    lines += ["", f"## Fig 12: cosine similarity of five photos (rows) and five captions (columns) ({kit})", "",
              f"Report: {PUBLISHED['fig12'][0]}; no values are printed.", ""]
    lines += markdown_table(["photo"] + photo_descriptions(FIG12),
                            [[name] + [f"{value:.3f}" for value in row] for name, row in zip(FIG12, similarity.tolist())])
    lines += ["", "Figures: figures/fig10_training.png, figures/fig12_similarity.png (beside this file).",
              f"Per-epoch history: {len(history)} rows in the fine-tuning run's history.csv."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clip_helpers.replication.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=at_least(1), default=5)
    parser.add_argument("--batch-size", type=at_least(2), default=32)
    parser.add_argument("--train-size", type=at_least(2), default=5000,
                        help="Caltech-256 training images (report: ~5000)")
    parser.add_argument("--val-size", type=at_least(1), default=1000,
                        help="Caltech-256 validation images (report: 1000)")
    # 20: two of each CIFAR-10 class, so that the tenth held out to choose C holds every class
    parser.add_argument("--probe-train-size", type=at_least(20), default=50000,
                        help="CIFAR-10 training images for the linear probe, at least 20 (paper: all 50,000)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", default=None,
                        help=f"downloads and caches (default data; with --rehearsal, {rehearsal.DEFAULT_ROOT})")
    parser.add_argument("--out-dir", default="outputs")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="autocast of the image tower and of fine-tuning: auto (bf16 where the hardware has it, "
                             "else fp32), or fp32 (exact), bf16, fp16; results.md says which ran")
    parser.add_argument("--rehearsal", action="store_true",
                        help="run on the stand-ins in --data-dir (clip_helpers.replication.rehearsal), checksums skipped; "
                             "results.md and the figures say it is a rehearsal")
    args = parser.parse_args(argv)
    problems = fine_tune_problems(num_epochs=args.epochs, batch_size=args.batch_size, train_size=args.train_size,
                                  val_size=args.val_size)
    if problems:  # fine_tune_on's own checks, made now: it runs last, after the slow steps
        parser.error("; ".join(problems))
    args.data_dir = args.data_dir or (rehearsal.DEFAULT_ROOT if args.rehearsal else "data")  # stand-ins never in data/
    return args


def check_all_captions(model, caltech):
    """Every caption of the run (CIFAR-10's and Caltech-256's) fits the model's context, checked before any work."""
    check_captions(CIFAR10_CLASSES, CIFAR10_TEMPLATES, model.context_length, "CIFAR-10's class names")
    check_captions(caltech.class_names, [*caltech.templates, *caltech.train_templates], model.context_length,
                   "Caltech-256's class names")


def main(argv=None):
    args = parse_args(argv)
    banner = None
    if args.rehearsal:
        try:
            rehearsal.build(args.data_dir)
        except rehearsal.NotARehearsalFolder as error:
            raise SystemExit(f"--data-dir: {error}") from None
        os.environ[SKIP_CHECKSUMS] = "1"
        banner = rehearsal.BANNER
        print(banner)
    device = args.device or get_device()
    model, preprocess = pretrained_or_exit(device, str(Path(args.data_dir) / "weights"))
    summary = model_summary(model)
    print("model:", ", ".join(f"{key} {value:,}" for key, value in summary.items()))
    cifar_test, caltech = datasets_or_exit(args.data_dir, preprocess)
    check_all_captions(model, caltech)
    figures = Path(args.out_dir) / "figures"
    similarity, fig12_hits = fig12_similarity(model, preprocess, figures)
    print(f"Fig 12: {fig12_hits}/{len(FIG12)} photos matched to their own caption")
    start = time.perf_counter()
    ran = precision_name(device, args.precision)
    zero_shot = cifar10_zero_shot(model, cifar_test, 4 * args.batch_size, args.data_dir, args.precision)
    print(f"zero-shot CIFAR-10 top-1 ({ran}): {zero_shot:.2f}% (paper: {PAPER_CIFAR10_ZEROSHOT}%); "
          f"{len(cifar_test)} test images in {time.perf_counter() - start:.0f} s (features cached after the first run)")
    start = time.perf_counter()
    probe_top1, probe_images, recall = cifar10_probe_and_recall(model, preprocess, cifar_test, 4 * args.batch_size,
                                                                args.data_dir, args.probe_train_size, args.precision)
    print(f"linear probe CIFAR-10 top-1: {probe_top1:.2f}% from {probe_images} training images "
          f"(paper: {PAPER_CIFAR10_PROBE}% from 50,000) in {time.perf_counter() - start:.0f} s\n{recall.round(1)}")
    del model
    # resume="auto": a second `make reproduce` picks the fine-tuning run up where it stopped (or skips it).
    data = FineTuneData(model_name=MODEL, source="caltech256", batch_size=args.batch_size, train_size=args.train_size,
                        val_size=args.val_size, data_dir=args.data_dir, device=device)
    _, history = fine_tune_on(data, TrainConfig(num_epochs=args.epochs, lr=default_lr(MODEL),
                                                    amp=precision_amp(args.precision)),
                              RunFolder(Path(args.data_dir) / "runs" / "reproduce-caltech256", resume="auto"))
    plots.save_figure(plots.training_curves(history), "fig10_training", figures)
    if banner:
        rehearsal.stamp_figures(figures)
    results = Path(args.out_dir) / "results.md"
    partial = results.with_name(results.name + ".partial")
    partial.write_text(results_table(summary, zero_shot, history, similarity, fig12_hits, banner,
                                     (probe_top1, probe_images), recall, ran))
    os.replace(partial, results)
    print(results.read_text())


def run_from_command_line(argv=None):
    """main, with Ctrl-C and SIGTERM (`timeout`, a scheduler) answered by what to do next instead of a traceback."""
    try:
        with sigterm_raises():
            return main(argv)
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupt or stopped(interrupt)}\nRun the same command again to continue: the fine-tuning resumes "
              f"from its last checkpoint (resume='auto') and the image features already computed are cached.",
              file=sys.stderr)
        raise SystemExit(exit_status(interrupt)) from None
    except SettingsError as error:
        raise SystemExit(f"python -m clip_helpers.replication.reproduce: error: {error}") from None


if __name__ == "__main__":
    sys.exit(run_from_command_line())
