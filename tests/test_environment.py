"""environment.yml (conda users) and pyproject.toml (pip users) must install the same packages."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def names(requirements):
    return {re.split(r"[<>=!~ \[;]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def pyproject_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return names(project["dependencies"] + project["optional-dependencies"]["dev"])


def environment_packages():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    pip_lines = [line.split("#")[0].strip()[2:] for line in lines[start + 1:] if line.strip().startswith("- ")]
    return names(p for p in pip_lines if p and not p.startswith("-e"))


def test_same_packages_in_both_files():
    assert pyproject_packages() == environment_packages()


def test_required_pins_and_packages():
    assert {"torch", "torchvision", "openai-clip", "papermill", "scikit-image", "ipywidgets"} <= pyproject_packages()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"setuptools<81"' in pyproject and "setuptools<81" in (ROOT / "environment.yml").read_text()
    assert "python=3.11" in (ROOT / "environment.yml").read_text()
    assert "-e .[dev]" in (ROOT / "environment.yml").read_text()
