"""Make the student edition of the course: the notebooks with their solutions replaced by stubs.

    python tools/make_student.py [--notebooks notebooks] [--out outputs/student]

The markers and cell metadata are nbgrader's: `nbgrader generate_assignment` stubs the same cells (README,
"nbgrader"; tests/test_nbgrader.py). In a code
cell the lines from `### BEGIN SOLUTION` to `### END SOLUTION` become, at the marker's indentation,
`raise NotImplementedError("...")` with a message naming the exercise and the check to run. In a markdown cell
the same two lines delimit a written answer, which becomes a placeholder. As in nbgrader, a cell marked as a
solution in its nbgrader metadata but without markers is replaced whole. Outputs and execution counts are
cleared. Unbalanced, nested or misspelt markers stop everything before any file is written.

A notebook in --out that differs from what make_student last wrote there (a student's answers) is never written
over: it stops everything before any file is written, naming the notebooks, unless --force.
"""
import argparse
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from clip_helpers.files import sha256_of, write_text_atomically  # noqa: E402  (after the project is on the path)

RECORD = ".make_student.json"  # beside the notebooks: the sha256 of each one as make_student last wrote it
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TEXT_STUB = ("YOUR ANSWER HERE. *(Write your answer in this cell. Once you have tried, `reveal(\"{number}\")` from "
             "`clip_helpers.checks` shows a model answer.)*")
CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(([^()]*)\)")


class MarkerError(ValueError):
    """The solution markers of a cell do not pair up; the message names the notebook and the cell."""


class EditedNotebooks(ValueError):
    """Notebooks in the output folder differ from what make_student wrote there: the message names them."""


def marker_of(line: str) -> str | None:
    """BEGIN, END or None; a line that looks like a marker but is not exactly one is refused, never leaked."""
    stripped = line.strip()
    if stripped in (BEGIN, END):
        return stripped
    if re.search(r"(BEGIN|END)\s*SOLUTION", stripped, re.IGNORECASE):
        raise MarkerError(f"the line {stripped!r} looks like a solution marker but is not exactly {BEGIN!r} or "
                          f"{END!r}; fix its spelling so the solution is not left in the student edition")
    return None


def exercise_name(lines: list, index: int) -> str | None:
    """The function being written: the nearest `def` above the marker and less indented than it."""
    indent = len(lines[index]) - len(lines[index].lstrip())
    for line in reversed(lines[:index]):
        match = re.match(r"(\s*)(?:async\s+)?def\s+(\w+)", line)
        if match and len(match.group(1)) < indent:
            return match.group(2)
    return None


STUB_WIDTH = 72  # the message's pieces, so that the stub fits a notebook cell's width without scrolling


def code_stub(exercise: str | None, check: str | None, where: str) -> str:
    """A raise whose message, split over lines, names the exercise, where it is and the check to run."""
    task = f"write the body of {exercise}()" if exercise else "write the code of this exercise"
    then = f", then run {check} to test it" if check else ""
    message = f"Exercise ({where}): {task} in place of this raise{then}."
    pieces = textwrap.wrap(message, STUB_WIDTH, drop_whitespace=False, break_long_words=False)
    return "raise NotImplementedError(\n" + "".join(f"    {piece!r}\n" for piece in pieces) + ")"


def strip_solutions(source: str, cell_type: str, stub) -> tuple:
    """(source with every solution region replaced, number of regions); MarkerError if they do not pair up."""
    lines, kept, begun = source.split("\n"), [], None
    regions = 0
    for index, line in enumerate(lines):
        marker = marker_of(line)
        if marker == BEGIN:
            if begun is not None:
                raise MarkerError(f"a second {BEGIN!r} (line {index + 1}) before the {END!r} of the one on line "
                                  f"{begun + 1}; solution regions cannot nest")
            begun, regions = index, regions + 1
            indent = line[:len(line) - len(line.lstrip())]
            replacement = stub(exercise_name(lines, index)) if cell_type == "code" else stub(None)
            kept.extend(indent + stub_line for stub_line in replacement.split("\n"))
        elif marker == END:
            if begun is None:
                raise MarkerError(f"{END!r} on line {index + 1} without a {BEGIN!r} before it")
            begun = None
        elif begun is None:
            kept.append(line)
    if begun is not None:
        raise MarkerError(f"{BEGIN!r} on line {begun + 1} has no {END!r} after it")
    return "\n".join(kept), regions


