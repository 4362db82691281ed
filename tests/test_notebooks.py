"""Every notebook runs top to bottom in the smoke profile and writes its figures; committed notebooks are clean."""
import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)

EXPECTED_FIGURES = {
    "00_start_here": [],  # front matter: reading only
    "01_data": ["01_examples_scikit-image", "01_shapes_held_out_pairs", "01_shapes_examples"],
    "02_encoders": ["02_convolution", "02_vit_patches", "02_causal_mask"],
    "03_cosine_similarity": ["03_similarity_matrix", "03_temperature"],
    "04_contrastive_loss": ["04_logits", "04_loss_vs_batch_size", "04_targets_plain", "04_targets_multi_positive"],
    "05_fine_tune": ["05_fig10_training_curves"],
    "06_similarity_matrix": ["06_similarity_matrix", "06_softmax_per_image"],
    "07_zero_shot": ["07_prompt_ensembling", "07_playground", "07_confusion_matrix", "07_per_class_accuracy"],
    "08_mini_clip": ["08_mini_clip_training", "08_seen_vs_held_out", "08_held_out_over_seeds"],
    "09_linear_probe": ["09_k_shot_curve", "09_probe_vs_zero_shot"],
    "10_retrieval_and_applications": ["10_recall_at_k", "10_gallery", "10_scene", "10_fig13_actions"],
    "11_when_training_goes_wrong": ["11_flat_loss", "11_logit_scale_drift", "11_clip_vs_siglip"],
    "12_inside_the_embedding_space": ["12_modality_gap", "12_gap_vs_temperature", "12_similarity_histogram",
                                      "12_saliency"],
}


def test_the_course_has_its_notebooks_in_order():
    assert [path.stem for path in NOTEBOOKS] == list(EXPECTED_FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_is_clean_and_parameterised(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "clear outputs before committing"
    # tools/add_open_in_cells.py's badges on top and its install cell first of the code; then the lesson's cells.
    assert "open-in-badges" in notebook.cells[0].metadata.get("tags", [])
    assert "install-kit" in code[0].metadata.get("tags", [])
    cells = [cell for cell in notebook.cells if not {"open-in-badges", "install-kit"} & set(cell.metadata.get("tags", []))]
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0] is cells[1]
    for name in ("profile", "data_dir", "out_dir", "seed"):
        assert f"\n{name} = " in "\n" + parameters[0].source
    assert "course.start(" in cells[2].source  # the cell after the parameters says which profile ran
    assert notebook.metadata.kernelspec.name == "python3"


def test_the_front_matter_plans_every_notebook_in_order_and_types_in_no_time():
    notebook = nbformat.read(ROOT / "notebooks" / "00_start_here.ipynb", as_version=4)
    table = next(cell.source for cell in notebook.cells if cell.source.startswith("## 3. The notebooks"))
    rows = re.findall(r"^\| \[(\d\d_\w+)\]\(\1\.ipynb\) \|", table, flags=re.MULTILINE)
    assert rows == [path.stem for path in NOTEBOOKS]
    assert not re.search(r"\d+ (min|minutes|hours)\b", table)  # times are printed by the next cell, not typed
    code = next(cell.source for cell in notebook.cells if "course.notebook_content(" in cell.source)
    assert "course.class_minutes(" in code and "course.run_times(" in code


def write_lesson(path, cells):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
                      for kind, source in cells]
    notebook.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, path)


