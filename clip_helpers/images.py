"""Image files in, upright RGB images out: which files are read, why one is refused, and how pixels become 8-bit RGB."""
import warnings

import numpy as np
from PIL import Image, ImageOps

# What PIL decodes itself; .jfif and .jpe are JPEGs under other names. Other files in a class folder (.heic, .svg,
# notes.txt) are listed in ImageFolderCaptions.skipped with not_an_image_reason, never silently left out.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif")

# clip's Resize scales the short side to 224, so a 40000x1 PNG (a few hundred bytes) would become 8960000x224 pixels
# (several GB) before the centre crop. Panoramas stay well under this ratio.
MAX_ASPECT_RATIO = 20
CLIP_RESOLUTION = 224

# The value that means full brightness, for the modes PIL's convert("RGB") clips instead of scaling: 16-bit grayscale
# (PNG, TIFF; "I" is how PIL opens a 16-bit PNG after some operations) and float images, whose convention is 0..1.
FULL_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
SIXTEEN_BIT_MODES = tuple(mode for mode, full in FULL_SCALE.items() if full == 65535.0)


def to_rgb(image):
    """PIL image upright (its EXIF orientation applied, as a phone's viewer shows it) and in RGB.

    Transparent parts of RGBA/LA/P images become white rather than black. 16-bit grayscale (0..65535) and float
    (0..1) images are scaled to 8 bit; PIL's own convert("RGB") clips them, so 16-bit turns white and float black.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in FULL_SCALE:
        return Image.fromarray(eight_bit(np.asarray(image), FULL_SCALE[image.mode], image.mode), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def eight_bit(values, full_scale: float = 65535.0, mode: str = "I;16"):
    """Values 0..full_scale as uint8 0..255 (full_scale -> 255); values outside that range are stretched, with a warning."""
    values = values.astype(np.float64)
    low, high = 0.0, full_scale
    if values.min() < low or values.max() > high:  # e.g. a 32-bit "I" image: no standard range to scale from
        low, high = float(values.min()), float(values.max())
        warnings.warn(f"{mode} image with values {low:g}..{high:g}, outside 0..{full_scale:g}: stretched to 0..255",
                      stacklevel=3)
    return np.round((values - low) / max(high - low, np.finfo(np.float64).tiny) * 255).astype(np.uint8)


def shape_reason(width: int, height: int) -> str | None:
    """None when clip's preprocessing can resize a width x height image cheaply, else why not."""
    short, long = min(width, height), max(width, height)
    if short == 0:
        return f"empty image ({width}x{height} pixels)"
    if long / short > MAX_ASPECT_RATIO:
        resized = round(long * CLIP_RESOLUTION / short)
        return (f"extreme aspect ratio ({width}x{height} pixels, over {MAX_ASPECT_RATIO}:1; resizing its short side "
                f"to {CLIP_RESOLUTION} would make {resized}x{CLIP_RESOLUTION} pixels); crop it to a sensible shape")
    return None


def unreadable_reason(path):
    """None when PIL can decode the whole file into an image clip can resize, else why not (a truncated JPEG passes
    Image.verify, so decode). The shape is checked from the header, before any pixel is decoded."""
    try:
        with Image.open(path) as image:
            reason = shape_reason(*image.size)
            if reason is not None:
                return reason
            image.draft("RGB", (image.width // 8 + 1, image.height // 8 + 1))  # JPEG only: cheap scaled decode
            image.load()
            if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
                return "non-finite pixels (NaN or inf in a float image): no brightness to scale them to"
        return None
    except Image.DecompressionBombError as error:
        return f"too large for PIL ({error}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError ...)
        return f"unreadable ({type(error).__name__}: {error})"


def not_an_image_reason(path) -> str:
    """Why a file in a class folder is not read: a folder, or a file type the kit does not decode."""
    if path.is_dir():
        return "a folder inside a class folder (its files are not read; move them up into the class folder)"
    kind = path.suffix.lower() or "no extension"
    return (f"not an image type the kit reads ({kind}; it reads {', '.join(IMAGE_EXTENSIONS)}): convert it to JPEG "
            f"or PNG if it is an image")
