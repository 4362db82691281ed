"""Bars and lines: probabilities, accuracies and similarities as bars, training curves and sweeps as lines."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .images import as_numpy, to_array, wrap


def softmax_bars(probabilities, images, class_names, top_k=5, labels=None, title="Zero-shot probabilities per image",
                 per_row=2):
    """For each image, its thumbnail and a bar chart of its top-k class probabilities (true class in orange);
    `per_row` (thumbnail, bars) pairs side by side."""
    probabilities = as_numpy(probabilities)
    n = len(probabilities)
    top_k = min(top_k, probabilities.shape[1])
    per_row = min(per_row, n)
    rows = int(np.ceil(n / per_row))
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(7.5 * per_row, (0.3 * top_k + 0.8) * rows + 0.6),
                             squeeze=False, gridspec_kw=dict(width_ratios=[1, 2.6] * per_row))
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        image_ax, bar_ax = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        image_ax.imshow(to_array(images[i]), cmap="gray")
        bar_ax.axis("on")
        order = np.argsort(-probabilities[i])[:top_k][::-1]
        colours = ["tab:orange" if labels is not None and k == labels[i] else "tab:blue" for k in order]
        bar_ax.barh(range(top_k), probabilities[i, order], color=colours)
        bar_ax.set_yticks(range(top_k), [wrap(str(class_names[k]), 40) for k in order], fontsize=8)
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=8)
        if i // per_row == rows - 1:
            bar_ax.set_xlabel("probability (softmax over all texts)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def temperature_figure(similarities, texts, logit_scales, title="The temperature sharpens the softmax"):
    """Softmax over one image's similarities to `texts`, once per logit_scale, as grouped bars."""
    similarities = torch.as_tensor(similarities, dtype=torch.float32)
    probabilities = pd.DataFrame({f"logit_scale = {scale:.3g}": (scale * similarities).softmax(dim=-1).numpy()
                                  for scale in logit_scales}, index=[wrap(str(t), 16) for t in texts])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(texts) + 2), 4))
    probabilities.plot.bar(ax=ax, width=0.8, rot=0, fontsize=8)
    ax.set(ylabel="probability", ylim=(0, 1), title=title)
    fig.tight_layout()
    return fig


