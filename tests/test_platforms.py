"""Students' machines: where a notebook opened anywhere in the project finds data/, and the runner's kernel
transport on Windows. (The lock is in test_locks.py, mps in test_device.py.)"""
from pathlib import Path

import pytest

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


def test_a_grader_points_every_submission_at_one_shared_data_folder(tmp_path, monkeypatch):
    shared = tmp_path / "course-data"
    shared.mkdir()
    (tmp_path / "autograded" / "ana" / "03").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "autograded" / "ana" / "03")  # where nbgrader runs a submission: no project
    monkeypatch.delenv(course.SHARED_DATA, raising=False)
    assert course.start("03_cosine_similarity", "smoke").data_dir == Path("data")  # a cache per submission
    monkeypatch.setenv(course.SHARED_DATA, str(shared))
    assert course.start("03_cosine_similarity", "smoke").data_dir == shared
    assert course.data_path(tmp_path / "mine") == tmp_path / "mine"  # a data_dir the notebook sets itself wins
    assert not (tmp_path / "autograded" / "ana" / "03" / "data").exists()


def test_a_shared_data_folder_that_is_relative_or_missing_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(course.SHARED_DATA, "course-data")
    with pytest.raises(ValueError, match="absolute path"):
        course.data_path("data")
    monkeypatch.setenv(course.SHARED_DATA, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        course.data_path("data")
