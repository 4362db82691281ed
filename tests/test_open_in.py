"""Colab and Binder: every notebook's badges and kit-install cell (tools/add_open_in_cells.py), the repository
named once, the binder/ configuration, and the install cell run where the kit is absent and where it is not."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("add_open_in_cells", ROOT / "tools" / "add_open_in_cells.py")
add_open_in_cells = importlib.util.module_from_spec(spec)
spec.loader.exec_module(add_open_in_cells)


def install_cell(path=ROOT / "notebooks" / "03_cosine_similarity.ipynb") -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(cell.source for cell in notebook.cells if "install-kit" in cell.metadata.get("tags", []))


def test_every_notebook_has_the_cells_the_script_writes():
    assert add_open_in_cells.main(["--check"]) == 0  # else: python tools/add_open_in_cells.py


def test_the_script_rewrites_its_own_cells_and_nothing_else(tmp_path):
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "03_cosine_similarity.ipynb"
    shutil.copy(ROOT / "notebooks" / path.name, path)
    notebook = nbformat.read(path, as_version=4)
    lesson = [cell.source for cell in notebook.cells if not {"install-kit", "open-in-badges"} & set(cell.metadata.get("tags", []))]
    for cell in notebook.cells:
        if "install-kit" in cell.metadata.get("tags", []):
            cell.source = "# an old install cell"
    nbformat.write(notebook, path)
    assert add_open_in_cells.main(["--notebooks", str(tmp_path / "notebooks")]) == 0
    once = path.read_text()
    assert add_open_in_cells.main(["--notebooks", str(tmp_path / "notebooks")]) == 0
    assert path.read_text() == once == (ROOT / "notebooks" / path.name).read_text()
    rewritten = nbformat.read(path, as_version=4)
    assert [cell.source for cell in rewritten.cells[1:] if cell.source != install_cell()] == lesson


def test_badges_open_this_notebook_on_colab_and_binder_from_the_one_repository():
    repo = add_open_in_cells.REPO
    assert f"REPO = {repo}" in (ROOT / "README.md").read_text()  # the README names the same repository, for forks
    owner_name = repo.split("/", 1)[1]
    notebook = nbformat.read(ROOT / "notebooks" / "07_zero_shot.ipynb", as_version=4)
    links = re.findall(r"\]\((https://[^)]+)\)", notebook.cells[0].source)
    assert links[1] == f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/07_zero_shot.ipynb"
    assert links[3] == f"https://mybinder.org/v2/gh/{owner_name}/main?labpath=notebooks%2F07_zero_shot.ipynb"
    assert f"git+https://{repo}@main" in install_cell()


def test_binder_installs_cpu_torch_then_the_kit():
    requirements = (ROOT / "binder" / "requirements.txt").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in requirements and "\ntorch\n" in requirements
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK) and "pip install --no-cache-dir -e ." in post_build.read_text()


def run_cell(python: Path, cell: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """The cell run by IPython (its %pip is a magic), then whether clip_helpers is importable, from where."""
    script = cwd / "cell.ipy"
    script.write_text(cell + "\nfound = importlib.util.find_spec('clip_helpers')\n"
                             "print('FOUND', found.origin if found else None)\n")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(python), "-m", "IPython", "--quick", "--no-banner", str(script)], cwd=cwd,
                          env={**environment, **env}, capture_output=True, text=True, timeout=600)


def test_the_install_cell_does_nothing_in_a_checkout(tmp_path):
    finished = run_cell(Path(sys.executable), install_cell(), tmp_path, PYTHONPATH=str(ROOT),
                        CLIP_KIT_SOURCE=str(tmp_path / "no-such-kit"))  # pip would fail loudly on it
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"FOUND {ROOT / 'clip_helpers' / '__init__.py'}", finished.stdout + finished.stderr


@pytest.mark.slow
def test_the_install_cell_installs_the_kit_in_a_clean_environment(tmp_path):
    """A venv with IPython only (not --system-site-packages: nothing of this machine's kit); the kit installed from
    a copy of this checkout, standing in for the repository URL. --no-deps: torch and the rest are gigabytes and
    are not what is tested here (binder/ and the README's CPU-only line install them)."""
    source = tmp_path / "clip-kit"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):  # a copy: pip builds in place, and must not write build/ here
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "clip_helpers", source / "clip_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "ipython"], check=True, timeout=600)
    (tmp_path / "work").mkdir()  # like Colab's /content: no project around it
    before = run_cell(python, "import importlib.util", tmp_path / "work")
    assert before.stdout.strip() == "FOUND None", before.stdout + before.stderr
    finished = run_cell(python, install_cell(), tmp_path / "work", CLIP_KIT_SOURCE=f"--no-deps {source}")
    assert finished.returncode == 0, finished.stderr
    found = finished.stdout.strip().splitlines()[-1]
    assert found.startswith(f"FOUND {tmp_path / 'venv'}") and found.endswith("clip_helpers/__init__.py"), finished.stdout
