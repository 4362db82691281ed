"""An exclusive lock on a file that holds the locker's pid, on Linux, macOS and Windows.

fcntl.flock where there is fcntl (Linux, macOS), msvcrt.locking on Windows: both are dropped by the operating
system when the process ends, however it ends, so a leftover lock file locks nothing. Where neither exists,
the file itself is the lock (created with O_EXCL), and one naming a process that is gone is taken over.
"""
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere but Windows
    msvcrt = None

# Windows locks byte ranges and refuses reads of a locked byte: lock one far past the pid so others can read it.
WINDOWS_LOCKED_BYTE = 1 << 20
# An empty lock file this young may be another process between creating it and writing its pid.
JUST_CREATED_S = 5.0


class Busy(Exception):
    """The lock is held; .holder is the pid written in the file ("unknown" when it names none)."""
    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


def holder_of(path) -> str:
    try:
        return Path(path).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def write_pid(file):
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()


def hold(path):
    """The open lock file at `path`, locked by this process, with our pid in it; Busy when another holds it."""
    if fcntl is None and msvcrt is None:
        return hold_by_creating(path)
    file = open(path, "a+")
    try:
        if fcntl is not None:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            file.seek(WINDOWS_LOCKED_BYTE)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError from flock, PermissionError from msvcrt
        file.close()
        raise Busy(holder_of(path)) from None
    write_pid(file)
    return file


def release(file):
    """Unlock and close what hold() returned (the pid is cleared; the file stays, it locks nothing)."""
    if file.closed:
        return
    file.truncate(0)
    if fcntl is not None:
        fcntl.flock(file, fcntl.LOCK_UN)
    elif msvcrt is not None:
        file.seek(WINDOWS_LOCKED_BYTE)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        Path(file.name).unlink(missing_ok=True)
    file.close()


def process_is_gone(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0 only asks whether the process exists (never called on Windows)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def stale(path) -> bool:
    """True when the lock file at `path` names a process that is gone (or names none and is not brand new)."""
    pid = holder_of(path)
    if pid == "unknown":
        try:
            return time.time() - Path(path).stat().st_mtime > JUST_CREATED_S
        except FileNotFoundError:
            return True
    return process_is_gone(pid)


def hold_by_creating(path):
    """The lock without fcntl or msvcrt: whoever creates the file holds it; a dead holder's file is taken over."""
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
        except FileExistsError:
            if not stale(path):
                raise Busy(holder_of(path)) from None
            Path(path).unlink(missing_ok=True)
            continue
        os.close(descriptor)
        file = open(path, "r+")  # by name, so that release() knows which file to remove
        write_pid(file)
        return file
    raise Busy(holder_of(path))