def similarity_bars(similarities, title, xlabel="cosine similarity"):
    """Horizontal bars of a pandas Series (index: names), highest at the top."""
    ordered = similarities.sort_values()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ordered) + 1.3))
    ax.barh([wrap(str(name), 40) for name in ordered.index], ordered.values, color="tab:blue")
    ax.bar_label(ax.containers[0], fmt="%.3f", fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    ax.margins(x=0.15)
    fig.tight_layout()
    return fig


def accuracy_bars(table, title, ylabel="accuracy (%)", errors=None):
    """Grouped bars from a DataFrame: one group per row (index), one bar per column, values on top; `errors`
    (a DataFrame of the same shape, e.g. the std over seeds; NaN for none) as error bars. The legend sits
    outside the axes, so it never hides a bar."""
    # wide enough that each bar's value (fontsize 8) fits over its own bar: about 0.45 inch per bar, plus the legend
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(table) + 2, 0.45 * len(table) * len(table.columns) + 4.5), 4))
    yerr = None if errors is None else errors.reindex_like(table).set_axis([str(i) for i in table.index])
    table.set_axis([str(i) for i in table.index]).plot.bar(ax=ax, width=0.8, rot=0, yerr=yerr, capsize=3)
    bar_groups = [bars for bars in ax.containers if isinstance(bars, matplotlib.container.BarContainer)]
    for bars, column in zip(bar_groups, table.columns):
        above = np.zeros(len(table)) if yerr is None else np.nan_to_num(yerr[column].to_numpy(dtype=float))
        for bar, extra in zip(bars, above):  # the value above its error bar, not under it
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + extra + 1, f"{bar.get_height():.1f}",
                    ha="center", va="bottom", fontsize=8)
    highest = np.nanmax(table.to_numpy(dtype=float) + (0 if yerr is None else np.nan_to_num(yerr.to_numpy(dtype=float))))
    ax.set(ylabel=ylabel, ylim=(0, max(110, highest + 10)), title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def per_class_accuracy(confusion, class_names, title="Per-class accuracy (recall)", highlight=None, errors=None):
    """Horizontal bars of each class's recall in percent, its value written beside it, worst at the top;
    `highlight` classes in orange; `errors` (one per class, e.g. the std over seeds) as error bars."""
    confusion = as_numpy(confusion)
    totals = confusion.sum(axis=1)
    recall = 100 * confusion.diagonal() / np.where(totals == 0, 1, totals)
    order = np.argsort(recall, kind="stable")
    highlight = set(highlight or [])
    colours = ["tab:orange" if class_names[k] in highlight else "tab:blue" for k in order]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(class_names) + 1.4))
    spread = None if errors is None else np.asarray(errors, dtype=float)[order]
    bars = ax.barh(range(len(order)), recall[order], xerr=spread, color=colours, error_kw={"lw": 0.8})
    ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)  # a 0% class gets a "0", not a missing bar
    ax.set_yticks(range(len(order)), [class_names[k] for k in order], fontsize=8)
    ax.set(xlabel="accuracy (%)", xlim=(0, 108), title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def lines(table, title, xlabel, ylabel, logx=False, styles=None, bands=None):
    """One line per DataFrame column against its index, with markers; `styles` maps column -> matplotlib fmt,
    `bands` maps column -> (low, high) arrays shaded around its line (e.g. the min and max over draws)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for column in table.columns:
        line, = ax.plot(table.index, table[column], (styles or {}).get(column, "o-"), label=str(column))
        if column in (bands or {}):
            ax.fill_between(table.index, *bands[column], color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(table.index), [str(x) for x in table.index])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # outside: hides no line
    fig.tight_layout()
    return fig


def per_epoch(history):
    """One row per epoch: the last row logged in each epoch (its validation columns are that epoch's)."""
    return history.groupby("epoch", as_index=False).last()


def binds(column: str, values: pd.Series) -> bool:
    """False for a bound that bounds nothing: a loss floor of 0, an accuracy ceiling of 100%."""
    if column.endswith("_floor"):
        return bool((values > 1e-9).any())
    if column.endswith("_max"):
        return bool((values < 100 - 1e-9).any())
    return True


def training_curves(history, title="Fine-tuning: loss and validation accuracy per epoch (report Fig 10)"):
    """Fig 10's two panels from a history DataFrame: loss vs epoch, validation accuracy vs epoch.

    Uses whichever of train_loss / train_loss_floor / val_loss / val_loss_floor and val_top1 / val_inbatch_acc /
    val_inbatch_max / held_out_top1 / report_inbatch_acc / report_inbatch_max (evaluation.report_inbatch_scores) the
    history has. A bound (dashed or dotted: what a batch's same-class images
    allow, see losses.loss_floor) is drawn only where it binds: a floor above 0, a ceiling below 100%.
    """
    epochs = per_epoch(history)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, curves in ((loss_ax, (("train_loss", "training loss", "o-"),
                                  ("train_loss_floor", "floor of the training loss (same-class images per batch)", "C0--"),
                                  ("val_loss", "validation loss", "o-"),
                                  ("val_loss_floor", "floor of the validation loss (same-class images per batch)", "C1--"))),
                       (acc_ax, (("val_top1", "top-1 over all classes (kit)", "C0o-"),
                                 ("val_inbatch_acc", "in-batch matching (report's evaluateModel), kit's batches", "C1x--"),
                                 ("held_out_top1", "top-1 on held-out pairs (zero-shot)", "C2o-"),
                                 ("val_inbatch_max", "ceiling of in-batch matching (same-class images)", "C1:"),
                                 ("report_inbatch_acc", "in-batch matching, the report's batches", "C3s-"),
                                 ("report_inbatch_max", "ceiling on the report's batches (repeated classes)", "C3:")))):
        for column, label, style in curves:
            if column in epochs and epochs[column].notna().any() and binds(column, epochs[column].dropna()):
                ax.plot(epochs["epoch"], epochs[column], style, label=label)
    loss_ax.set(xlabel="epoch", ylabel="contrastive loss", title="loss")
    loss_ax.legend(loc="upper right", fontsize="small")  # a loss falls: its first epochs sit left
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy", ylim=(0, 102))
    acc_ax.legend(loc="best", fontsize="small")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
