"""The report's listing (clip_helpers.replication.report) runs, and its evaluateModel computes what we say it does."""
import copy

import clip
import pytest
import torch

from clip_helpers.training import evaluation
from clip_helpers.replication import report


class FixedLogits(torch.nn.Module):
    """Stands in for CLIP: model(images, texts) returns preset logits_per_image and their transpose."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, images, texts):
        return self.logits, self.logits.T


def test_evaluate_model_equals_a_hand_computation():
    # Batch of 3, images 0 and 1 of the same class: identical captions, tied columns 0 and 1.
    logits = torch.tensor([[5.0, 5.0, 0.0],
                           [5.0, 5.0, 0.0],
                           [1.0, 0.0, 3.0]])
    batch = (torch.zeros(3, 3, 2, 2), torch.zeros(3, 77, dtype=torch.long))
    # Image argmax per row: 0, 0 (first of the tie), 2 -> 2 right. The "text" half, argmax(logits.T, dim=0),
    # is the same per-row argmax again -> 2 right. (2 + 2) / 2 = 2 of 3 images.
    assert report.evaluateModel(FixedLogits(logits), [batch], "cpu") == pytest.approx(100 * 2 / 3)
    assert evaluation.inbatch_accuracy(logits) == 2.0  # the kit's column reproduces the report's number


def test_evaluate_model_counts_image_matches_twice_not_text_matches():
    # Rows: every image prefers caption 0. Columns: caption 1's best image is image 1.
    logits = torch.tensor([[4.0, 0.0], [3.0, 2.0]])
    batch = (torch.zeros(2, 3, 2, 2), torch.zeros(2, 77, dtype=torch.long))
    # A true text->image half would add 1 (caption 0 -> image 0, caption 1 -> image 1: 2 right); the listing gets 1.
    assert report.evaluateModel(FixedLogits(logits), [batch], "cpu") == pytest.approx(100 * 1 / 2)


def test_report_train_step_runs_and_lowers_the_loss_on_cpu(mini):
    model = copy.deepcopy(mini)
    optimizer = report.prepareModelAndOptimizer(model, "cpu")
    names = ["red circle", "blue square", "green star", "yellow heart"]
    batch = (torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             clip.tokenize([names[i % 4] for i in range(8)], context_length=model.context_length))
    losses = [report.trainStep(model, optimizer, batch, "cpu").item() for _ in range(4)]
    assert losses[-1] < losses[0]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 5e-5


@pytest.mark.filterwarnings("ignore:This DataLoader will create 8 worker processes")  # the report's num_workers=8, never started
def test_report_validation_rows_are_its_first_training_rows(tmp_path):
    pairs = [(str(tmp_path / f"{i}.jpg"), f"class{i % 3}") for i in range(100)]
    train_loader, val_loader = report.splitTrainValidation(pairs, preprocess=None)
    train_paths = set(train_loader.dataset.imagePaths)
    assert len(train_paths) == 30 and len(val_loader.dataset) == 3
    assert set(val_loader.dataset.imagePaths) <= train_paths  # the leak the kit's data.split fixes


def test_the_reports_bugs_are_one_table_that_notebook_05_shows_and_the_others_point_to():
    import nbformat
    from pathlib import Path
    from clip_helpers.training import loop as train
    table = report.bugs_table().splitlines()
    assert len(table) == 2 + len(report.REPORT_BUGS)
    assert all(row.count(" | ") == 2 and row.startswith("| ") and row.endswith(" |") for row in table[:1] + table[2:])
    root = Path(__file__).parents[1]
    notebook = nbformat.read(root / "notebooks" / "05_fine_tune.ipynb", as_version=4)
    shown = [cell.source for cell in notebook.cells if cell.cell_type == "code" and "report.bugs_table(" in cell.source]
    assert len(shown) == 2 and "RESULT_BUGS" in shown[0] and "ENGINEERING_BUGS" in shown[1]  # the appendix second
    for text in ((root / "README.md").read_text(), train.__doc__):
        assert "REPORT_BUGS" in text
    everywhere = "\n".join(cell.source for cell in notebook.cells) + (root / "README.md").read_text() + train.__doc__
    for report_does, _, _ in report.REPORT_BUGS:  # written out nowhere else
        assert report_does not in everywhere


def test_the_bugs_split_into_those_that_change_results_and_the_rest_with_none_lost_or_twice():
    assert report.REPORT_BUGS == report.RESULT_BUGS + report.ENGINEERING_BUGS
    assert len(set(report.REPORT_BUGS)) == len(report.REPORT_BUGS) and report.RESULT_BUGS and report.ENGINEERING_BUGS
    for bugs in (report.RESULT_BUGS, report.ENGINEERING_BUGS):
        table = report.bugs_table(bugs).splitlines()
        assert len(table) == 2 + len(bugs) and all(bug[0] in row for bug, row in zip(bugs, table[2:]))


def test_the_lines_notebook_05_quotes_as_in_the_report_are_the_transcriptions_lines():
    """05 quotes the listing's lines that change results instead of printing its source: each quoted line must be
    in clip_helpers.replication.report as it is, so the quote cannot drift from the transcription."""
    import inspect
    import nbformat
    from pathlib import Path
    notebook = nbformat.read(Path(__file__).parents[1] / "notebooks" / "05_fine_tune.ipynb", as_version=4)
    cell = next(cell.source for cell in notebook.cells if cell.source.startswith("## 1. The report's loop"))
    quoted = cell.split("```python")[1].split("```")[0]
    lines = [line.strip() for line in quoted.splitlines() if line.strip() and not line.strip().startswith("#")]
    transcription = {line.strip() for line in inspect.getsource(report).splitlines()}
    assert len(lines) >= 6 and [line for line in lines if line not in transcription] == []
    assert "inspect.getsource" not in "\n".join(c.source for c in notebook.cells)
