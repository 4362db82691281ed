"""tools/make_student.py: solutions out, helpful stubs in, outputs cleared, bad markers refused."""
import re
import textwrap
from pathlib import Path

import nbformat
import pytest
from conftest import load_tool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


make_student = load_tool("make_student")
run_notebooks = load_tool("run_notebooks")

PARAMETERS = 'out_dir = "outputs"\nseed = 0'
BEFORE = "import pathlib\npathlib.Path(out_dir, 'before.txt').write_text('ran')"
EXERCISE = ('import math\n\n\ndef cosine_similarity(a, b):\n    """Eq. 2 by hand."""\n    ### BEGIN SOLUTION\n'
            '    dot = sum(x * y for x, y in zip(a, b))\n    return dot / (math.hypot(*a) * math.hypot(*b))\n'
            '    ### END SOLUTION')
CHECK = "assert abs(cosine_similarity([1, 2], [2, 4]) - 1) < 1e-12  # check_cosine_similarity(cosine_similarity)"
AFTER = "pathlib.Path(out_dir, 'after.txt').write_text('ran')"
ANSWER = "Your answer:\n### BEGIN SOLUTION\nThe length cancels: only directions count.\n### END SOLUTION"
SOLUTION_LINES = ["dot = sum(x * y for x, y in zip(a, b))", "return dot / (math.hypot(*a) * math.hypot(*b))",
                  "The length cancels: only directions count."]


def synthetic(folder, name="01_exercise.ipynb", cells=None):
    """A notebook with a parameters cell, a cell before the exercise, the exercise, its check, and a cell after."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = cells or [nbformat.v4.new_code_cell(PARAMETERS), nbformat.v4.new_code_cell(BEFORE),
                               nbformat.v4.new_code_cell(EXERCISE), nbformat.v4.new_code_cell(CHECK),
                               nbformat.v4.new_markdown_cell(ANSWER), nbformat.v4.new_code_cell(AFTER)]
    notebook.cells[0].metadata["tags"] = ["parameters"]
    for cell in notebook.cells:  # as if executed: the student edition must not carry outputs
        if cell.cell_type == "code":
            cell.execution_count = 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="an output\n")]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / name)
    return folder / name


def student_text(path):
    return "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)


def stub_message(stub: str) -> str:
    """The message the stub raises, run as the student would run it."""
    with pytest.raises(NotImplementedError) as raised:
        exec(textwrap.dedent(stub), {})
    return str(raised.value)


def test_solutions_become_stubs_naming_the_exercise_and_its_check(tmp_path):
    synthetic(tmp_path / "notebooks")
    counts = make_student.make_student(tmp_path / "notebooks", tmp_path / "student")
    assert counts == {"01_exercise.ipynb": 2}
    notebook = nbformat.read(tmp_path / "student" / "01_exercise.ipynb", as_version=4)
    text = student_text(tmp_path / "student" / "01_exercise.ipynb")
    assert not [line for line in SOLUTION_LINES if line in text]
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    exercise = notebook.cells[2].source.split("\n")
    assert exercise[:5] == EXERCISE.split("\n")[:5]  # what comes before the marker stays, docstring included
    assert exercise[5] == "    raise NotImplementedError("
    assert stub_message("\n".join(exercise[5:])) == ("Exercise (01_exercise.ipynb, cell 3): write the body of "
                                                     "cosine_similarity() in place of this raise, then run "
                                                     "check_cosine_similarity(cosine_similarity) to test it.")
    assert max(map(len, exercise[5:])) <= 80  # fits a notebook cell: no line running off its right edge
    compile(notebook.cells[2].source, "stub", "exec")  # the stub is valid Python at the marker's indentation
    assert notebook.cells[4].source.startswith("Your answer:\nYOUR ANSWER HERE") and 'reveal("01")' in notebook.cells[4].source
    assert all(not cell.outputs and cell.execution_count is None for cell in notebook.cells if cell.cell_type == "code")
    assert notebook.cells[0].metadata["tags"] == ["parameters"]
    assert [cell.source for cell in notebook.cells[:2] + notebook.cells[3:4]] == [PARAMETERS, BEFORE, CHECK]


def test_a_cell_marked_as_solution_in_nbgrader_metadata_is_replaced_whole(tmp_path):
    cell = nbformat.v4.new_code_cell("answer = 42")
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "answer", "locked": False}
    synthetic(tmp_path / "notebooks", cells=[nbformat.v4.new_code_cell(PARAMETERS), cell])
    make_student.make_student(tmp_path / "notebooks", tmp_path / "student")
    text = student_text(tmp_path / "student" / "01_exercise.ipynb")
    assert text.startswith(PARAMETERS + "\nraise NotImplementedError(\n")
    assert stub_message(text[len(PARAMETERS) + 1:]) == ("Exercise (01_exercise.ipynb, cell 2): write the code of this "
                                                       "exercise in place of this raise.")


@pytest.mark.parametrize("source, problem", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1", "has no '### END SOLUTION' after it"),
    ("x = 1\n### END SOLUTION", "without a '### BEGIN SOLUTION' before it"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION", "cannot nest"),
    ("## BEGIN SOLUTION\nx = 1\n## END SOLUTION", "looks like a solution marker"),
    ("#### begin solution\nx = 1\n### END SOLUTION", "looks like a solution marker"),
])
def test_unbalanced_or_misspelt_markers_are_refused_naming_notebook_and_cell(tmp_path, source, problem, capsys):
    synthetic(tmp_path / "notebooks", cells=[nbformat.v4.new_code_cell(PARAMETERS), nbformat.v4.new_code_cell("x = 0"),
                                             nbformat.v4.new_code_cell(source)])
    synthetic(tmp_path / "notebooks", name="00_fine.ipynb")
    assert make_student.main(["--notebooks", str(tmp_path / "notebooks"), "--out", str(tmp_path / "student")]) == 1
    error = capsys.readouterr().err
    assert "01_exercise.ipynb: cell 3 (code, starting" in error and problem in error
    assert not (tmp_path / "student").exists()  # nothing written, not even the notebook that was fine


def test_refuses_to_write_over_the_instructor_edition(tmp_path):
    path = synthetic(tmp_path / "notebooks")
    before = path.read_text()
    with pytest.raises(ValueError, match="would delete the solutions"):
        make_student.make_student(tmp_path / "notebooks", tmp_path / "notebooks" / ".")
    assert path.read_text() == before


def test_the_courses_student_edition_keeps_no_solution_line(tmp_path):
    """Every line inside a solution region of notebooks/ is gone from the student edition's cell."""
    counts = make_student.make_student(ROOT / "notebooks", tmp_path)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        teacher = nbformat.read(path, as_version=4)
        student = nbformat.read(tmp_path / path.name, as_version=4)
        assert len(student.cells) == len(teacher.cells)
        regions = 0
        for ours, theirs in zip(teacher.cells, student.cells):
            inside = False
            for line in ours.source.split("\n"):
                if line.strip() in (make_student.BEGIN, make_student.END):
                    inside, regions = line.strip() == make_student.BEGIN, regions + (line.strip() == make_student.BEGIN)
                elif inside and line.strip():
                    assert line.strip() not in theirs.source, f"{path.name} leaks {line.strip()!r}"
            assert "BEGIN SOLUTION" not in theirs.source and "END SOLUTION" not in theirs.source
            if theirs.cell_type == "code":
                assert not theirs.outputs and theirs.execution_count is None
        assert counts[path.name] == regions


