"""The eight scikit-image photos of openai/CLIP's "Interacting with CLIP" notebook, with their descriptions.

They ship with scikit-image, so they need no network: the offline stand-in for Caltech-256's layout
(write_photos) and the images of the report's Fig 12 (clip_helpers.reproduce).
"""
from pathlib import Path

import skimage
from PIL import Image

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


def photo(name: str) -> Image.Image:
    """The scikit-image photo `name` (a key of PHOTOS) as an RGB image."""
    source = next(Path(skimage.data_dir).glob(f"{name}.*"))  # rocket is a .jpg, the others .png
    with Image.open(source) as image:
        return image.convert("RGB")


def write_photos(data_dir="data") -> Path:
    """The eight photos as an ImageFolderCaptions folder, <data_dir>/photos/001.page/page.png ...; returns the folder."""
    root = Path(data_dir) / "photos"
    for number, (name, (class_name, _)) in enumerate(PHOTOS.items(), start=1):
        path = root / f"{number:03d}.{class_name}" / f"{name}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(name).save(path)
    return root


def photo_descriptions(names=tuple(PHOTOS)) -> list[str]:
    """The descriptions of the photos `names` (default: all eight, in folder order)."""
    return [PHOTOS[name][1] for name in names]
