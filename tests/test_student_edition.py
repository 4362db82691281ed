"""tools/make_student.py: solutions out, helpful stubs in, outputs cleared, bad markers refused."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert exercise[5] == ("    raise NotImplementedError('Exercise (01_exercise.ipynb, cell 3): write the body of "
                           "cosine_similarity() in place of this line, then run "
                           "check_cosine_similarity(cosine_similarity) to test it.')")
    assert len(exercise) == 6
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
    assert student_text(tmp_path / "student" / "01_exercise.ipynb") == (
        PARAMETERS + "\nraise NotImplementedError('Exercise (01_exercise.ipynb, cell 2): write the code of this "
                     "exercise in place of this line.')")


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
