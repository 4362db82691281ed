"""`make reproduce`: the report's experiments, end to end, with OpenAI's pretrained ViT-B/32 (needs internet once).

1. Fig 12: cosine similarities of five photos and five captions;
2. zero-shot CIFAR-10 test accuracy with the 18-prompt ensemble (the paper reports 91.3% for ViT-B/32);
3. fine-tuning on a Caltech-256 subset with the kit's loop, and Fig 10's two curves;
4. outputs/results.md: each number beside the report's and the paper's.

It checks the weights and the datasets first and stops at once, with what to do, when they cannot be fetched.
A GPU makes steps 2-3 take minutes; on a CPU they take hours (lower --train-size / --epochs).
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import plots
from .data import caltech256, cifar10
from .device import get_device
from .features import encode_images
from .finetune import fine_tune_on
from .models import load_clip
from .similarity import similarity_matrix
from .text import CIFAR10_CLASSES, CIFAR10_TEMPLATES
from .zeroshot import build_classifier, scores

MODEL = "ViT-B/32"
PAPER_CIFAR10_ZEROSHOT = 91.3  # Radford et al. 2021, ViT-B/32, zero-shot CIFAR-10 top-1 with prompt ensembling
# Fig 12: scikit-image's bundled photos (no download), with captions in the style of openai/CLIP's demo notebook.
FIG12 = [("astronaut", "a portrait of an astronaut with the American flag"),
         ("chelsea", "a facial photo of a tabby cat"),
         ("coffee", "a cup of coffee on a saucer"),
         ("rocket", "a rocket standing on a launchpad"),
         ("horse", "a black-and-white silhouette of a horse")]


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
        return cifar10(data_dir, train=False, transform=preprocess), caltech256(data_dir, transform=preprocess)
    except RuntimeError as error:
        raise SystemExit(f"make reproduce needs CIFAR-10 and Caltech-256.\n{error}") from None


@torch.no_grad()
def fig12_similarity(model, preprocess, out_dir):
    """(similarity [5, 5], number of images whose own caption scores highest), and the figure as a PNG."""
    import skimage.data
    from PIL import Image
    from .text import encode_texts
    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name, _ in FIG12]
    texts = [caption for _, caption in FIG12]
    device = model.positional_embedding.device
    image_features = model.encode_image(torch.stack([preprocess(image) for image in images]).to(device))
    similarity = similarity_matrix(image_features.float(), encode_texts(model, texts).float()).cpu()
    plots.save_figure(plots.similarity_heatmap(similarity, images, texts), "fig12_similarity", out_dir)
    return similarity, int((similarity.argmax(dim=1) == torch.arange(len(texts))).sum())


def cifar10_zero_shot(model, dataset, batch_size, data_dir):
    """Zero-shot top-1 (%) on CIFAR-10's 10,000 test images, the 18 prompts averaged per class."""
    classifier = build_classifier(model, CIFAR10_CLASSES, CIFAR10_TEMPLATES)
    image_features, labels = encode_images(model, DataLoader(dataset, batch_size=batch_size),
                                           cache_dir=Path(data_dir) / "features")
    return scores(image_features, labels, classifier)["top1"]


def results_table(zero_shot, history, fig12_hits):
    """outputs/results.md's text: the kit's numbers beside the report's and the paper's."""
    last = history.iloc[-1]
    rows = [
        ("Zero-shot CIFAR-10 top-1, ViT-B/32, 18-prompt ensemble", f"{zero_shot:.1f}%",
         "not given (CIFAR-10 is described, no accuracy is stated)", f"{PAPER_CIFAR10_ZEROSHOT}%"),
        (f"Caltech-256 fine-tune, val zero-shot top-1 after {int(last['epoch'])} epochs", f"{last['val_top1']:.1f}%",
         "Fig 10 curve only; its 'accuracy' is in-batch matching on training rows", "not reported"),
        ("Same run, the report's in-batch metric (evaluateModel)", f"{last['val_inbatch_acc']:.1f}%",
         "Fig 10 (no number in the text)", "-"),
        ("Same run, final training / validation loss", f"{last['train_loss']:.3f} / {last['val_loss']:.3f}",
         "Fig 10 (no number in the text)", "-"),
        ("Fig 12: photos whose own caption is the most similar", f"{fig12_hits} / {len(FIG12)}",
         "'highest similarity between images and respective captions'", "-"),
    ]
    lines = ["# clip-kit reproduction of the report's results", "",
             "| result | kit | report | paper |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", "Figures: outputs/figures/fig10_training.png, outputs/figures/fig12_similarity.png.",
              f"Per-epoch history: {len(history)} rows in the fine-tuning run's history.csv."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m clip_helpers.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=5000, help="Caltech-256 training images (report: ~5000)")
    parser.add_argument("--val-size", type=int, default=1000, help="Caltech-256 validation images (report: 1000)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out-dir", default="outputs")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = args.device or get_device()
    model, preprocess = pretrained_or_exit(device, str(Path(args.data_dir) / "weights"))
    cifar_test, _ = datasets_or_exit(args.data_dir, preprocess)
    figures = Path(args.out_dir) / "figures"
    _, fig12_hits = fig12_similarity(model, preprocess, figures)
    print(f"Fig 12: {fig12_hits}/{len(FIG12)} photos matched to their own caption")
    zero_shot = cifar10_zero_shot(model, cifar_test, 4 * args.batch_size, args.data_dir)
    print(f"zero-shot CIFAR-10 top-1: {zero_shot:.2f}% (paper: {PAPER_CIFAR10_ZEROSHOT}%)")
    del model
    # resume="auto": a second `make reproduce` picks the fine-tuning run up where it stopped (or skips it).
    _, history = fine_tune_on(MODEL, "caltech256", args.epochs, args.batch_size, None, args.train_size,
                              args.val_size, "reproduce-caltech256", "auto", device, args.data_dir)
    plots.save_figure(plots.training_curves(history), "fig10_training", figures)
    results = Path(args.out_dir) / "results.md"
    results.write_text(results_table(zero_shot, history, fig12_hits))
    print(results.read_text())


if __name__ == "__main__":
    sys.exit(main())
