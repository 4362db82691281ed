"""Students' machines: where a notebook opened anywhere in the project finds data/, and the runner's kernel
transport on Windows. (The lock is in test_locks.py, mps in test_device.py.)"""
from pathlib import Path

from clip_helpers import course
from conftest import load_tool  # noqa: E402


def test_the_student_edition_finds_the_projects_data_not_a_new_one(tmp_path, monkeypatch):
    (tmp_path / "clip_helpers").mkdir()
    (tmp_path / "outputs" / "student").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "outputs" / "student")  # where Jupyter starts the student notebook's kernel
    assert course.project_path("data") == tmp_path / "data"
    assert course.start("00_start_here", "smoke").data_dir == tmp_path / "data"
    assert not (tmp_path / "outputs" / "student" / "data").exists()


def test_a_notebook_outside_any_project_keeps_its_own_folder(tmp_path, monkeypatch):
    (tmp_path / "alone").mkdir()
    monkeypatch.chdir(tmp_path / "alone")  # e.g. Colab's /content, with the kit pip-installed
    assert course.project_root() is None
    assert course.project_path("data") == Path("data")
    assert course.project_path(tmp_path / "x") == tmp_path / "x"


def test_the_runner_uses_ipc_sockets_except_on_windows():
    from jupyter_client.manager import AsyncKernelManager

    run_notebooks = load_tool("run_notebooks")
    assert run_notebooks.kernel_manager("nt") is AsyncKernelManager  # Windows: jupyter_client's default, tcp
    posix = run_notebooks.kernel_manager("posix")
    assert issubclass(posix, AsyncKernelManager) and posix is not AsyncKernelManager
    assert posix().transport == "ipc"
    assert AsyncKernelManager().transport == "tcp"