@pytest.mark.slow
def test_the_student_edition_runs_up_to_the_first_exercise_and_stops_there(tmp_path):
    run_notebooks.use_this_python_kernel()
    teacher = synthetic(tmp_path / "notebooks")
    make_student.make_student(tmp_path / "notebooks", tmp_path / "student")

    out = tmp_path / "teacher_run"
    out.mkdir()
    seconds, failure = run_notebooks.run_one(teacher, out, {"out_dir": str(out)}, progress=False)
    assert failure is None  # the instructor edition, markers and all, runs top to bottom
    assert (out / "after.txt").is_file()

    out = tmp_path / "student_run"
    out.mkdir()
    seconds, failure = run_notebooks.run_one(tmp_path / "student" / "01_exercise.ipynb", out, {"out_dir": str(out)},
                                             progress=False)
    assert failure is not None and "NotImplementedError: Exercise (01_exercise.ipynb, cell 3)" in failure
    assert "cosine_similarity" in failure and "check_cosine_similarity(cosine_similarity)" in failure
    assert "starting 'assert abs(cosine_similarity(" in failure  # where the exercise is first used: its check
    assert (out / "before.txt").is_file() and not (out / "after.txt").exists()


# ---------------------------------------------------------------- the course's own notebooks

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LESSONS = [path for path in NOTEBOOKS if not path.name.startswith("00_")]  # 00_start_here is front matter: no exercises


