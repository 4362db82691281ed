"""The course under nbgrader: its metadata validates, nbgrader's release stubs the same cells as make student,
and a real round trip (generate_assignment, autograde, generate_feedback) grades three students right."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.preprocessors import CheckCellMetadata, ClearSolutions, LockCells

from clip_helpers.course import SHARED_DATA
from clip_helpers.files import save_atomically
from clip_helpers.profiles import PROFILES
from clip_helpers.training.recipes import RECIPES, mini_clip_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_student  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The lessons, each with exercises (00_start_here is front matter, with none).
LESSONS = [path for path in NOTEBOOKS if any("nbgrader" in cell.metadata
                                                for cell in nbformat.read(path, as_version=4).cells)]


def nbgrader_of(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_validates_under_nbgraders_schema(path):
    """What generate_assignment's CheckCellMetadata runs: the v3 JSON schema, points on grade cells, markdown
    answers both solution and grade, unique grade ids."""
    notebook = nbformat.read(path, as_version=4)
    MetadataValidator().validate_nb(notebook)
    CheckCellMetadata().preprocess(notebook, {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_check_is_a_locked_pointed_test_and_every_answer_a_manually_graded_cell(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        meta = nbgrader_of(cell)
        if cell.cell_type == "code" and make_student.CHECK_CALL.search(cell.source) and "import check_" in cell.source:
            assert meta.get("grade") and meta.get("locked") and not meta.get("solution"), f"cell {index + 1}"
            assert meta["points"] > 0
            assert nbgrader_of(notebook.cells[index - 1]).get("solution"), "a test cell follows its exercise"
        elif meta.get("solution") and cell.cell_type == "markdown":
            assert meta["grade"] and meta["points"] > 0 and not meta["locked"], f"cell {index + 1}"
        elif meta.get("solution"):  # an exercise's code: autograded through the test after it, no points itself
            assert not meta["grade"] and not meta["locked"], f"cell {index + 1}"


def nbgrader_release(notebook):
    """What generate_assignment does to the cells' sources (without its database)."""
    notebook, _ = LockCells().preprocess(notebook, {})
    notebook, _ = ClearSolutions().preprocess(notebook, {"language": "python"})
    return notebook


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.stem)
def test_make_student_and_nbgraders_release_stub_the_same_cells(path):
    teacher = nbformat.read(path, as_version=4)
    released = nbgrader_release(nbformat.read(path, as_version=4))
    student, _ = make_student.student_notebook(nbformat.read(path, as_version=4), path.name)
    by_nbgrader = {i for i, (a, b) in enumerate(zip(teacher.cells, released.cells)) if a.source != b.source}
    by_make_student = {i for i, (a, b) in enumerate(zip(teacher.cells, student.cells)) if a.source != b.source}
    assert by_nbgrader == by_make_student and by_nbgrader
    for index in by_nbgrader:  # both leave what is outside the solution region as it was
        outside = teacher.cells[index].source.split(make_student.BEGIN)[0]
        assert released.cells[index].source.startswith(outside.rstrip())
        assert student.cells[index].source.startswith(outside.rstrip())


# ---------------------------------------------------------------- the round trip, with nbgrader itself

ASSIGNMENT = "cosine"


def excerpt(path) -> nbformat.NotebookNode:
    """The exercises of one notebook as an assignment: its parameters (the smoke profile), its start and its model
    load as a notebook has them, then each task, its solution and its check, and the open question."""
    teacher = nbformat.read(path, as_version=4)
    parameters = next(cell for cell in teacher.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = parameters.source.replace('profile = "auto"', 'profile = "smoke"')
    assert 'profile = "smoke"' in parameters.source and 'data_dir = "data"' in parameters.source
    start = next(cell for cell in teacher.cells if "course.start(" in cell.source)
    cells = [parameters, start, next(cell for cell in teacher.cells if "lesson.load_model()" in cell.source)]
    for index, cell in enumerate(teacher.cells):
        if nbgrader_of(cell).get("solution"):
            cells += [teacher.cells[index - 1], cell] + ([teacher.cells[index + 1]] if cell.cell_type == "code" else [])
    return nbformat.v4.new_notebook(cells=cells, metadata=teacher.metadata)


def nbgrader(course, *args, **variables):
    # nbgrader calls the `alembic` command of its own environment to set up the gradebook
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **variables}
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def submit(course, student, notebook):
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / "exercises.ipynb")
    (folder / "timestamp.txt").write_text("2026-01-01 00:00:00.000000 UTC")


