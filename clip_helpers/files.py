"""Files written atomically: a reader sees the old file or the new one, never half of one."""
import hashlib
import os
import re
import time
from pathlib import Path

import torch


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path, write) -> None:
    """Call write(file) on a temporary file, fsync it and rename it to `path`. The temporary file is removed if
    anything fails (a full disk, Ctrl-C)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the pattern OURS_WITH_PID recognises
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_atomically(obj, path) -> str:
    """torch.save(obj) to `path` atomically; returns the sha256 of the file written."""
    write_atomically(path, lambda file: torch.save(obj, file))
    return sha256_of(path)


def write_text_atomically(path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


# The temporary files this kit writes: write_atomically's ".<name>.<pid>.tmp", and "<name>.ptXXXXXXXX.tmp" from the
# tempfile.mkstemp the feature cache used before it wrote through write_atomically.
OURS_WITH_PID = re.compile(r"^\..+\.(\d+)\.tmp$")
OURS_WITHOUT_PID = re.compile(r"^.+\.pt[a-z0-9_]{8}\.tmp$")
# A write takes seconds; these margins leave alone a writer on another machine sharing the folder (its pid means
# nothing here) and one whose pid was reused.
STALE_IF_WRITER_GONE_S = 3600
STALE_S = 24 * 3600


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists, and sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def abandoned(path: Path, now: float) -> bool:
    """Whether a temporary file of this kit was left by a write that was killed (SIGKILL, power loss)."""
    age = now - path.stat().st_mtime
    with_pid = OURS_WITH_PID.match(path.name)
    if with_pid:
        return age > STALE_S or (age > STALE_IF_WRITER_GONE_S and not is_running(int(with_pid.group(1))))
    return OURS_WITHOUT_PID.match(path.name) is not None and age > STALE_S


def remove_abandoned_temporaries(folder) -> list[Path]:
    """Remove the kit's own temporary files in `folder` left by killed writes (only those: other .tmp files, and
    ones a write may still be using, stay); returns the paths removed."""
    removed, now = [], time.time()
    for path in Path(folder).glob("*.tmp"):
        try:
            if path.is_file() and not path.is_symlink() and abandoned(path, now):
                path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
    return removed
