"""No exercise has its answer above it: in the student edition, nothing before an exercise gives its solution away.

For every exercise of the lessons, the cells of the student edition before it must not contain a line of its
solution (compared without whitespace, the assignment target and `return` left out, so `x = expr` above leaks
`return expr`), a sizeable piece of one (a call or an operation of its lines), nor a use or an import of the kit
function its check compares against. An open question's model answer (`reveal`) comes after every exercise of
the notebook, never right after the question.
"""
import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_student)

LESSONS = sorted(path for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if not path.name.startswith("00_"))

# check -> (module, function) pairs its reference is (or mirrors, for the checks that hold their own reference),
# and methods that compute the answer in one call (a `.tril()` above the causal-mask exercise is its answer)
REFERENCES = {
    "check_split": [("data", "split")],
    "check_causal_mask": [],
    "check_cosine_similarity": [("similarity", "cosine_similarity")],
    "check_similarity_matrix": [("similarity", "similarity_matrix"), ("similarity", "normalize")],
    "check_caption_probabilities": [],
    "check_clip_loss": [("losses", "clip_loss")],
    "check_loss_floor": [("losses", "loss_floor")],
    "check_train_step": [("train", "train_step"), ("step", "train_step")],
    "check_classifier": [("zeroshot", "build_classifier")],
    "check_top1": [("zeroshot", "scores")],
    "check_held_out_top1": [("zeroshot", "scores")],
    "check_k_shot": [("probe", "k_shot_indices")],
    "check_recall_at_k": [("retrieval", "recall_at_k")],
    "check_sigmoid_loss": [("siglip", "siglip_loss")],
    "check_naive_accumulated_loss": [("accumulation", "naive_accumulation_backward")],
    "check_modality_gap": [("geometry", "modality_gap")],
    "check_threshold": [("geometry", "best_threshold")],
}
# The notebooks' names for the training modules (05: `from clip_helpers.training import loop as train`).
MODULE_PATHS = {"train": "training.loop", "step": "training.step", "accumulation": "training.accumulation"}
METHODS = {"check_causal_mask": ["tril", "triu"], "check_caption_probabilities": ["softmax"]}
MIN_LINE = 12   # shorter lines (`return loss`, `n = len(x)`) say nothing about the answer
MIN_PIECE = 16  # a call or an operation inside a solution line, without whitespace


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def solution_region(source: str) -> str:
    return source.split(make_student.BEGIN)[1].split(make_student.END)[0]


def expression_of(line: str) -> str:
    """The line without `return` and without an assignment target: what it computes."""
    line = line.strip()
    line = re.sub(r"^return\b", "", line)
    line = re.sub(r"^[\w\s,.\[\]]+(?<![=!<>])=(?!=)", "", line)
    return line.strip()


def pieces(line: str) -> set:
    """Calls and operations inside the line (its sub-expressions), each as written, whitespace dropped."""
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:  # a line of a block (`if ...:`, `for ...:`): parse it with a body
        try:
            tree = ast.parse(line.strip() + "\n    pass")
        except SyntaxError:
            return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Call, ast.BinOp, ast.Compare, ast.Subscript)):
            text = squeezed(ast.unparse(node))
            if len(text) >= MIN_PIECE:
                found.add(text)
    return found


def answer_lines(source: str) -> list:
    """The solution's lines that say something: code lines over MIN_LINE characters, no comments, no docstrings."""
    lines = []
    for line in solution_region(source).splitlines():
        stripped = line.strip()
        if len(squeezed(stripped)) > MIN_LINE and not stripped.startswith(("#", '"""', "'''", "raise ")):
            lines.append(stripped)
    return lines


def python_of(source: str):
    """The cell's syntax tree, IPython magics left out; None if it is not Python."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def references_in(tree, references: list, methods: list) -> list:
    """Imports from the kit of the reference functions, their uses as module.function, and the answer's methods."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clip_helpers"):
            found += [f"import of {alias.name}" for alias in node.names
                      if any(alias.name == function for _, function in references)]
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in references:
                found.append(f"{node.value.id}.{node.attr}")
            elif node.attr in methods:
                found.append(f".{node.attr}(...)")
    return found


