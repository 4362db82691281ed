"""The lessons' offline examples (sources.shared_word_examples) and the report's in-batch score on the report's own
batches (evaluation.report_val_loader, report_inbatch_scores), which notebooks 03-06 show."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from clip_helpers import plots
from clip_helpers.losses import inbatch_ceiling
from clip_helpers.sources import open_source, shared_word_examples
from clip_helpers.training import evaluation


def test_shared_word_examples_are_the_grid_row_by_row_drawn_as_the_world_draws_them():
    images, labels, class_names = shared_word_examples(["red", "orange"], ["square", "cross"], seed=1)
    assert [class_names[label] for label in labels] == ["red square", "red cross", "orange square", "orange cross"]
    assert len(class_names) == 36 and len(images) == 4
    # the same pixels as the source's first drawing of each pair with that seed: nothing picked
    drawn = open_source("shapes", "test", n_per_class=1, seed=1).dataset
    for image, label in zip(images, labels):
        assert np.array_equal(np.asarray(image), np.asarray(drawn[drawn.targets.index(label)][0]))


@pytest.mark.parametrize("colours, shapes", [(["red"], ["octagon"]), (["red", "red"], ["square"])])
def test_shared_word_examples_refuse_unknown_or_repeated_pairs(colours, shapes):
    with pytest.raises(ValueError, match="not distinct shapes classes"):
        shared_word_examples(colours, shapes)


def test_the_report_batches_are_one_fixed_shuffle_read_in_order_eight_at_a_time():
    dataset = TensorDataset(torch.arange(20).float(), torch.arange(20) % 5)
    first, again = (list(evaluation.report_val_loader(dataset, seed=3)) for _ in range(2))
    assert [len(labels) for _, labels in first] == [8, 8, 4]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # the same batches every epoch
    order = torch.cat([items for items, _ in first])
    assert sorted(order.tolist()) == list(range(20)) and order.tolist() != list(range(20))


def test_report_inbatch_scores_are_validation_scores_on_the_report_batches(mini):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 6   # 6 classes in batches of 8: repeats are certain
    dataset = TensorDataset(torch.randn(24, 3, 32, 32, generator=generator), labels)
    class_names = ["red circle", "blue square", "green star", "yellow heart", "purple cross", "orange triangle"]
    scores = evaluation.report_inbatch_scores(dataset, class_names, ["a {}."], seed=1, amp=None)(mini.eval())
    assert set(scores) == {"report_inbatch_acc", "report_inbatch_max"}
    ceiling = 100 * sum(inbatch_ceiling(batch) * len(batch) for _, batch in evaluation.report_val_loader(dataset, seed=1)) / 24
    assert scores["report_inbatch_max"] == pytest.approx(ceiling)
    assert 0 <= scores["report_inbatch_acc"] <= scores["report_inbatch_max"] < 100


def test_training_curves_draw_the_report_batches_score_and_its_ceiling():
    history = pd.DataFrame({"epoch": [0, 1], "val_top1": [50.0, 80.0], "report_inbatch_acc": [75.0, 90.0],
                            "report_inbatch_max": [92.0, 92.0]})
    labels = [line.get_label() for line in plots.training_curves(history).axes[1].lines]
    assert labels == ["top-1 over all classes (kit)", "in-batch matching, the report's batches",
                      "ceiling on the report's batches (repeated classes)"]
