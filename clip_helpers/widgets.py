"""Two small interactive explorers, each with a plain function underneath that runs headless.

Notebooks call `caption_explorer(..., interactive=interactive)`: under papermill (interactive=False) it
returns the figure for the default input; in Jupyter it shows a widget that redraws as you type or slide.
"""
import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import plots
from .retrieval import top_hits
from .similarity import similarity_matrix
from .text import encode_texts


@torch.no_grad()
def text_to_images(model, image_features, image_names, text):
    """pandas Series: cosine similarity between `text` and each image (index: image_names)."""
    text_features = encode_texts(model, [text]).float().cpu()
    similarities = similarity_matrix(image_features.float().cpu(), text_features)[:, 0]
    return pd.Series(similarities.numpy(), index=list(image_names), name=text)


def softmax_at(similarities, logit_scale):
    """Probabilities over texts for one image's cosines at a given logit_scale (1 / temperature)."""
    return (logit_scale * torch.as_tensor(similarities, dtype=torch.float32)).softmax(dim=-1)


def caption_explorer(model, image_features, image_names, text="a photo of a cat", interactive=False):
    """Type a caption, see its similarity to every image. Headless: the figure for `text`."""
    def draw(text):
        return plots.similarity_bars(text_to_images(model, image_features, image_names, text),
                                     title=f'similarity to "{text}"')
    if not interactive:
        return draw(text)
    import ipywidgets

    return ipywidgets.interact(lambda text: show(draw(text)), text=ipywidgets.Text(value=text, continuous_update=False))


def top_images(model, image_features, text, k=8):
    """(gallery indices, cosine similarities) of the k images most similar to `text`, best first."""
    similarities = text_to_images(model, image_features, range(len(image_features)), text)
    return top_hits(torch.tensor(similarities.values)[None, :], 0, k)


def retrieval_explorer(model, image_features, images, text="a photo of a dog.", k=8, interactive=False):
    """Type a query, see the k images of `images` most similar to it. Headless: the figure for `text`."""
    def draw(text):
        order, scores = top_images(model, image_features, text, k)
        return plots.image_grid([images[i] for i in order.tolist()], [f"#{r + 1}: {s:.3f}" for r, s in enumerate(scores.tolist())],
                                title=f'top {k} images for "{text}" (cosine similarity)')
    if not interactive:
        return draw(text)
    import ipywidgets

    return ipywidgets.interact(lambda text: show(draw(text)), text=ipywidgets.Text(value=text, continuous_update=False))


def temperature_explorer(similarities, texts, logit_scale=100.0, interactive=False):
    """Slide logit_scale, see the softmax over `texts` sharpen or flatten. Headless: the figure at logit_scale."""
    def draw(logit_scale):
        return plots.temperature_figure(similarities, texts, [logit_scale],
                                        title=f"softmax at logit_scale = {logit_scale:.3g}")
    if not interactive:
        return draw(logit_scale)
    import ipywidgets

    slider = ipywidgets.FloatLogSlider(value=logit_scale, base=10, min=-1, max=2.5, step=0.05,
                                       description="logit_scale", continuous_update=False)
    return ipywidgets.interact(lambda logit_scale: show(draw(logit_scale)), logit_scale=slider)


def show(fig):
    """Display a figure inside a widget's output, then free it (interact re-draws on every change)."""
    from IPython.display import display

    display(fig)
    plt.close(fig)