def exercises(notebook) -> list:
    """(index, cell, check name or None) of each solution cell; a code exercise's check is in the cell after it."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if make_student.is_nbgrader_solution(cell):
            check = None
            if cell.cell_type == "code":
                match = make_student.CHECK_CALL.search(notebook.cells[index + 1].source)
                check = match.group(1) if match else None
            found.append((index, cell, check))
    return found


def leaks(path: Path) -> list:
    """Every way the student edition of the notebook shows an exercise's answer before the exercise."""
    teacher = nbformat.read(path, as_version=4)
    student, _ = make_student.student_notebook(nbformat.read(path, as_version=4), path.name)
    found = []
    for index, cell, check in exercises(teacher):
        if cell.cell_type != "code":
            continue
        where = f"{path.name[:2]} before its exercise at cell {index + 1} ({check})"
        lines = answer_lines(cell.source)
        for before, earlier in enumerate(student.cells[:index]):
            text = squeezed(earlier.source)
            for line in lines:
                expression = squeezed(expression_of(line))
                if re.fullmatch(r"[\w,()]*", expression):  # `return a, b`: names computed elsewhere, no answer
                    continue
                if len(expression) > MIN_LINE and expression in text:
                    found.append(f"{where}: cell {before + 1} has the solution line {line!r}")
                    continue
                if before == index - 1 and earlier.cell_type == "markdown":
                    continue  # the task itself names the inputs (`model.encode_image(images)`); whole lines still count
                shown = sorted(piece for piece in pieces(expression_of(line)) if piece in text)
                if shown:
                    found.append(f"{where}: cell {before + 1} has {shown[0]!r} of the solution line {line!r}")
            tree = python_of(earlier.source) if earlier.cell_type == "code" else None
            if tree is not None:
                for use in references_in(tree, REFERENCES.get(check, []), METHODS.get(check, [])):
                    found.append(f"{where}: cell {before + 1} has {use}")
    return found


def reveal_problems(path: Path) -> list:
    notebook = nbformat.read(path, as_version=4)
    solutions = exercises(notebook)
    last = max(index + (1 if cell.cell_type == "code" else 0) for index, cell, _ in solutions)
    found = []
    for index, cell, _ in solutions:
        if cell.cell_type != "markdown":
            continue
        reveals = [i for i, other in enumerate(notebook.cells)
                   if other.cell_type == "code" and f'reveal("{path.name[:2]}")' in other.source]
        if not reveals:
            found.append(f"{path.name[:2]}: no reveal(\"{path.name[:2]}\") cell for the open question")
        for i in reveals:
            if i == index + 1:
                found.append(f"{path.name[:2]}: reveal() is the cell right after the open question (cell {index + 1})")
            elif i < last:
                found.append(f"{path.name[:2]}: reveal() (cell {i + 1}) comes before the last exercise's cell {last + 1}")
    return found


def test_every_check_of_the_course_has_its_reference_listed():
    """A new exercise cannot escape the leak test for want of an entry; every listed reference exists in the kit."""
    used = {check for path in LESSONS for _, _, check in exercises(nbformat.read(path, as_version=4)) if check}
    assert used <= set(REFERENCES), f"add {sorted(used - set(REFERENCES))} to REFERENCES"
    for check, references in REFERENCES.items():
        for module, function in references:
            assert hasattr(importlib.import_module(f"clip_helpers.{MODULE_PATHS.get(module, module)}"), function), (check, module, function)


def test_the_leak_finder_finds_an_answer_shown_above_its_exercise(tmp_path):
    """A synthetic notebook: the answer computed above the exercise, and the reference imported, are both found."""
    def code(source):
        return nbformat.v4.new_code_cell(source)

    exercise = code('def cosine(a, b):\n    """eq. 2"""\n    ### BEGIN SOLUTION\n'
                    '    return (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt())\n    ### END SOLUTION')
    exercise.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "x", "locked": False}
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [code("from clip_helpers.similarity import cosine_similarity"),
                      code("value = (a*b).sum() / ((a*a).sum().sqrt() * (b*b).sum().sqrt())"),
                      code("print((a * a).sum().sqrt())"), exercise,
                      code("check_cosine_similarity(cosine)")]
    synthetic = tmp_path / "03_x.ipynb"
    nbformat.write(notebook, synthetic)
    found = leaks(synthetic)
    assert any("cell 1 has import of cosine_similarity" in leak for leak in found)
    assert any("cell 2 has the solution line" in leak for leak in found)
    assert any("cell 3 has '(a*a).sum().sqrt()'" in leak for leak in found)
    notebook.cells = notebook.cells[3:]
    nbformat.write(notebook, synthetic)
    assert leaks(synthetic) == []


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.stem)
def test_no_exercise_has_its_answer_above_it(path):
    found = leaks(path)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", LESSONS, ids=lambda path: path.stem)
def test_the_model_answer_comes_after_every_exercise(path):
    found = reveal_problems(path)
    assert not found, "\n".join(found)
