"""The project's size limits: no module over 300 lines, no function over 50 (split by idea, not by count)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("clip_helpers", "tools", "benchmarks")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def python_files(folders):
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def long_functions(path: Path, root=ROOT, limit=MAX_FUNCTION_LINES):
    """["file:function (N lines)"] for every function or method in `path` longer than `limit` lines, from its
    first decorator to its last line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            if (length := node.end_lineno - start + 1) > limit:
                found.append(f"{path.relative_to(root)}:{node.name} ({length} lines)")
    return found


def test_no_module_is_over_300_lines():
    too_long = [f"{path.relative_to(ROOT)} ({n} lines)" for path in python_files(FOLDERS)
                if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {too_long}"


def test_no_function_is_over_50_lines():
    too_long = [name for path in python_files(FOLDERS + ("tests",)) for name in long_functions(path)]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {too_long}"


def test_a_function_over_the_limit_is_named_with_its_length(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    source = tmp_path / "example.py"
    # at the limit: def line + 49 body lines = 50; with a decorator, 51
    source.write_text(f"def at_the_limit():\n{body}\n\n\nclass Holder:\n    @staticmethod\n"
                      + "\n".join("    " + line for line in f"def over_it():\n{body}".splitlines()) + "\n")
    assert long_functions(source, root=tmp_path) == ["example.py:over_it (51 lines)"]
