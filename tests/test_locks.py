"""The run-folder lock on systems without fcntl: Windows (msvcrt, simulated here) and the O_EXCL lock file."""
import os
import subprocess
import sys
import types

import pytest

from clip_helpers.training import checkpoints, locks


@pytest.fixture
def no_fcntl(monkeypatch):
    """A system with neither fcntl nor msvcrt: the lock file itself is the lock."""
    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "msvcrt", None)


def dead_pid() -> str:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return finished.stdout.strip()


def test_without_fcntl_a_second_run_is_refused_naming_the_first(no_fcntl, tmp_path):
    held = checkpoints.lock(tmp_path)
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    with pytest.raises(checkpoints.RunFolderError, match=f"process {os.getpid()}.* is training in"):
        checkpoints.lock(tmp_path)
    checkpoints.unlock(held)
    assert not (tmp_path / ".lock").exists()  # the file was the lock: released, it is gone
    checkpoints.unlock(checkpoints.lock(tmp_path))


def test_without_fcntl_a_dead_runs_lock_file_is_taken_over_and_a_live_ones_is_not(no_fcntl, tmp_path):
    (tmp_path / ".lock").write_text(dead_pid())
    held = checkpoints.lock(tmp_path)
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    checkpoints.unlock(held)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            (tmp_path / ".lock").write_text(str(alive.pid))
            with pytest.raises(checkpoints.RunFolderError, match=f"process {alive.pid}"):
                checkpoints.lock(tmp_path)
            assert (tmp_path / ".lock").read_text() == str(alive.pid)  # not taken from a live run
        finally:
            alive.kill()


def test_without_fcntl_an_empty_lock_file_is_busy_only_while_it_is_brand_new(no_fcntl, tmp_path):
    path = tmp_path / ".lock"
    path.write_text("")  # another process between creating the file and writing its pid
    with pytest.raises(checkpoints.RunFolderError, match="process unknown"):
        checkpoints.lock(tmp_path)
    old = os.stat(path).st_mtime - 2 * locks.JUST_CREATED_S
    os.utime(path, (old, old))  # e.g. left by a flock run, whose unlock empties it
    checkpoints.unlock(checkpoints.lock(tmp_path))


@pytest.fixture
def windows(monkeypatch):
    """msvcrt.locking simulated: a byte-range lock per file, non-blocking requests refused while another holds it."""
    held, calls = set(), []

    def locking(fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)
        calls.append((mode, key[1]))
        if mode == fake.LK_NBLCK:
            if key in held:
                raise PermissionError(13, "Permission denied")
            held.add(key)
        elif mode == fake.LK_UNLCK:
            held.remove(key)

    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "msvcrt", fake)
    return calls


def test_on_windows_the_folder_is_locked_with_msvcrt_past_the_pid(windows, tmp_path):
    held = checkpoints.lock(tmp_path)
    assert windows == [(2, locks.WINDOWS_LOCKED_BYTE)]  # the pid at byte 0 stays readable to a second run
    with pytest.raises(checkpoints.RunFolderError, match=f"process {os.getpid()}"):
        checkpoints.lock(tmp_path)
    checkpoints.unlock(held)
    assert windows[-1] == (0, locks.WINDOWS_LOCKED_BYTE)
    checkpoints.unlock(checkpoints.lock(tmp_path))  # free again
