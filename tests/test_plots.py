import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clip_helpers import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def thumbnails(n):
    return [Image.new("RGB", (20, 12), (40 * i % 255, 90, 160)) for i in range(n)]


def texts_in(fig):
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def test_similarity_heatmap_writes_every_value_draws_thumbnails_and_a_colour_bar():
    similarity = torch.tensor([[0.31, 0.12, 0.05], [0.10, 0.28, 0.22]])  # [2 images, 3 texts]
    fig = plots.similarity_heatmap(similarity, thumbnails(2), ["a cat", "a dog", "a car"])
    heatmap, colorbar = fig.axes
    assert sorted(texts_in(fig)) == sorted(f"{v:.2f}" for v in similarity.flatten().tolist())
    assert len(heatmap.images) == 1 + 2  # the matrix, then one thumbnail per image
    assert heatmap.images[0].get_array().shape == (3, 2)  # drawn one row per text
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["a cat", "a dog", "a car"]
    assert colorbar.get_ylabel() == "cosine similarity"
    assert heatmap.get_title()


def test_value_colour_contrasts_with_the_cell():
    fig = plots.matrix_heatmap(np.array([[0.0, 1.0]]), ["row"], ["low", "high"], "t", cmap="Greys", vmin=0, vmax=1)
    colours = {text.get_text(): text.get_color() for text in fig.axes[0].texts}
    assert colours == {"0.00": "black", "1.00": "white"}  # Greys: 0 is white, 1 is black


def test_confusion_matrix_shows_row_percentages():
    confusion = np.array([[3, 1], [0, 2]])
    fig = plots.confusion_matrix(confusion, ["cat", "dog"])
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, [[75, 25], [0, 100]])
    assert fig.axes[0].get_xlabel() == "predicted class" and fig.axes[0].get_ylabel() == "true class"


def test_per_class_accuracy_puts_the_worst_class_first():
    confusion = np.array([[9, 1, 0], [5, 5, 0], [0, 0, 10]])
    fig = plots.per_class_accuracy(confusion, ["a", "b", "c"])
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [50, 90, 100]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a", "c"]


def test_training_curves_plot_one_point_per_epoch_from_the_history():
    history = pd.DataFrame({"epoch": [1, 2, 3], "step": [10, 20, 30], "train_loss": [3.0, 2.0, 1.5],
                            "val_loss": [3.1, 2.4, 2.0], "val_top1": [20.0, 45.0, 60.0],
                            "val_inbatch_acc": [30.0, 50.0, 70.0]})
    fig = plots.training_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [list(line.get_ydata()) for line in loss_ax.lines] == [[3.0, 2.0, 1.5], [3.1, 2.4, 2.0]]
    assert [list(line.get_ydata()) for line in acc_ax.lines] == [[20.0, 45.0, 60.0], [30.0, 50.0, 70.0]]
    assert loss_ax.get_xlabel() == acc_ax.get_xlabel() == "epoch"
    assert "accuracy" in acc_ax.get_ylabel()


def test_training_curves_draw_a_batching_bound_only_where_it_binds():
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "train_loss_floor": [1.3, 1.3],
                            "val_loss": [2.2, 1.0], "val_loss_floor": [0.0, 0.0], "val_top1": [50.0, 90.0],
                            "val_inbatch_acc": [60.0, 95.0], "val_inbatch_max": [100.0, 100.0]})
    fig = plots.training_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == [
        "training loss", "floor of the training loss (same-class images per batch)", "validation loss"]
    assert len(acc_ax.lines) == 2  # a ceiling of 100% bounds nothing
    history["val_inbatch_max"] = [25.0, 25.0]
    assert "ceiling" in plots.training_curves(history).axes[1].lines[-1].get_label()


