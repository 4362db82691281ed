"""The course's JupyterLab settings (jupyterlab-settings/clip-kit.json): what they set, and that `make setup` and
Binder's postBuild install that one file where JupyterLab reads it (the browser test serves it too)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "jupyterlab-settings" / "clip-kit.json"
INSTALLED = Path("share", "jupyter", "lab", "settings", "overrides.d", "clip-kit.json")
WIDGETS_PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"


def test_the_settings_save_widget_state_a_setting_the_widget_manager_has():
    settings = json.loads(SETTINGS.read_text())
    assert settings == {WIDGETS_PLUGIN: {"saveState": True}}
    schema = (Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "@jupyter-widgets" / "jupyterlab-manager"
              / "schemas" / "@jupyter-widgets" / "jupyterlab-manager" / "plugin.json")
    assert json.loads(schema.read_text())["properties"]["saveState"]["type"] == "boolean"


def test_make_setup_installs_them_into_the_venvs_jupyterlab_settings(tmp_path):
    venv = tmp_path / "venv"
    dry_run = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", "setup"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert f"cp jupyterlab-settings/clip-kit.json {venv / INSTALLED}" in dry_run
    subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", str(venv / INSTALLED)], check=True, timeout=60)
    assert (venv / INSTALLED).read_text() == SETTINGS.read_text()


def test_binders_post_build_installs_the_same_file_into_its_environment():
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "cp jupyterlab-settings/clip-kit.json" in post_build
    assert "sys.prefix)')/share/jupyter/lab/settings/overrides.d" in post_build
