"""environment.yml (conda users) and pyproject.toml (pip users) must install the same packages, and those
packages must provide every module the kit imports."""
import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def by_name(requirements) -> dict:
    """{canonical name: specifier string} of requirement strings."""
    parsed = [Requirement(r) for r in requirements]
    return {canonicalize_name(r.name): str(r.specifier) for r in parsed}


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_and_pip_entries():
    conda = [entry for entry in environment()["dependencies"] if isinstance(entry, str)]
    (pip,) = [entry["pip"] for entry in environment()["dependencies"] if isinstance(entry, dict)]
    return conda, pip


def test_same_packages_and_pins_in_both_files():
    project = pyproject()
    _, pip = conda_and_pip_entries()
    (editable,) = [entry for entry in pip if entry.startswith("-e")]
    extras = re.fullmatch(r"-e \.\[(.*)\]", editable).group(1).split(",")
    declared = by_name(project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]])
    assert by_name(entry for entry in pip if not entry.startswith("-e")) == declared


def test_conda_python_satisfies_requires_python_and_the_kit_is_installed_with_its_dev_extra():
    conda, pip = conda_and_pip_entries()
    (python,) = [entry for entry in conda if re.match(r"python\b", entry)]
    version = re.split(r"[=<>]+", python, maxsplit=1)[1]
    assert version in SpecifierSet(pyproject()["requires-python"]), (python, pyproject()["requires-python"])
    (editable,) = [entry for entry in pip if entry.startswith("-e")]
    extras = re.fullmatch(r"-e \.\[(.*)\]", editable).group(1).split(",")
    assert set(extras) <= set(pyproject()["optional-dependencies"])


def third_party_imports(folder: Path) -> set[str]:
    """Top-level names of the modules imported anywhere under `folder`, less the standard library and the kit."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    # the project's own scripts and test helpers, which tests load by path or from conftest
    own = {path.stem for path in (ROOT / "tools").glob("*.py")} | {path.stem for path in (ROOT / "tests").glob("*.py")}
    return names - set(sys.stdlib_module_names) - {"clip_helpers", "__future__"} - own


def installed_by(distributions) -> set[str]:
    """The distributions `distributions` install, with everything they require (not their optional extras)."""
    seen, todo = set(), [canonicalize_name(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_every_module_the_kit_imports_is_installed_by_a_declared_package():
    project = pyproject()
    providers = importlib.metadata.packages_distributions()
    declared = installed_by(by_name(project["dependencies"]))
    # make setup installs .[dev,classroom]: the tests may import what either extra installs
    extras = project["optional-dependencies"]
    with_dev = installed_by(by_name(project["dependencies"] + extras["dev"] + extras["classroom"]))
    for folder, installed in ((ROOT / "clip_helpers", declared), (ROOT / "tests", with_dev)):
        missing = {module: providers.get(module) for module in third_party_imports(folder)
                   if not {canonicalize_name(d) for d in providers.get(module, [])} & installed}
        assert not missing, f"{folder.name} imports modules no declared package installs: {missing}"
