"""JupyterLab in a real browser: Debian's chromium, driven by Playwright, against a JupyterLab server on 127.0.0.1.

Every notebook with an explorer (clip_helpers.widgets) is opened in a temporary copy, run with the smoke profile,
checked for errors, each of its controls moved (the figure must change), saved, and reopened with a fresh kernel
(its controls, drawn from the saved widget state, and its figures must still be there); the student edition's stubs
must fit their cells. Screenshots go to outputs/screenshots/. `make test-classroom` runs it (and .ci/run); it skips,
saying why, only where chromium or Playwright is not installed (`make setup-classroom` installs both), and fails
there instead where CLIP_KIT_BROWSER_REQUIRED=1 (CI).
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
from conftest import load_tool

from clip_helpers.profiles import PROFILES
from clip_helpers.training.recipes import load_model

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "outputs" / "screenshots"
LAB_SETTINGS = ROOT / "jupyterlab-settings" / "clip-kit.json"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# Each explorer's controls, in the order they appear, and a new value for each (a slider's readout is typed into).
NEW_VALUES = {
    "03_cosine_similarity": [["3.16"], ["a photo of a green star."]],
    "06_similarity_matrix": [["a photo of a blue square."]],
    "07_zero_shot": [["3", "red circle, green star, blue square, cat", "a drawing of a {}."]],
    "10_retrieval_and_applications": [["a blue triangle."]],
}
RUN_S, CHANGE_S, SERVER_S = 600, 120, 300  # a notebook's run, one redraw, JupyterLab's start

pytestmark = [pytest.mark.classroom, pytest.mark.slow]


def notebooks_with_explorers() -> list[str]:
    return sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                  if "widgets." in path.read_text() or "zero_shot_playground" in path.read_text())


def test_the_explorers_notebooks_are_the_ones_this_test_drives():
    assert notebooks_with_explorers() == sorted(NEW_VALUES)


def cannot_run(reason: str):
    """Skip, saying why; where the browser test must run (CI sets CLIP_KIT_BROWSER_REQUIRED=1), fail instead."""
    if os.environ.get("CLIP_KIT_BROWSER_REQUIRED") == "1":
        pytest.fail(f"the browser test must run here (CLIP_KIT_BROWSER_REQUIRED=1), but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_browser():
    if not CHROMIUM.is_file():
        cannot_run(f"{CHROMIUM} is not installed: `make setup-classroom` (as root: apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        cannot_run("Playwright is not installed: `make setup-classroom`")
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


def student_copy(folder: Path) -> None:
    """The student edition (tools/make_student.py) of the notebooks with explorers, in `folder`/student."""
    (folder / "student").mkdir()
    for name in NEW_VALUES:
        notebook, _ = load_tool("make_student").student_notebook(
            nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4), f"{name}.ipynb")
        nbformat.write(notebook, folder / "student" / f"{name}.ipynb")


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(base url, token, the copy's folder): a JupyterLab server on 127.0.0.1 serving a smoke copy, kernel python3."""
    folder = smoke_copy(tmp_path_factory.mktemp("classroom"))
    student_copy(folder)
    # The smoke mini-CLIP trained once, in the data folder every copy shares, before any notebook runs: each notebook
    # then only loads it, and its run time is its own.
    load_model("mini", folder / "data", mini_recipe=PROFILES["smoke"].mini_recipe, progress=False)
    config = folder / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)  # no news prompt: nothing outside the machine is asked
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # the course's JupyterLab settings, as `make setup` installs them into the venv (widget state saved on save)
    settings = folder / "lab-settings" / "overrides.d"
    settings.mkdir(parents=True)
    (settings / LAB_SETTINGS.name).write_text(LAB_SETTINGS.read_text())
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])), JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.app_settings_dir={settings.parent}",
         "--ServerApp.port_retries=0", *(["--allow-root"] if os.geteuid() == 0 else [])], env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_S
        while True:  # the server is up once it answers (a loaded machine can take minutes to start it)
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"JupyterLab did not answer within {SERVER_S} s: " + (
                    folder / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        yield base, token, folder
    finally:
        server.terminate()
        server.wait(30)


def open_notebook(browser, base, token, name, folder="notebooks"):
    """A page showing only <folder>/<name>.ipynb, once its kernel is idle. A fresh workspace each time: JupyterLab
    would otherwise reopen the notebooks of the previous page too, and another could be the current one."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/workspaces/{name}-{secrets.token_hex(4)}/tree/{folder}/{name}.ipynb?reset&token={token}")
    page.wait_for_function(f"() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           f" && window.jupyterapp.shell.currentWidget.context"
                           f" && window.jupyterapp.shell.currentWidget.context.path == '{folder}/{name}.ipynb'",
                           timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status == 'idle'",
                           timeout=120_000)
    return page


def command(page, name, timeout_s=120):
    """Run JupyterLab's command `name` and wait for it, failing after timeout_s (Playwright's evaluate would wait
    for ever on a command that never finishes, e.g. one waiting on a dialog)."""
    page.evaluate("([name, ms]) => Promise.race([window.jupyterapp.commands.execute(name), new Promise((_, reject) =>"
                  " setTimeout(() => reject(new Error(`${name} did not finish within ${ms / 1000} s`)), ms))])",
                  [name, timeout_s * 1000])


def run_all(page):
    command(page, "notebook:run-all-cells", RUN_S)  # it may settle only once the run ends
    page.wait_for_timeout(1000)
    page.wait_for_function(
        "() => { const nb = window.jupyterapp.shell.currentWidget;"
        " return nb.sessionContext.session.kernel.status == 'idle' &&"
        " [...nb.content.widgets].every(c => c.model.type != 'code' || c.model.executionCount !== null"
        " || !c.model.sharedModel.getSource().trim()) }", timeout=RUN_S * 1000, polling=1000)


def save(page):
    command(page, "docmanager:save")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)


def explorer_cells(page):
    """The cells whose output holds widget controls, in order."""
    return page.locator(".jp-CodeCell").filter(has=page.locator(".jp-OutputArea .widget-box, .jp-OutputArea .jupyter-widgets"))


def figure_of(cell) -> str:
    images = cell.locator(".jp-OutputArea img")
    return images.last.get_attribute("src") if images.count() else ""


CONTROLS = ".widget-text input, .widget-slider .widget-readout"


def cut_labels(cell) -> list[str]:
    """The labels of an explorer's controls that do not fit their box (shown as "class_na...")."""
    return cell.evaluate("cell => [...cell.querySelectorAll('.widget-label')]"
                         ".filter(label => label.scrollWidth > label.clientWidth).map(label => label.textContent)")


