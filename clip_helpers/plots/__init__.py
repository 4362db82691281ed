"""Every figure of the course: tensors, arrays or DataFrames in, a matplotlib Figure out.

Nothing else in the package draws. Functions never call plt.show(); a notebook displays the returned
figure, and save_figure writes it as a PNG. The figures live in three modules by what they draw (images,
matrices, charts); every one is importable from here.
"""
from pathlib import Path

from .charts import (accuracy_bars, binds, lines, per_class_accuracy, per_epoch, similarity_bars, softmax_bars,
                     temperature_figure, training_curves)
from .images import as_numpy, image_grid, to_array, wrap
from .matrices import CMAP, confusion_matrix, convolution_figure, matrix_heatmap, similarity_heatmap, write_values

__all__ = ["CMAP", "accuracy_bars", "as_numpy", "binds", "confusion_matrix", "convolution_figure", "image_grid", "lines",
           "matrix_heatmap", "per_class_accuracy", "per_epoch", "save_figure", "similarity_bars", "similarity_heatmap",
           "softmax_bars", "temperature_figure", "to_array", "training_curves", "wrap", "write_values"]


def save_figure(fig, name, out_dir="outputs/figures"):
    """Write `fig` as <out_dir>/<name>.png and return the path."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
