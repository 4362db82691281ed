"""Files written atomically: a reader sees the old file or the new one, never half of one."""
import hashlib
import os
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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