def first_check(cells: list) -> str | None:
    """The first check_...(...) call in these cells, as written there."""
    for cell in cells:
        match = CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if match:
            return match.group(0)
    return None


def is_nbgrader_solution(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def student_notebook(notebook, name: str) -> tuple:
    """(the student edition of one notebook, number of exercises stubbed); MarkerError names the cell."""
    number = name[:2]
    stubbed = 0
    for index, cell in enumerate(notebook.cells):
        # the check an exercise ends with sits in its own cell or in one of the next few
        check = first_check(notebook.cells[index:index + 4])

        def stub(exercise, where=f"{name}, cell {index + 1}", check=check):
            return code_stub(exercise, check, where) if cell.cell_type == "code" else TEXT_STUB.format(number=number)

        try:
            source, regions = strip_solutions(cell.source, cell.cell_type, stub)
        except MarkerError as error:
            first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
            raise MarkerError(f"{name}: cell {index + 1} ({cell.cell_type}, starting {first[:60]!r}): {error}") from None
        if not regions and is_nbgrader_solution(cell):
            source, regions = stub(None), 1
        cell.source = source
        stubbed += regions
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)
    return notebook, stubbed


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def written_before(out_dir: Path) -> dict:
    """{notebook file name: sha256 of what make_student last wrote there}, from RECORD beside the notebooks."""
    record = out_dir / RECORD
    return json.loads(record.read_text())["sha256"] if record.is_file() else {}


def edited(out_dir: Path, texts: dict) -> list:
    """The names whose file in out_dir differs from what make_student last wrote there (a student's work, or a
    file it never wrote) and from what it would write now: writing over them would lose something."""
    before = written_before(out_dir)
    found = [name for name in texts if (out_dir / name).is_file()]
    return [name for name in found
            if sha256_of(out_dir / name) not in (before.get(name), sha256_text(texts[name]))]


def make_student(notebooks_dir: Path, out_dir: Path, force: bool = False) -> dict:
    """{notebook file name: exercises stubbed}; every notebook is converted before any is written.

    A notebook in out_dir that differs from what make_student last wrote there (RECORD keeps its sha256) is never
    replaced: EditedNotebooks names them and nothing is written, unless force.
    """
    notebooks_dir, out_dir = Path(notebooks_dir).resolve(), Path(out_dir).resolve()
    if out_dir == notebooks_dir:
        raise ValueError(f"--out {out_dir} is the instructor's notebooks folder; writing there would delete the "
                         f"solutions. Choose another folder (the default is outputs/student).")
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"No NN_*.ipynb notebooks in {notebooks_dir}.")
    editions = {path.name: student_notebook(nbformat.read(path, as_version=4), path.name) for path in paths}
    texts = {name: nbformat.writes(notebook).rstrip("\n") + "\n" for name, (notebook, _) in editions.items()}
    kept = edited(out_dir, texts)
    if kept and not force:
        raise EditedNotebooks(f"{', '.join(kept)} in {out_dir} {'differs' if len(kept) == 1 else 'differ'} from what "
                              f"make_student last wrote there (a student's answers?); nothing was written, every "
                              f"file was kept. Run it with --out another folder for a fresh student edition, or with "
                              f"--force to replace them.")
    if kept:
        print(f"make_student: --force: writing over the edited {', '.join(kept)}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = written_before(out_dir)
    for name, text in texts.items():
        write_text_atomically(out_dir / name, text)
        record[name] = sha256_text(text)
        write_text_atomically(out_dir / RECORD, json.dumps({"written_by": "tools/make_student.py", "sha256": record},
                                                           indent=1))
    return {name: stubbed for name, (_, stubbed) in editions.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"), help="the instructor edition (NN_*.ipynb)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "student"), help="where the student edition goes")
    parser.add_argument("--force", action="store_true",
                        help="replace notebooks there that differ from what make_student last wrote (edited ones)")
    args = parser.parse_args(argv)
    try:
        counts = make_student(Path(args.notebooks), Path(args.out), force=args.force)
    except (MarkerError, ValueError, FileNotFoundError) as error:
        print(f"make_student: {error}", file=sys.stderr)
        return 1
    for name, stubbed in counts.items():
        print(f"{name}: written, {stubbed} solution{'s' if stubbed != 1 else ''} replaced by stubs")
    print(f"Student edition of {len(counts)} notebooks written in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
