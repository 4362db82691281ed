"""JupyterLab in a real browser: Debian's chromium, driven by Playwright, against a JupyterLab server on 127.0.0.1.

Every notebook with an explorer (clip_helpers.widgets) is opened in a temporary copy, run with the smoke profile,
checked for errors, each of its controls moved (the figure must change), saved, and reopened with a fresh kernel
(the figures must still be there). Screenshots go to outputs/screenshots/. `make test-classroom` runs it; it skips,
saying why, only where chromium or Playwright is not installed (`make setup-classroom` installs both).
"""
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "outputs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# Each explorer's controls, in the order they appear, and a new value for each (a slider's readout is typed into).
NEW_VALUES = {
    "03_cosine_similarity": [["3.16"], ["a photo of a green star."]],
    "06_similarity_matrix": [["a photo of a blue square."]],
    "07_zero_shot": [["3", "red circle, green star, blue square, cat", "a drawing of a {}."]],
    "10_retrieval_and_applications": [["a blue triangle."]],
}
RUN_S, CHANGE_S = 600, 120  # a notebook's run (the smoke mini-CLIP trains on first use), one redraw

pytestmark = [pytest.mark.classroom, pytest.mark.slow]


def notebooks_with_explorers() -> list[str]:
    return sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                  if "widgets." in path.read_text() or "zero_shot_playground" in path.read_text())


def test_the_explorers_notebooks_are_the_ones_this_test_drives():
    assert notebooks_with_explorers() == sorted(NEW_VALUES)


@pytest.fixture(scope="module")
def playwright_browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed: `make setup-classroom` (as root: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: `make setup-classroom`")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smoke_copy(folder: Path) -> Path:
    """The notebooks with explorers copied into `folder`/notebooks, their parameters cell set to the smoke profile
    with data and outputs in `folder` (interactive stays True: that is what Jupyter runs)."""
    (folder / "notebooks").mkdir(parents=True)
    for name in NEW_VALUES:
        notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        cell = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
        cell.source = re.sub(r'^profile = "\w+"', 'profile = "smoke"', cell.source, flags=re.M)
        cell.source = re.sub(r'^data_dir = ".*?"', f'data_dir = {str(folder / "data")!r}', cell.source, flags=re.M)
        cell.source = re.sub(r'^out_dir = ".*?"', f'out_dir = {str(folder / "outputs")!r}', cell.source, flags=re.M)
        assert 'profile = "smoke"' in cell.source and "interactive = True" in cell.source
        nbformat.write(notebook, folder / "notebooks" / f"{name}.ipynb")
    return folder


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(base url, token, the copy's folder): a JupyterLab server on 127.0.0.1 serving a smoke copy, kernel python3."""
    folder = smoke_copy(tmp_path_factory.mktemp("classroom"))
    config = folder / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)  # no news prompt: nothing outside the machine is asked
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])), JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.port_retries=0", *(["--allow-root"] if os.geteuid() == 0 else [])], env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        yield base, token, folder
    finally:
        server.terminate()
        server.wait(30)


def open_notebook(browser, base, token, name):
    """A page showing only notebooks/<name>.ipynb, once its kernel is idle. A fresh workspace each time: JupyterLab
    would otherwise reopen the notebooks of the previous page too, and another could be the current one."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/workspaces/{name}-{secrets.token_hex(4)}/tree/notebooks/{name}.ipynb?reset&token={token}")
    page.wait_for_function(f"() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           f" && window.jupyterapp.shell.currentWidget.context"
                           f" && window.jupyterapp.shell.currentWidget.context.path == 'notebooks/{name}.ipynb'",
                           timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status == 'idle'",
                           timeout=120_000)
    return page


def run_all(page):
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_timeout(1000)
    page.wait_for_function(
        "() => { const nb = window.jupyterapp.shell.currentWidget;"
        " return nb.sessionContext.session.kernel.status == 'idle' &&"
        " [...nb.content.widgets].every(c => c.model.type != 'code' || c.model.executionCount !== null"
        " || !c.model.sharedModel.getSource().trim()) }", timeout=RUN_S * 1000, polling=1000)


def save(page):
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)


def explorer_cells(page):
    """The cells whose output holds widget controls, in order."""
    return page.locator(".jp-CodeCell").filter(has=page.locator(".jp-OutputArea .widget-box, .jp-OutputArea .jupyter-widgets"))


def figure_of(cell) -> str:
    images = cell.locator(".jp-OutputArea img")
    return images.last.get_attribute("src") if images.count() else ""


def change_control(page, cell, index, value):
    """Type `value` into the explorer's index-th control (a text box, or a slider's readout) and press Enter."""
    control = cell.locator(".widget-text input, .widget-slider .widget-readout").nth(index)
    control.scroll_into_view_if_needed()
    control.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def explorer_indices(path: Path) -> list[int]:
    notebook = nbformat.read(path, as_version=4)
    return [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            and re.search(r"_explorer\(|zero_shot_playground\(", cell.source)]


def saved_errors(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [f"cell {index}: {output.get('ename')}: {output.get('evalue')}" for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" for output in cell.outputs if output.output_type == "error"]


@pytest.mark.parametrize("name", sorted(NEW_VALUES))
def test_a_notebook_runs_in_jupyterlab_its_explorers_redraw_and_it_reopens_with_its_figures(
        playwright_browser, jupyterlab, name):
    base, token, folder = jupyterlab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = open_notebook(playwright_browser, base, token, name)
    run_all(page)
    cells = explorer_cells(page)
    assert cells.count() == len(NEW_VALUES[name]), f"{name}: {cells.count()} explorers rendered"
    for number, values in enumerate(NEW_VALUES[name]):
        cell = cells.nth(number)
        cell.scroll_into_view_if_needed()
        assert figure_of(cell), f"{name}: explorer {number + 1} shows no figure"
        for index, value in enumerate(values):
            before = figure_of(cell)
            change_control(page, cell, index, value)
            page.wait_for_function("([cell, before]) => { const images = cell.querySelectorAll('.jp-OutputArea img');"
                                   " return images.length && images[images.length - 1].src != before }",
                                   arg=[cell.element_handle(), before], timeout=CHANGE_S * 1000)
        cell.screenshot(path=str(SCREENSHOTS / f"{name}_explorer{number + 1}_changed.png"))
    assert "Error displaying widget" not in page.inner_text(".jp-NotebookPanel")
    save(page)
    assert saved_errors(folder / "notebooks" / f"{name}.ipynb") == []
    ran_in = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    page.close()

    page = open_notebook(playwright_browser, base, token, name)  # a fresh kernel: nothing of the run is alive
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id") != ran_in
    indices = explorer_indices(folder / "notebooks" / f"{name}.ipynb")
    assert len(indices) == len(NEW_VALUES[name])
    for number, index in enumerate(indices):
        cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()
        assert figure_of(cell), f"{name}: reopened, explorer {number + 1} shows no figure"
        cell.screenshot(path=str(SCREENSHOTS / f"{name}_explorer{number + 1}_reopened.png"))
    page.close()
