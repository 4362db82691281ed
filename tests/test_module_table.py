"""The README's module table is the one tools/module_table.py makes from the modules' docstrings."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_table():
    spec = importlib.util.spec_from_file_location("module_table", ROOT / "tools" / "module_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_module_table_is_the_generated_one():
    tool = module_table()
    written = tool.readme_table((ROOT / "README.md").read_text())
    assert written == tool.table(), "the README's module table is stale: run python tools/module_table.py --write"


def test_the_table_lists_every_module_of_the_package_once_in_its_layer():
    rows = [line.split("`")[1] for line in module_table().rows()]
    expected = sorted(p.stem for p in (ROOT / "clip_helpers").glob("*.py") if not p.name.startswith("__"))
    for folder in ("training", "replication"):
        expected += sorted(f"{folder}/{p.stem}" for p in (ROOT / "clip_helpers" / folder).glob("*.py")
                           if not p.name.startswith("__"))
    expected += sorted(f"{p.parent.name}/" for p in (ROOT / "clip_helpers").glob("*/__init__.py")
                       if p.parent.name not in ("training", "replication"))
    assert sorted(rows) == sorted(expected)
    assert {"checks/", "plots/"} <= set(rows)
    assert len(rows) == len(set(rows))
