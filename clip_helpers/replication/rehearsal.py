"""The online path rehearsed without internet: stand-ins for the downloads, in the downloads' own formats.

`build(root)` writes, with no network, into a folder of its own (`own_folder`: never data/, never a folder it did
not make, which may hold real downloads or runs):
- weights/ViT-B-32.pt: a randomly initialised ViT-B/32 (151,277,313 parameters) as a TorchScript archive
  with fp16 weights, the way OpenAI ships it, so clip.load reads it exactly as it reads the real file;
- cifar-10-batches-py/: pickled data_batch_1..5, test_batch and batches.meta, keys and dtypes as torchvision reads;
- caltech256/256_ObjectCategories/NNN.name/NNN_MMMM.jpg: all 257 real folder names, a few grayscale
  images and one truncated JPEG among procedural pictures.

Only the downloads' checksums differ from the real files, so only the checksum checks are bypassed, and only
while the environment variable downloads.SKIP_CHECKSUMS names is "1" (read in downloads.checksums_skipped(), nowhere
else).
Everything after the checksum is the code users run. Numbers computed on these stand-ins mean nothing.
"""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from clip.model import convert_weights
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..downloads import weights_file
from ..files import write_text_atomically
from ..models import build_random_clip
from ..shapes import COLOURS, SHAPES, draw_shape

BANNER = ("REHEARSAL on stand-ins: a randomly initialised ViT-B/32 and procedural images in the downloads' formats. "
          "Its numbers mean nothing; it only shows that every step of the online path runs.")

CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The 257 folders of 256_ObjectCategories, numbered in this order from 001 (written from the dataset's listing;
# the same list appears in public code that enumerates the folders).
CALTECH256_FOLDERS = """ak47 american-flag backpack baseball-bat baseball-glove basketball-hoop bat bathtub bear
beer-mug billiards binoculars birdbath blimp bonsai-101 boom-box bowling-ball bowling-pin boxing-glove brain-101
breadmaker buddha-101 bulldozer butterfly cactus cake calculator camel cannon canoe car-tire cartman cd centipede
cereal-box chandelier-101 chess-board chimp chopsticks cockroach coffee-mug coffin coin comet computer-keyboard
computer-monitor computer-mouse conch cormorant covered-wagon cowboy-hat crab-101 desk-globe diamond-ring dice dog
dolphin-101 doorknob drinking-straw duck dumb-bell eiffel-tower electric-guitar-101 elephant-101 elk ewer-101
eyeglasses fern fighter-jet fire-extinguisher fire-hydrant fire-truck fireworks flashlight floppy-disk
football-helmet french-horn fried-egg frisbee frog frying-pan galaxy gas-pump giraffe goat golden-gate-bridge
goldfish golf-ball goose gorilla grand-piano-101 grapes grasshopper guitar-pick hamburger hammock harmonica harp
harpsichord hawksbill-101 head-phones helicopter-101 hibiscus homer-simpson horse horseshoe-crab hot-air-balloon
hot-dog hot-tub hourglass house-fly human-skeleton hummingbird ibis-101 ice-cream-cone iguana ipod iris
jesus-christ joy-stick kangaroo-101 kayak ketch-101 killer-whale knife ladder laptop-101 lathe leopards-101
license-plate lightbulb light-house lightning llama-101 mailbox mandolin mars mattress megaphone menorah-101
microscope microwave minaret minotaur motorbikes-101 mountain-bike mushroom mussels necktie octopus ostrich owl
palm-pilot palm-tree paperclip paper-shredder pci-card penguin people pez-dispenser photocopier picnic-table
playing-card porcupine pram praying-mantis pyramid raccoon radio-telescope rainbow refrigerator revolver-101 rifle
rotary-phone roulette-wheel saddle saturn school-bus scorpion-101 screwdriver segway self-propelled-lawn-mower
sextant sheet-music skateboard skunk skyscraper smokestack snail snake sneaker snowmobile soccer-ball socks
soda-can spaghetti speed-boat spider spoon stained-glass starfish-101 steering-wheel stirrups sunflower-101
superman sushi swan swiss-army-knife sword syringe tambourine teapot teddy-bear teepee telephone-box tennis-ball
tennis-court tennis-racket theodolite toaster tomato tombstone top-hat touring-bike tower-pisa traffic-light
treadmill triceratops tricycle trilobite-101 tripod t-shirt tuning-fork tweezer umbrella-101 unicorn vcr
video-projector washing-machine watch-101 waterfall watermelon welding-mask wheelbarrow windmill wine-bottle
xylophone yarmulke yo-yo zebra airplanes-101 car-side-101 faces-easy-101 greyhound tennis-shoes toad clutter""".split()

# Sizes: "rehearse" holds the quick profile's real sizes (CIFAR-10: 60 train / 100 test images per class);
# "smoke" is the test's (seconds to write; Caltech-256 images in a few folders only, the rest empty).
SIZES = {
    "rehearse": dict(cifar_train_per_class=60, cifar_test_per_class=100, caltech_per_class=3, caltech_classes=257),
    "smoke": dict(cifar_train_per_class=2, cifar_test_per_class=2, caltech_per_class=2, caltech_classes=4),
}


def write_weights(path: Path, seed: int = 0) -> Path:
    """A random ViT-B/32 saved as OpenAI's files are: a traced TorchScript archive whose weights are fp16."""
    model = build_random_clip("ViT-B/32", seed=seed)
    convert_weights(model)  # the dtypes clip's build_model gives; OpenAI's archives hold fp16 weights
    image = torch.zeros(1, 3, 224, 224, dtype=torch.float16)
    tokens = torch.zeros(1, model.context_length, dtype=torch.long)
    with torch.no_grad():
        archive = torch.jit.trace(model, (image, tokens), check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.jit.save(archive, str(partial))
    os.replace(partial, path)
    return path


def picture(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A procedural RGB picture: one of the kit's coloured shapes, chosen by the label, on a noisy background."""
    return draw_shape(COLOURS[label % len(COLOURS)], SHAPES[(label // len(COLOURS)) % len(SHAPES)], size, rng)


def pickle_batch(path: Path, entry: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)  # the python version of CIFAR-10 is a Python 2 pickle


def write_cifar10(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """<root>/cifar-10-batches-py as torchvision reads it: 5 train batches, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(name, labels):
        data = np.stack([np.asarray(picture(label, 32, rng)).transpose(2, 0, 1).reshape(-1) for label in labels])
        filenames = [f"stand_in_{name}_{i:05d}.png" for i in range(len(labels))]
        pickle_batch(folder / name, {"batch_label": f"stand-in {name}", "labels": [int(x) for x in labels],
                                     "data": data.astype(np.uint8), "filenames": filenames})

    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    for i, labels in enumerate(np.array_split(train_labels, 5), start=1):
        batch(f"data_batch_{i}", labels)
    batch("test_batch", rng.permutation(np.repeat(np.arange(10), test_per_class)))
    pickle_batch(folder / "batches.meta", {"num_cases_per_batch": len(train_labels) // 5,
                                           "label_names": CIFAR10_LABEL_NAMES, "num_vis": 3072})
    return folder


def write_caltech256(root: Path, per_class: int, n_classes_with_images: int = 257, seed: int = 0) -> Path:
    """<root>/caltech256/256_ObjectCategories with all 257 folders; images (JPEG, NNN_MMMM.jpg) in the first
    n_classes_with_images of them and in 257.clutter. Three are grayscale; one is a truncated JPEG."""
    folder = root / "caltech256" / "256_ObjectCategories"
    rng = np.random.default_rng(seed)
    filled = set(range(min(n_classes_with_images, 256))) | {256}
    for number, name in enumerate(CALTECH256_FOLDERS, start=1):
        class_dir = folder / f"{number:03d}.{name}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1 if number - 1 in filled else 1):
            image = picture(number, int(rng.integers(64, 160)), rng).resize(
                (int(rng.integers(80, 200)), int(rng.integers(80, 200))))
            if number in (2, 3, 257) and i == 1:  # Caltech-256 has grayscale JPEGs among the colour ones
                image = image.convert("L")
            image.save(class_dir / f"{number:03d}_{i:04d}.jpg", quality=85)
    broken = folder / f"001.{CALTECH256_FOLDERS[0]}" / "001_0002.jpg"
    if broken.is_file():  # cut mid-scan: PIL opens it, but decoding fails with "image file is truncated"
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
    return folder


DEFAULT_ROOT = "rehearsal-data"
# Written first into a folder the rehearsal makes (or finds empty): only a folder holding it is the rehearsal's own.
OWNER_MARKER = "made-by-clip-kit-rehearsal.json"
PROJECT_DATA = Path(__file__).resolve().parent.parent / "data"


class NotARehearsalFolder(ValueError):
    """A folder the rehearsal did not make: it may hold real downloads or runs, so nothing is written or deleted."""


def refusal(root: Path, why: str) -> NotARehearsalFolder:
    return NotARehearsalFolder(
        f"The rehearsal will not use {root}: {why}. Its stand-ins would overwrite real downloads there and --fresh "
        f"would delete real runs, so nothing was written or deleted. Use a folder of its own: the default "
        f"{DEFAULT_ROOT}/ (--root / --data-dir {DEFAULT_ROOT}), or a new or empty folder. A rehearsal folder made "
        f"before the rehearsal marked its folders has no {OWNER_MARKER}: delete it yourself (`make clean` removes "
        f"{DEFAULT_ROOT}/) and run again.")


def own_folder(root) -> Path:
    """`root`, made the rehearsal's own if it is new or empty; NotARehearsalFolder if it is anything else.

    The project's data/ (and ./data, every command's default) is refused even when empty: real downloads go there.
    """
    root = Path(root)
    if root.resolve() in (PROJECT_DATA, (Path.cwd() / "data").resolve()):
        raise refusal(root, "it is the data folder, where the real downloads and runs go")
    if (root / OWNER_MARKER).is_file():
        return root
    if root.exists() and not root.is_dir():
        raise refusal(root, "it is a file, not a folder")
    held = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
    if held:
        real = [name for name in held if name in ("cifar-10-batches-py", "caltech256", "weights", "runs", "features")]
        shown = real or held
        raise refusal(root, f"it holds {', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''} and no "
                            f"{OWNER_MARKER}, so the rehearsal did not make it")
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomically(root / OWNER_MARKER, json.dumps({"made_by": "clip_helpers.replication.rehearsal", "note": BANNER}))
    return root


def build(root=DEFAULT_ROOT, sizes: str | None = None, seed: int = 0) -> Path:
    """Write every stand-in under `root` once; a second call with the same sizes leaves them alone.

    sizes: a key of SIZES; None keeps a finished set of any sizes, else writes "rehearse".
    `root` must be the rehearsal's own folder (own_folder): new, empty, or made by an earlier build.
    """
    root = own_folder(root)
    marker = root / "stand-ins.json"
    if sizes is None and marker.is_file():
        return root
    sizes = sizes or "rehearse"
    config = {"sizes": sizes, **SIZES[sizes], "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == config:
        return root
    marker.unlink(missing_ok=True)  # a half-written set is never taken for a finished one
    sized = SIZES[sizes]
    write_cifar10(root, sized["cifar_train_per_class"], sized["cifar_test_per_class"], seed)
    write_caltech256(root, sized["caltech_per_class"], sized["caltech_classes"], seed)
    weights = weights_file("ViT-B/32", root / "weights")
    if not weights.is_file():
        write_weights(weights, seed)
    (root / "README.md").write_text(f"Stand-ins written by clip_helpers.replication.rehearsal, not real data.\n\n{BANNER}\n")
    marker.write_text(json.dumps(config))
    return root


def stamp_figure(path: Path) -> bool:
    """Add a red rehearsal band on top of a PNG figure (once: the PNG remembers it). True if it stamped."""
    with Image.open(path) as image:
        if image.info.get("clip-kit") == "rehearsal":
            return False
        image = image.convert("RGB")
    font_size = max(12, image.width // 70)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    band = font_size * 3
    stamped = Image.new("RGB", (image.width, image.height + band), "white")
    stamped.paste(image, (0, band))
    draw = ImageDraw.Draw(stamped)
    draw.rectangle([0, 0, image.width, band - 4], fill=(200, 0, 0))
    draw.text((8, font_size // 2), "REHEARSAL on random weights and stand-in images: these numbers mean nothing",
              fill="white", font=font)
    info = PngInfo()
    info.add_text("clip-kit", "rehearsal")
    partial = path.with_name(path.name + ".partial")
    stamped.save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)
    return True


def stamp_figures(folder) -> int:
    """Stamp every PNG under `folder`; returns how many were stamped now."""
    return sum(stamp_figure(path) for path in sorted(Path(folder).rglob("*.png")))


def main(argv=None) -> None:
    import argparse
    import shutil

    parser = argparse.ArgumentParser(prog="python -m clip_helpers.replication.rehearsal", description="Write the rehearsal's stand-ins.")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help=f"a folder of the rehearsal's own (default {DEFAULT_ROOT}); one it did not make is refused")
    parser.add_argument("--sizes", choices=list(SIZES), default="rehearse")
    parser.add_argument("--fresh", action="store_true",
                        help="delete what runs computed there (features/, runs/) so the rehearsal computes it again")
    args = parser.parse_args(argv)
    try:
        root = build(args.root, args.sizes)
    except NotARehearsalFolder as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    if args.fresh:  # build() has made sure root is the rehearsal's own: what is in it came from rehearsals
        for cache in ("features", "runs"):
            shutil.rmtree(root / cache, ignore_errors=True)
    print(f"stand-ins ready in {root}/")


if __name__ == "__main__":
    main()
