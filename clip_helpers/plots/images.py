"""Images made drawable (PIL images, arrays, CHW tensors, normalised or not) and drawn in a captioned grid."""
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image


def to_array(image):
    """HxWx3 (or HxW) array in [0, 1] or uint8, from a PIL image, an array, or a CHW tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.squeeze(-1) if image.dim() == 3 and image.shape[-1] == 1 else image
        if image.min() < 0 or image.max() > 1:  # a normalised tensor: stretch it back into [0, 1] for display
            image = (image - image.min()) / (image.max() - image.min() + 1e-8)
        return image.numpy()
    return np.asarray(image)


def as_numpy(matrix):
    if isinstance(matrix, torch.Tensor):
        return matrix.detach().cpu().float().numpy()
    return np.asarray(matrix, dtype=float)


def wrap(text: str, width: int) -> str:
    """Break text into lines of about `width` characters at spaces, never inside a word (captions under thumbnails)."""
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def image_grid(images, captions=None, ncols=8, title=None, size=1.6):
    """Images in a grid, each with its caption underneath (wrapped to two short lines)."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    caption_room = 0.45 if captions is not None else 0.05
    height = (size + caption_room) * nrows + (0.4 if title else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(to_array(image), cmap="gray")
        if captions is not None:
            ax.set_title(wrap(str(captions[i]), 18), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
