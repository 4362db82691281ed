"""Small interactive explorers, each with a plain function underneath that runs headless.

Notebooks call `caption_explorer(..., interactive=interactive)`: under papermill (interactive=False) it
returns the figure for the default input; in Jupyter it shows its controls and, below them, the figure, redrawn
as you type or slide. The figure is an ordinary output (a display updated in place), not a widget, so a saved
notebook reopened without a kernel still shows the last figure; the controls come back from the widget state that
JupyterLab saves with the course's settings (jupyterlab-settings/clip-kit.json), and move the figure again once the
notebook runs.
"""
import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import plots
from .retrieval import top_hits
from .similarity import similarity_matrix
from .text import encode_texts
from .zeroshot import build_classifier


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
    return explore(draw, text=text_box(text, "caption"))


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
    return explore(draw, text=text_box(text, "query"))


def temperature_explorer(similarities, texts, logit_scale=100.0, interactive=False):
    """Slide logit_scale, see the softmax over `texts` sharpen or flatten. Headless: the figure at logit_scale."""
    def draw(logit_scale):
        return plots.temperature_figure(similarities, texts, [logit_scale],
                                        title=f"softmax at logit_scale = {logit_scale:.3g}")
    if not interactive:
        return draw(logit_scale)
    import ipywidgets

    slider = ipywidgets.FloatLogSlider(value=logit_scale, base=10, min=-1, max=2.5, step=0.05, description="logit_scale",
                                       continuous_update=False, style=LABEL_STYLE, layout=ipywidgets.Layout(width="32em"))
    return explore(draw, logit_scale=slider)


def names_from(text: str) -> list[str]:
    """Class names typed as one comma-separated string, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def zero_shot_probabilities(model, image_features: torch.Tensor, class_names: list[str], templates: list[str]) -> pd.Series:
    """Probabilities (softmax of logit_scale x cosine) of one image over `class_names`, from the prompts
    `templates` ("{}" marks where the class name goes), best first."""
    if len(class_names) < 2:
        raise ValueError(f"give at least two class names, separated by commas (got {class_names})")
    if len(set(class_names)) < len(class_names):
        raise ValueError(f"class names repeat ({class_names}): identical prompts cannot be told apart")
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f'every prompt needs "{{}}" where the class name goes, e.g. "a photo of a {{}}." (got {templates})')
    classifier = build_classifier(model, class_names, templates).float().cpu()
    features = torch.nn.functional.normalize(torch.as_tensor(image_features).float().cpu().reshape(1, -1), dim=-1)
    probabilities = (model.logit_scale.exp().float().cpu() * features @ classifier.T).softmax(dim=-1)[0]
    return pd.Series(probabilities.detach().numpy(), index=class_names, name="probability").sort_values(ascending=False)


def zero_shot_playground(model, images, image_features, class_names="red circle, blue square, green star",
                         template="a photo of a {}.", interactive=False):
    """Type class names (comma-separated) and a prompt, pick an image: see the prediction and the probabilities.
    Headless: the figure for the defaults and the first image."""
    def draw(image_index, class_names, template):
        try:
            probabilities = zero_shot_probabilities(model, image_features[image_index], names_from(class_names), [template])
        except ValueError as error:  # a half-typed entry in the widget: say what is missing, keep the widget alive
            return str(error)
        fig, (image_ax, bar_ax) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1, 2]})
        image_ax.imshow(images[image_index])
        image_ax.set_axis_off()
        bar_ax.barh(probabilities.index[::-1], probabilities.values[::-1])
        bar_ax.set(xlim=(0, 1), xlabel="probability", title=f'prediction: "{probabilities.index[0]}" '
                                                             f'({probabilities.iloc[0]:.0%}), prompt "{template}"')
        fig.tight_layout()
        return fig
    if not interactive:
        drawn = draw(0, class_names, template)
        if isinstance(drawn, str):
            print(drawn)
            return None
        return drawn
    import ipywidgets

    return explore(draw, image_index=ipywidgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                                                          style=LABEL_STYLE, continuous_update=False),
                   class_names=text_box(class_names, "class_names"), template=text_box(template, "template"))


# The label column fits the longest description ("class_names"), so no label is cut to "class_na...".
LABEL_STYLE = {"description_width": "7em"}


def text_box(value, description):
    """A text box that redraws on Enter or leaving it, wide enough for a sentence or a list of class names."""
    import ipywidgets

    return ipywidgets.Text(value=value, description=description, continuous_update=False, style=LABEL_STYLE,
                           layout=ipywidgets.Layout(width="40em"))


def explore(draw, **controls):
    """Show `controls` and below them draw(**their values) as a plain output, redrawn in place when one changes.
    Returns the box of controls (its .children are `controls`, in order)."""
    import ipywidgets
    from IPython.display import display

    box = ipywidgets.VBox(list(controls.values()))
    display(box)
    figure = display(shown(draw(**{name: control.value for name, control in controls.items()})), display_id=True)

    def redraw(change):
        figure.update(shown(draw(**{name: control.value for name, control in controls.items()})))

    for control in controls.values():
        control.observe(redraw, names="value")
    return box


def shown(drawn):
    """What the display shows for what draw() returned: the figure (then freed: every change draws a new one), or
    the message that says why there is none."""
    if isinstance(drawn, str) or drawn is None:
        from IPython.display import Pretty

        return Pretty(drawn or "")
    plt.close(drawn)
    return drawn