def test_class_time_counts_prose_code_exercises_and_questions_but_no_solution_or_boilerplate(tmp_path):
    from clip_helpers import course
    path = tmp_path / "01_x.ipynb"
    write_lesson(path, [
        ("md", "# One two three"),
        ("code", 'profile = "auto"\ndata_dir = "data"'),   # the parameters: boilerplate
        ("code", "import torch\n\n# a comment\nx = torch.ones(2)"),
        ("md", "### Exercise 01.1: the mask\nWrite it."),
        ("code", "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
        ("md", "### Exercise 01.2: an open question\nWhy?"),
        ("md", "**Your answer:**\n### BEGIN SOLUTION\nmany words that the class does not read\n### END SOLUTION"),
    ])
    content = course.notebook_content(path)
    # by hand: "One two three" 3, "Exercise 01 1 the mask Write it" 7 (\w+ splits 01.1), "Exercise 01 2 an open
    # question Why" 7, "Your answer" 2; code: import and x = (the comment and blank line not), and "def f():"
    assert content == dict(words=3 + 7 + 7 + 2, code_lines=2 + 1, exercises=1, open_questions=1)
    pace = dict(words_per_minute=10, code_lines_per_minute=2, minutes_per_exercise=7, minutes_per_open_question=3)
    assert course.class_minutes(content, pace) == pytest.approx(19 / 10 + 3 / 2 + 7 + 3)


def test_the_runner_records_each_notebooks_latest_time_and_00_reads_it(tmp_path):
    from clip_helpers import course
    assert course.run_times(tmp_path) == {}
    run_notebooks.record_time(tmp_path, Path("01_data.ipynb"), "offline", 12.34)
    run_notebooks.record_time(tmp_path, Path("02_encoders.ipynb"), "offline", 50.0)
    run_notebooks.record_time(tmp_path, Path("01_data.ipynb"), "smoke", 3.0)  # a later run replaces the earlier
    times = course.run_times(tmp_path)
    assert {name: (entry["profile"], entry["seconds"]) for name, entry in times.items()} == {
        "01_data": ("smoke", 3.0), "02_encoders": ("offline", 50.0)}
    assert all(entry["cpus"] >= 1 and entry["load_1min"] >= 0 and entry["finished"].endswith("+00:00")
               for entry in times.values())
    (tmp_path / "run_times.json").write_text("{not json")  # a damaged record is started again, not a crash
    run_notebooks.record_time(tmp_path, Path("03_x.ipynb"), "offline", 1.0)
    assert list(course.run_times(tmp_path)) == ["03_x"]


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    """One data folder for all notebooks, so the smoke mini-CLIP is trained once (seconds) and then loaded."""
    run_notebooks.use_this_python_kernel()
    return tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("outputs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_in_the_smoke_profile(path, smoke_dirs):
    data_dir, out_dir = smoke_dirs
    parameters = dict(profile="smoke", data_dir=str(data_dir), out_dir=str(out_dir), interactive=False)
    seconds, failure = run_notebooks.run_one(path, out_dir, parameters, progress=False)
    assert failure is None, f"{path.name} failed at {failure}"
    missing = [name for name in EXPECTED_FIGURES[path.stem] if not (out_dir / "figures" / f"{name}.png").is_file()]
    assert not missing, f"{path.name} did not write {missing}"
    record = json.loads((out_dir / "metrics" / f"{path.stem}.json").read_text())
    assert record["profile"] == "smoke" and record["key"]
    assert not (data_dir / "weights" / "ViT-B-32.pt").exists()  # smoke never downloads


def write_notebook(path, *sources):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, path)


@pytest.mark.slow
def test_run_notebooks_summarises_and_names_the_failing_notebook_and_cell(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    parameters = 'profile = "auto"\nprofile_reason = ""\nout_dir = "outputs"\ndata_dir = "data"'
    start = ("from clip_helpers import course\nlesson = course.start('01_ok', profile, profile_reason=profile_reason, "
             "data_dir=data_dir, out_dir=out_dir, interactive=False)")  # the runner checks the profile it prints
    write_notebook(folder / "01_ok.ipynb", parameters, start,
                   "import json, pathlib\nmetrics = pathlib.Path(out_dir) / 'metrics'\nmetrics.mkdir(parents=True)\n"
                   "(metrics / '01_ok.json').write_text(json.dumps({'key': 'answer', 'value': 42}))")
    write_notebook(folder / "02_bad.ipynb", parameters, "x = 1", "raise ValueError('broken on purpose')")
    out = tmp_path / "out"
    status = run_notebooks.main(["--profile", "smoke", "--notebooks", str(folder), "--out", str(out),
                                 "--data-dir", str(tmp_path / "data"), "--no-progress"])
    captured = capsys.readouterr()
    assert status == 1
    assert "02_bad.ipynb: cell [" in captured.err
    assert "starting \"raise ValueError('broken on purpose')\"" in captured.err
    assert "01_ok" not in captured.err
    summary = captured.out.split("notebook", 1)[-1]
    assert "01_ok" in summary and "answer = 42" in summary and "02_bad" in summary and "FAILED" in summary
    assert (out / "notebooks" / "01_ok.ipynb").is_file()
    assert list(json.loads((out / "run_times.json").read_text())) == ["01_ok"]  # a failed notebook has no time
