"""Matrices drawn cell by cell with their values written in: heatmaps, the similarity matrix with its images,
the convolution figure, the confusion matrix."""
import matplotlib.pyplot as plt
import numpy as np

from .images import as_numpy, to_array, wrap

CMAP = "viridis"


def write_values(ax, values, shown, fmt, fontsize=9, skip_zeros=False):
    """Numbers in the cells, dark on light cells and light on dark ones (big matrices: zeros left blank)."""
    for (row, col), value in np.ndenumerate(values):
        if skip_zeros and fmt.format(value) in ("0", "0.0", "0.00"):
            continue
        red, green, blue, _ = shown.cmap(shown.norm(value))
        colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
        ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=fontsize, color=colour)


def matrix_heatmap(matrix, row_labels, col_labels, title, xlabel="", ylabel="", fmt="{:.2f}", cmap=CMAP,
                   vmin=None, vmax=None, colorbar_label="", colorbar=True):
    """A labelled matrix with its values written in the cells and a colour bar."""
    values = as_numpy(matrix)
    n_rows, n_cols = values.shape
    cell = 0.7 if max(n_rows, n_cols) <= 12 else 0.3
    fig, ax = plt.subplots(figsize=(max(5, cell * n_cols + 3.5), max(3.5, cell * n_rows + 1.8)))
    shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    big = max(n_rows, n_cols) > 12
    write_values(ax, values, shown, fmt, fontsize=5 if big else 9, skip_zeros=big)
    ax.set_xticks(range(n_cols), [str(label) for label in col_labels], rotation=45, ha="right",
                  fontsize=7 if big else 9)
    ax.set_yticks(range(n_rows), [str(label) for label in row_labels], fontsize=7 if big else 9)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if colorbar:
        fig.colorbar(shown, ax=ax, label=colorbar_label, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def similarity_heatmap(similarity, images, texts, title="Cosine similarity between text and image features",
                       vmin=None, vmax=None):
    """The report's Fig 12 in the style of openai/CLIP's notebook: texts down the side, image thumbnails
    along the top, the cosine in every cell, a colour bar.

    `similarity` is [n_images, n_texts] (similarity_matrix's layout); it is drawn transposed, one row per text.
    """
    values = as_numpy(similarity).T
    n_texts, n_images = values.shape
    fig, ax = plt.subplots(figsize=(2.0 + 1.25 * n_images + 3.0, 1.6 + 0.8 * n_texts))
    shown = ax.imshow(values, cmap=CMAP, vmin=vmin, vmax=vmax)
    write_values(ax, values, shown, "{:.2f}", fontsize=10)
    ax.set_yticks(range(n_texts), [wrap(str(t), 45) for t in texts], fontsize=10)
    ax.set_xticks([])
    for i, image in enumerate(images):  # thumbnails in a row of unit squares above the matrix
        ax.imshow(to_array(image), extent=(i - 0.45, i + 0.45, -0.6, -1.5), origin="upper", cmap="gray")
    ax.set_xlim(-0.5, n_images - 0.5)
    ax.set_ylim(n_texts - 0.5, -1.6)
    for side in ("left", "top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=13)
    ax.set_xlabel("images")
    fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.02, label="cosine similarity")
    fig.tight_layout()
    return fig


def convolution_figure(image, kernel, response, title="A horizontal-line kernel slid over a photo"):
    """The report's Fig 5: the photo, the kernel with its weights written in, and the response map."""
    kernel = as_numpy(kernel)
    response = as_numpy(response)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), gridspec_kw=dict(width_ratios=[1, 0.55, 1]))
    axes[0].imshow(to_array(image), cmap="gray")
    axes[0].set_title("input photo (grayscale)")
    limit = np.abs(kernel).max()
    kernel_shown = axes[1].imshow(kernel, cmap="RdBu_r", vmin=-2 * limit, vmax=2 * limit)
    write_values(axes[1], kernel, kernel_shown, "{:g}", fontsize=13)
    axes[1].set_title(f"kernel {kernel.shape[0]}x{kernel.shape[1]}")
    magnitude = np.abs(response)
    shown = axes[2].imshow(magnitude, cmap="magma", vmax=np.percentile(magnitude, 99.5))
    axes[2].set_title("|response|: bright = horizontal edge")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(confusion, class_names, title="Confusion matrix (rows: true class, columns: predicted)",
                     shown=None):
    """Row-normalised confusion matrix in percent, counts turned into 'of the true X, % predicted Y'. `shown`
    (class indices) draws only those rows and columns, still in percent of each whole row: a readable figure of
    a few classes out of many."""
    confusion = as_numpy(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    percent = 100 * confusion / np.where(totals == 0, 1, totals)
    shown = np.arange(len(class_names)) if shown is None else np.asarray(shown)
    names = [class_names[k] for k in shown]
    fig = matrix_heatmap(percent[np.ix_(shown, shown)], names, names, title, xlabel="predicted class",
                         ylabel="true class", fmt="{:.0f}", cmap="Blues", vmin=0, vmax=100,
                         colorbar_label="% of the true class")
    return fig
