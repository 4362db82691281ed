"""The eight scikit-image photos of openai/CLIP's "Interacting with CLIP" notebook, with their descriptions.

They ship with scikit-image, so they need no network: the offline stand-in for Caltech-256's layout
(write_photos) and the images of the report's Fig 12 (clip_helpers.replication.reproduce).
"""
from pathlib import Path

import skimage
from PIL import Image

from .files import write_atomically

# skimage.data name -> (short class name, used as the folder name; the photo's description)
PHOTOS = {
    "page": ("page", "a page of text about segmentation"),
    "chelsea": ("cat", "a facial photo of a tabby cat"),
    "astronaut": ("astronaut", "a portrait of an astronaut with the American flag"),
    "rocket": ("rocket", "a rocket standing on a launchpad"),
    "motorcycle_right": ("motorcycle", "a red motorcycle standing in a garage"),
    "camera": ("camera", "a person looking at a camera on a tripod"),
    "horse": ("horse", "a black-and-white silhouette of a horse"),
    "coffee": ("coffee", "a cup of coffee on a saucer"),
}


# The five photos of the report's Fig 12 (five images, five captions), in the order make reproduce draws them.
REPORT_FIG12 = ("astronaut", "chelsea", "coffee", "rocket", "horse")


def photo(name: str) -> Image.Image:
    """The scikit-image photo `name` (a key of PHOTOS) as an RGB image."""
    source = next(Path(skimage.data_dir).glob(f"{name}.*"))  # rocket is a .jpg, the others .png
    with Image.open(source) as image:
        return image.convert("RGB")


# A hidden file (so no class): write_photos made this folder, and may add its photos to it.
MARKER = ".written-by-clip-kit"


def write_photos(data_dir="data") -> Path:
    """The eight photos as an ImageFolderCaptions folder, <data_dir>/photos/001.page/page.png ...; returns the folder.

    A <data_dir>/photos that write_photos did not make (your own photos) is refused, never added to.
    """
    root = Path(data_dir) / "photos"
    refuse_a_folder_not_ours(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    for name, path in layout(root).items():
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            write_atomically(path, lambda file, name=name: photo(name).save(file, format="PNG"))
    return root


def layout(root: Path) -> dict:
    """{photo name: the path of its file} for the eight photos under `root`, e.g. root/002.cat/chelsea.png."""
    return {name: root / f"{number:03d}.{class_name}" / f"{name}.png"
            for number, (name, (class_name, _)) in enumerate(PHOTOS.items(), start=1)}


def refuse_a_folder_not_ours(root: Path) -> None:
    """A FileExistsError when `root` exists and was not made by write_photos: it has no marker and does not hold
    (some of) the photos and nothing else, as a folder an earlier version of the kit wrote does."""
    if not root.exists() or (root / MARKER).is_file():
        return
    expected = {path.relative_to(root) for path in layout(root).values()}
    expected |= {path.parent for path in expected}
    found = {path.relative_to(root) for path in root.rglob("*")} if root.is_dir() else set()
    found = {path for path in found if not any(part.startswith(".") for part in path.parts)}  # as ImageFolderCaptions
    if not found or found - expected:
        others = sorted(str(path) for path in found - expected)[:3]
        raise FileExistsError(f"{root} exists and holds what write_photos did not write ({others or 'nothing yet'}): it is "
                              f"not the kit's photos folder, so nothing is added to it. To use your photos, give that "
                              f"folder's path as the source ({root}); for scikit-image's photos, choose another "
                              f"data folder (data_dir / --data-dir).")


def photo_descriptions(names=tuple(PHOTOS)) -> list[str]:
    """The descriptions of the photos `names` (default: all eight, in folder order)."""
    return [PHOTOS[name][1] for name in names]