def change_control(page, cell, index, value):
    """Type `value` into the explorer's index-th control (a text box, or a slider's readout) and press Enter."""
    control = cell.locator(CONTROLS).nth(index)
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
        assert cut_labels(cell) == [], f"{name}: explorer {number + 1}'s labels are cut"
        cell.screenshot(path=str(SCREENSHOTS / f"{name}_explorer{number + 1}_changed.png"))
    assert "Error displaying widget" not in page.inner_text(".jp-NotebookPanel")
    save(page)
    assert saved_errors(folder / "notebooks" / f"{name}.ipynb") == []
    ran_in = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")
    command(page, "kernelmenu:shutdown")
    page.close()

    page = open_notebook(playwright_browser, base, token, name)  # a fresh kernel: nothing of the run is alive
    assert page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id") != ran_in
    indices = explorer_indices(folder / "notebooks" / f"{name}.ipynb")
    assert len(indices) == len(NEW_VALUES[name])
    for number, (index, values) in enumerate(zip(indices, NEW_VALUES[name])):
        cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()
        # the saved widget state (jupyterlab-settings/clip-kit.json) draws the controls; without it: an error
        page.wait_for_function("cell => cell.querySelector('.jp-OutputArea .widget-box')"
                               " || cell.innerText.includes('Error displaying widget')",
                               arg=cell.element_handle(), timeout=CHANGE_S * 1000)
        assert "Error displaying widget" not in cell.inner_text(), f"{name}: reopened, explorer {number + 1}"
        assert cell.locator(CONTROLS).count() == len(values), f"{name}: reopened, explorer {number + 1}'s controls"
        assert figure_of(cell), f"{name}: reopened, explorer {number + 1} shows no figure"
        assert cut_labels(cell) == [], f"{name}: reopened, explorer {number + 1}'s labels are cut"
        cell.screenshot(path=str(SCREENSHOTS / f"{name}_explorer{number + 1}_reopened.png"))
    assert "Error displaying widget" not in page.inner_text(".jp-NotebookPanel")
    command(page, "kernelmenu:shutdown")
    page.close()


def test_the_student_editions_stubs_fit_their_cells(playwright_browser, jupyterlab):
    """Every `raise NotImplementedError(...)` of the student edition shows whole, without scrolling sideways."""
    base, token, _ = jupyterlab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stubs = 0
    for name in sorted(NEW_VALUES):
        page = open_notebook(playwright_browser, base, token, name, folder="student")
        cells = page.locator(".jp-CodeCell").filter(has_text="NotImplementedError")
        for number in range(cells.count()):
            cell = cells.nth(number)
            cell.scroll_into_view_if_needed()
            editor = cell.locator(".cm-scroller").first
            widths = editor.evaluate("editor => [editor.scrollWidth, editor.clientWidth]")
            assert widths[0] <= widths[1], f"{name}: stub {number + 1} is {widths[0]} px wide in {widths[1]} px"
            if number == 0:
                cell.screenshot(path=str(SCREENSHOTS / f"{name}_student_stub.png"))
        stubs += cells.count()
        command(page, "kernelmenu:shutdown")
        page.close()
    assert stubs, "no stub found in the student edition"