def solution_cells(notebook) -> list:
    return [(index, cell) for index, cell in enumerate(notebook.cells) if make_student.is_nbgrader_solution(cell)]


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.stem)
def test_every_notebook_has_two_to_four_exercises_each_ending_in_its_check(path):
    from clip_helpers.checks import answers

    notebook = nbformat.read(path, as_version=4)
    solutions = solution_cells(notebook)
    assert 2 <= len(solutions) <= 4
    for index, cell in solutions:
        # nbgrader's v3 schema: code is autograded by the locked test cell after it, a written answer by hand
        graded = {"grade": True, "points": 2} if cell.cell_type == "markdown" else {"grade": False}
        assert cell.metadata["nbgrader"] == {"solution": True, "locked": False, **graded,
                                             "grade_id": cell.metadata["nbgrader"]["grade_id"], "schema_version": 3}
        assert make_student.BEGIN in cell.source and make_student.END in cell.source
        assert notebook.cells[index - 1].cell_type == "markdown"  # the task, stated before the code
        follow = notebook.cells[index + 1].source
        if cell.cell_type == "code":
            name = make_student.exercise_name(cell.source.split("\n"), cell.source.split("\n").index(
                next(line for line in cell.source.split("\n") if line.strip() == make_student.BEGIN)))
            assert re.search(rf"\bcheck_\w+\({name}\)", follow), f"cell {index + 1}: no check of {name} after it"
        else:  # the open question: the model answer in the markdown solution is the one reveal() prints
            answer = cell.source.split(make_student.BEGIN)[1].split(make_student.END)[0]
            assert " ".join(answer.split()) == " ".join(answers.ANSWERS[path.name[:2]][1].split())
            # reveal() comes later, after every exercise (tests/test_exercise_leaks.py says where)
            assert any(f'reveal("{path.name[:2]}")' in later.source for later in notebook.cells[index + 2:])
    assert sum(cell.cell_type == "code" for _, cell in solutions) >= 1  # at least one exercise writes code
    assert sum(cell.cell_type == "markdown" for _, cell in solutions) == 1  # one open question


def test_grade_ids_are_unique_across_the_course():
    ids = [cell.metadata["nbgrader"]["grade_id"] for path in NOTEBOOKS
           for _, cell in solution_cells(nbformat.read(path, as_version=4))]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_ends_with_a_summary_naming_the_report(path):
    last = nbformat.read(path, as_version=4).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Summary")
    assert "**In the report:**" in last.source and "section" in last.source


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_data", "03_cosine_similarity"])
def test_the_student_edition_of_the_course_stops_at_its_first_exercise(name, tmp_path):
    """The real notebook's student edition runs in the smoke profile up to its first check, and fails there with
    the stub's message; the cells before it ran (their figures exist)."""
    run_notebooks.use_this_python_kernel()
    student = tmp_path / "student"
    make_student.make_student(ROOT / "notebooks", student)
    text = student_text(student / f"{name}.ipynb")
    teacher = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    for _, cell in solution_cells(teacher):  # no line of any solution is left
        region = cell.source.split(make_student.BEGIN)[1].split(make_student.END)[0]
        assert not [line for line in region.splitlines() if len(line.strip()) > 8 and line.strip() in text]

    out = tmp_path / "run"
    parameters = dict(profile="smoke", data_dir=str(tmp_path / "data"), out_dir=str(out), interactive=False)
    seconds, failure = run_notebooks.run_one(student / f"{name}.ipynb", out, parameters, progress=False)
    first_index, first = solution_cells(teacher)[0]
    exercise = re.search(r"def (\w+)", first.source).group(1)
    assert failure is not None, "the student edition ran past its first exercise"
    assert f"starting {teacher.cells[first_index + 1].source.splitlines()[0]!r}" in failure  # the exercise's check
    assert "ExerciseFailed" in failure and "not written yet" in failure
    assert f"Exercise ({name}.ipynb, cell {first_index + 1}): write the body of {exercise}()" in failure
    # papermill adds cells (its parameters, error banners): find the check in the executed copy by its source
    executed = [cell for cell in nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4).cells
                if cell.cell_type == "code"]
    check = next(i for i, cell in enumerate(executed) if cell.source == teacher.cells[first_index + 1].source)
    assert all(cell.execution_count is not None for cell in executed[:check + 1])  # all before it ran, then it
    assert all(cell.execution_count is None for cell in executed[check + 1:])  # nothing after it
    assert not (out / "metrics" / f"{name}.json").exists()  # the last cell never ran


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_check_passes_on_the_notebooks_reference_solution(path, capsys):
    """Each exercise cell of the instructor edition, run with its check cell alone (torch as the notebook's first
    cells import it): the check says Correct. The smoke run of test_notebooks runs them in place, slower."""
    import torch

    notebook = nbformat.read(path, as_version=4)
    for index, cell in solution_cells(notebook):
        if cell.cell_type != "code":
            continue
        namespace = {"torch": torch}
        exec(compile(cell.source, f"{path.name} cell {index + 1}", "exec"), namespace)
        capsys.readouterr()
        exec(compile(notebook.cells[index + 1].source, f"{path.name} cell {index + 2}", "exec"), namespace)
        assert capsys.readouterr().out.startswith("Correct:"), f"{path.name} cell {index + 1}"