def test_training_curves_take_each_epochs_last_row_when_logged_per_step():
    history = pd.DataFrame({"epoch": [1, 1, 2, 2], "train_loss": [4.0, 3.0, 2.0, 1.0],
                            "val_top1": [np.nan, 10.0, np.nan, 20.0]})
    fig = plots.training_curves(history)
    assert list(fig.axes[0].lines[0].get_ydata()) == [3.0, 1.0]
    assert list(fig.axes[1].lines[0].get_ydata()) == [10.0, 20.0]


def test_softmax_bars_show_each_images_top_k_in_order():
    probabilities = torch.tensor([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
    fig = plots.softmax_bars(probabilities, thumbnails(2), ["x", "y", "z"], top_k=2, labels=[1, 0])
    bar_axes = [ax for ax in fig.axes if ax.patches]
    assert [t.get_text() for t in bar_axes[0].get_yticklabels()] == ["z", "y"]  # highest at the top
    assert [round(p.get_width(), 2) for p in bar_axes[1].patches] == [0.2, 0.7]


def test_temperature_figure_bars_are_softmaxes_at_each_scale():
    similarities = torch.tensor([0.3, 0.2, 0.1])
    fig = plots.temperature_figure(similarities, ["a", "b", "c"], [1, 100])
    heights = np.array([p.get_height() for p in fig.axes[0].patches]).reshape(2, 3)
    np.testing.assert_allclose(heights[0], torch.softmax(similarities, 0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(heights[1], torch.softmax(100 * similarities, 0).numpy(), rtol=1e-5)


def test_image_grid_captions_each_image_and_accepts_tensors():
    images = [torch.rand(3, 8, 8), Image.new("RGB", (8, 8)), np.zeros((8, 8))]
    fig = plots.image_grid(images, ["one", "two", "three"], ncols=2, title="grid")
    titled = [ax.get_title() for ax in fig.axes if ax.images]
    assert titled == ["one", "two", "three"]


def test_to_array_keeps_unit_range_images_and_stretches_normalised_ones():
    image = torch.full((3, 2, 2), 0.25)
    np.testing.assert_allclose(plots.to_array(image), 0.25)
    normalised = torch.tensor([[[-2.0, 2.0]]])
    np.testing.assert_allclose(plots.to_array(normalised), [[0.0, 1.0]], atol=1e-6)


def test_save_figure_writes_a_png(tmp_path):
    fig, _ = plt.subplots()
    path = plots.save_figure(fig, "example", tmp_path / "figures")
    assert path == tmp_path / "figures" / "example.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# clip_helpers.widgets draws through plots; its plain (headless) path is what the notebooks run under papermill.

def test_text_to_images_is_the_cosine_with_each_image(mini):
    from clip_helpers import widgets
    from clip_helpers.text import encode_texts

    image_features = torch.randn(3, mini.text_projection.shape[1])
    series = widgets.text_to_images(mini, image_features, ["a", "b", "c"], "a red circle.")
    text_features = encode_texts(mini, ["a red circle."])[0].detach()
    expected = [torch.nn.functional.cosine_similarity(f, text_features, dim=0).item() for f in image_features]
    np.testing.assert_allclose(series.values, expected, rtol=1e-4, atol=1e-6)
    assert list(series.index) == ["a", "b", "c"]


def test_caption_explorer_headless_returns_the_figure_of_its_text(mini):
    from clip_helpers import widgets

    image_features = torch.randn(4, mini.text_projection.shape[1])
    fig = widgets.caption_explorer(mini, image_features, list("wxyz"), text="a blue star.", interactive=False)
    ax = fig.axes[0]
    assert "a blue star." in ax.get_title()
    expected = widgets.text_to_images(mini, image_features, list("wxyz"), "a blue star.").sort_values()
    np.testing.assert_allclose([bar.get_width() for bar in ax.patches], expected.values, rtol=1e-5)


def test_temperature_explorer_headless_draws_the_softmax_at_its_scale():
    from clip_helpers import widgets

    similarities = torch.tensor([0.3, 0.25, 0.1])
    fig = widgets.temperature_explorer(similarities, ["a", "b", "c"], logit_scale=20.0, interactive=False)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    np.testing.assert_allclose(heights, widgets.softmax_at(similarities, 20.0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(heights, torch.softmax(20 * similarities, 0).numpy(), rtol=1e-5)


def test_interactive_explorers_build_widgets_without_a_frontend():
    ipywidgets = pytest.importorskip("ipywidgets")
    from clip_helpers import widgets

    explorer = widgets.temperature_explorer(torch.tensor([0.3, 0.2]), ["a", "b"], interactive=True)
    slider = explorer.children[0]
    assert isinstance(slider, ipywidgets.FloatLogSlider) and slider.value == pytest.approx(100.0)


def test_lines_shade_the_bands_between_low_and_high():
    table = pd.DataFrame({"probe": [40.0, 55.0, 70.0], "zero-shot": [60.0, 60.0, 60.0]}, index=[1, 2, 4])
    low, high = np.array([35.0, 50.0, 68.0]), np.array([45.0, 61.0, 73.0])
    fig = plots.lines(table, "k-shot", "k", "top-1 (%)", logx=True, styles={"zero-shot": "--"},
                      bands={"probe": (low, high)})
    ax = fig.axes[0]
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--"]
    assert len(ax.collections) == 1  # one band, for "probe" only
    vertices = ax.collections[0].get_paths()[0].vertices
    assert set(vertices[:, 1].round(6)) == set(np.concatenate([low, high]))


def test_retrieval_explorer_headless_shows_the_top_images_of_its_query(mini):
    from clip_helpers import widgets
    from clip_helpers.text import encode_texts

    image_features = torch.randn(6, mini.text_projection.shape[1], generator=torch.Generator().manual_seed(0))
    images = [np.full((4, 4, 3), value, dtype=np.uint8) for value in range(0, 60, 10)]
    order, scores = widgets.top_images(mini, image_features, "a green star.", k=3)
    text_features = encode_texts(mini, ["a green star."])[0].detach()
    cosines = torch.nn.functional.cosine_similarity(image_features, text_features[None, :], dim=1)
    assert order.tolist() == torch.argsort(cosines, descending=True)[:3].tolist()
    np.testing.assert_allclose(scores.numpy(), cosines[order].numpy(), rtol=1e-4, atol=1e-6)
    fig = widgets.retrieval_explorer(mini, image_features, images, text="a green star.", k=3, interactive=False)
    shown = [ax.images[0].get_array()[0, 0, 0] for ax in fig.axes if ax.images]
    assert shown == [images[i][0, 0, 0] for i in order.tolist()]
    assert "a green star." in fig._suptitle.get_text()


def test_zero_shot_probabilities_are_the_softmax_of_scaled_cosines(mini):
    from clip_helpers import widgets
    from clip_helpers.text import encode_texts

    image_features = torch.randn(mini.text_projection.shape[1], generator=torch.Generator().manual_seed(3))
    names = ["red circle", "blue square", "green star"]
    probabilities = widgets.zero_shot_probabilities(mini, image_features, names, ["a {} shape."])
    text_features = torch.nn.functional.normalize(encode_texts(mini, [f"a {n} shape." for n in names]).detach().float(), dim=-1)
    cosines = text_features @ torch.nn.functional.normalize(image_features, dim=0)  # by hand, one template
    expected = torch.softmax(mini.logit_scale.exp().item() * cosines, 0)
    np.testing.assert_allclose(probabilities[names].values, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert probabilities.iloc[0] == probabilities.max() and probabilities.sum() == pytest.approx(1, abs=1e-5)
    for bad_names, bad_templates, message in [(["red circle"], ["{}"], "at least two"),
                                              (["a", "a"], ["{}"], "repeat"),
                                              (names, ["a photo"], "needs")]:
        with pytest.raises(ValueError, match=message):
            widgets.zero_shot_probabilities(mini, image_features, bad_names, bad_templates)


def test_zero_shot_playground_headless_draws_its_first_image_prediction(mini):
    from clip_helpers import widgets

    images = [np.zeros((8, 8, 3), dtype=np.uint8), np.ones((8, 8, 3), dtype=np.uint8)]
    image_features = torch.randn(2, mini.text_projection.shape[1], generator=torch.Generator().manual_seed(4))
    fig = widgets.zero_shot_playground(mini, images, image_features, "red circle, blue star", "a {}.", interactive=False)
    expected = widgets.zero_shot_probabilities(mini, image_features[0], ["red circle", "blue star"], ["a {}."])
    assert f'"{expected.index[0]}"' in fig.axes[1].get_title()
    np.testing.assert_allclose(sorted(bar.get_width() for bar in fig.axes[1].patches), sorted(expected.values), rtol=1e-5)
    assert widgets.zero_shot_playground(mini, images, image_features, "only one", interactive=False) is None


def test_an_explorer_redraws_its_figure_in_place_when_a_control_changes(monkeypatch):
    """The figure is a display updated in place (saved in the notebook as an image), not a widget's output."""
    pytest.importorskip("ipywidgets")
    import IPython.display
    from clip_helpers import widgets

    shown, updates = [], []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: shown.append(obj) or Handle())
    similarities = torch.tensor([0.3, 0.25, 0.1])
    explorer = widgets.temperature_explorer(similarities, ["a", "b", "c"], logit_scale=20.0, interactive=True)
    assert shown[0] is explorer and len(shown) == 2  # the controls, then the figure below them
    assert shown[1].axes[0].get_title() == "softmax at logit_scale = 20"
    explorer.children[0].value = 5.0
    heights = [bar.get_height() for bar in updates[-1].axes[0].patches]
    np.testing.assert_allclose(heights, torch.softmax(5.0 * similarities, 0).numpy(), rtol=1e-5)
    assert explorer.children[0].style.description_width == widgets.LABEL_STYLE["description_width"]


def overlaps(first, second) -> bool:
    return first.x0 < second.x1 and second.x0 < first.x1 and first.y0 < second.y1 and second.y0 < first.y1


def test_per_class_accuracy_writes_every_value_so_a_zero_is_not_a_missing_bar():
    confusion = np.array([[0, 4], [1, 3]])  # class a: 0%, class b: 75%
    fig = plots.per_class_accuracy(confusion, ["a", "b"], errors=[0.0, 5.0])
    assert sorted(texts_in(fig)) == ["0", "75"]


def test_accuracy_bars_keep_their_legend_off_the_bars_and_draw_error_bars():
    table = pd.DataFrame({"model": [100.0, 100.0, 100.0], "baseline": [95.0, 99.0, 100.0]}, index=["a", "b", "c"])
    errors = pd.DataFrame({"model": [0.0, 3.0, 1.0]}, index=["a", "b", "c"])  # no error bar for the baseline
    fig = plots.accuracy_bars(table, "bars that fill the axes", errors=errors)
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(overlaps(legend, bar.get_window_extent(renderer)) for bar in ax.patches)
    assert sorted(texts_in(fig)) == sorted(f"{v:.1f}" for v in table.to_numpy().flatten())
    caps = [line for container in ax.containers if isinstance(container, matplotlib.container.ErrorbarContainer)
            for line in container.lines[2]]
    assert caps, "the errors are drawn as error bars"


def test_lines_keep_their_legend_off_the_plot():
    table = pd.DataFrame({"up": [0.0, 50.0, 100.0], "down": [100.0, 50.0, 0.0]}, index=[1, 2, 4])
    fig = plots.lines(table, "t", "k", "%")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert not overlaps(ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))


def test_confusion_matrix_of_a_few_classes_keeps_the_percent_of_each_whole_row():
    confusion = np.array([[6, 2, 2], [0, 10, 0], [5, 0, 5]])
    fig = plots.confusion_matrix(confusion, ["a", "b", "c"], shown=[0, 2])
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, [[60, 20], [50, 50]])  # row a: 20% went to b, which is not drawn
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "c"]