def answered(released, teacher, wrong=None):
    """The released notebook with the instructor's solutions typed in; `wrong` replaces one exercise's code."""
    notebook = nbformat.from_dict(released)
    for cell, source in zip(notebook.cells, teacher.cells):
        if nbgrader_of(cell).get("solution"):
            cell.source = source.source
    if wrong:
        grade_id, source = wrong
        next(cell for cell in notebook.cells if nbgrader_of(cell).get("grade_id") == grade_id).source = source
    return notebook


COSINE_WITHOUT_B = "def cosine(a, b):\n    return (a * b).sum() / (a * a).sum().sqrt()"


def prebuilt_data_folder(folder: Path, model) -> Path:
    """A grader's data folder whose cache already holds the smoke profile's mini-CLIP: `model`'s (random) weights,
    where train_mini_clip looks for them. Training it would take minutes of a loaded CPU, and a submission that
    trained instead of loading would write other weights over these."""
    path = mini_clip_path(RECIPES[PROFILES["smoke"].mini_recipe], folder / "weights")
    path.parent.mkdir(parents=True)
    save_atomically(model.state_dict(), path)
    pd.DataFrame({"epoch": [1], "train_loss": [4.0]}).to_csv(path.with_suffix(".csv"), index=False)
    return folder


@pytest.mark.slow
def test_nbgrader_grades_a_correct_a_wrong_and_a_blank_submission(tmp_path, mini):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text((ROOT / "nbgrader_config.py").read_text())
    teacher = excerpt(ROOT / "notebooks" / "03_cosine_similarity.ipynb")
    nbformat.write(teacher, course / "source" / ASSIGNMENT / "exercises.ipynb")
    (course / "source" / ASSIGNMENT / "data").mkdir()  # a cache a run of the notebook left: not released
    (course / "source" / ASSIGNMENT / "data" / "mini.pt").write_bytes(b"weights")

    nbgrader(course, "generate_assignment", ASSIGNMENT, "--create")
    release = course / "release" / ASSIGNMENT
    assert sorted(p.name for p in release.iterdir()) == ["exercises.ipynb"]
    released = nbformat.read(release / "exercises.ipynb", as_version=4)
    submit(course, "correct", answered(released, teacher))
    submit(course, "wrong", answered(released, teacher, wrong=("ex03-cosine", COSINE_WITHOUT_B)))
    submit(course, "blank", released)
    for student in ("correct", "wrong", "blank"):
        nbgrader(course, "db", "student", "add", student)
    # the grader's one data folder, its cache built once (README): no submission may train a mini-CLIP of its own
    shared = prebuilt_data_folder(tmp_path / "course-data", mini)
    cache = {path: path.read_bytes() for path in shared.rglob("*") if path.is_file()}
    nbgrader(course, "autograde", ASSIGNMENT, **{SHARED_DATA: str(shared)})
    assert {path: path.read_bytes() for path in shared.rglob("*") if path.is_file()} == cache
    for student in ("correct", "wrong", "blank"):
        graded = course / "autograded" / student / ASSIGNMENT
        assert not (graded / "data").exists()
        start = next(cell for cell in nbformat.read(graded / "exercises.ipynb", as_version=4).cells
                     if "course.start(" in cell.source)
        assert f"data folder: {shared} (from {SHARED_DATA})" in "".join(out.get("text", "") for out in start.outputs)
    nbgrader(course, "generate_feedback", ASSIGNMENT)

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        assert gradebook.find_assignment(ASSIGNMENT).max_score == 4  # two checks of 1 point, one answer of 2
        scores = {student: {grade.name: (grade.auto_score, grade.needs_manual_grade)
                            for grade in gradebook.find_submission_notebook("exercises", ASSIGNMENT, student).grades}
                  for student in ("correct", "wrong", "blank")}
    assert scores["correct"] == {"ex03-cosine-check": (1, False), "ex03-cosine-matrix-check": (1, False),
                                 "ex03-open-question": (None, True)}  # the written answer waits for the instructor
    assert scores["wrong"] == {"ex03-cosine-check": (0, False), "ex03-cosine-matrix-check": (1, False),
                               "ex03-open-question": (None, True)}
    assert scores["blank"] == {"ex03-cosine-check": (0, False), "ex03-cosine-matrix-check": (0, False),
                               "ex03-open-question": (0, False)}  # an untouched answer scores 0 with no grading
    feedback = (course / "feedback" / "wrong" / ASSIGNMENT / "exercises.html").read_text()
    assert "Not yet:" in feedback or "ExerciseFailed" in feedback  # the student sees the check's hint
