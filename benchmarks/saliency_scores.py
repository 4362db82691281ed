"""Saliency scores of the ViT mini-CLIP on procedural scenes, before and after a short training on shapes.

    python benchmarks/saliency_scores.py                 # 7 epochs, 16 images per class, 20 two-object scenes
    python benchmarks/saliency_scores.py --epochs 1 --scenes 4

Trains build_random_clip("mini-vit") with clip_loss on ShapesDataset("all") (captions "a {colour} {shape}."),
then scores clip_helpers.saliency on shapes.draw_scene scenes (64 px, objects of 32 px, shrunk to the model's
32 px: each object is 2 x 2 of the 4 x 4 patches) against the random map's expectations. Prints the zero-shot
accuracy on fresh single-shape images, so a score is read beside how much the model learned.
"""
import argparse
import warnings

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from clip_helpers.losses import clip_loss  # noqa: E402
from clip_helpers.models import build_random_clip, preprocess_for  # noqa: E402
from clip_helpers.saliency import score_scenes  # noqa: E402
from clip_helpers.shapes import ShapesDataset, draw_scene  # noqa: E402
from clip_helpers.text import encode_texts, fill  # noqa: E402


def train(model, dataset, num_epochs, lr, batch_size=64):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for epoch in range(num_epochs):
        losses = []
        for images, labels in loader:
            texts = [fill("a {}.", dataset.classes[label]) for label in labels]
            loss = clip_loss(model.encode_image(images), encode_texts(model, texts), model.logit_scale.exp(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: train loss {sum(losses) / len(losses):.4f}", flush=True)
    return model.eval()


def zero_shot_accuracy(model, preprocess):
    dataset = ShapesDataset("all", n_per_class=3, seed=5, transform=preprocess)
    images, labels = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    with torch.no_grad():
        classifier = F.normalize(encode_texts(model, [fill("a {}.", name) for name in dataset.classes]), dim=-1)
        return ((F.normalize(model.encode_image(images), dim=-1) @ classifier.T).argmax(1) == labels).float().mean().item()


def scores_or_reason(model, scenes, preprocess):
    try:
        return score_scenes(model, scenes, preprocess)
    except ValueError as error:
        return f"not scored: {error}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, preprocess = build_random_clip("mini-vit").eval(), preprocess_for(32)
    scenes = [draw_scene(2, size=64, object_size=32, seed=100 + k) for k in range(args.scenes)]
    print("at initialisation:", scores_or_reason(model, scenes, preprocess))
    train(model, ShapesDataset("all", n_per_class=args.n_per_class, transform=preprocess), args.epochs, args.lr)
    print(f"zero-shot accuracy on 108 single-shape images (36 classes): {zero_shot_accuracy(model, preprocess):.3f}")
    print("after training:", scores_or_reason(model, scenes, preprocess))


if __name__ == "__main__":
    main()
