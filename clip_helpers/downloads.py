"""Where OpenAI's weights come from and go: their URLs, their cached files, whether a file is complete, and
whether the host answers (the network probe behind the "auto" profile)."""
import os
import socket
import threading
import urllib.parse
import warnings
import zipfile
from pathlib import Path

import clip
# clip publishes the model names (clip.available_models()) but not their URLs: this is its private table, read here only.
from clip.clip import _MODELS

# The rehearsal's stand-ins differ from the downloads only in their checksums: while this variable is "1", and only
# then, the checksum checks are skipped (clip_helpers.replication.rehearsal sets it).
SKIP_CHECKSUMS = "CLIP_KIT_REHEARSAL_SKIP_CHECKSUMS"


def weights_url(name: str) -> str:
    """The URL clip.load downloads `name` from (a name of clip.available_models())."""
    if name not in clip.available_models():
        raise ValueError(f"{name!r} is not one of OpenAI's models {clip.available_models()}")
    return _MODELS[name]


def weights_file(name: str, download_root="data/weights") -> Path:
    """Where `clip.load(name, download_root=...)` keeps that model's file."""
    return Path(download_root) / os.path.basename(weights_url(name))


def weights_cached(name: str, download_root="data/weights") -> bool:
    return name in clip.available_models() and weights_file(name, download_root).is_file()


def archive_problem(path) -> str | None:
    """None when `path` is a complete zip archive written by torch (TorchScript or torch.save), else what is wrong.

    Cheap: reads the zip's directory at the end of the file, so a zero-byte or truncated download shows.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"it cannot be read ({error})"
    if size == 0:
        return "it is empty (0 bytes), probably from an interrupted download or save"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return f"it is not a complete zip archive as torch writes them ({size:,} bytes; {error}): truncated or damaged"
    if not any(name.endswith("data.pkl") for name in names):
        return "it is a zip archive, but not one written by torch (no data.pkl)"
    return None


def weights_host(name: str = "ViT-B/32") -> str:
    return urllib.parse.urlparse(weights_url(name)).hostname


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to host opens within `timeout` seconds (DNS included, hence the thread)."""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def checksums_skipped() -> bool:
    """True only while CLIP_KIT_REHEARSAL_SKIP_CHECKSUMS=1: the one switch that lets stand-ins pass the checksum checks."""
    skipped = os.environ.get(SKIP_CHECKSUMS) == "1"
    if skipped:
        warnings.warn(f"{SKIP_CHECKSUMS}=1: download checksums are not checked (rehearsal on stand-ins)", stacklevel=3)
    return skipped
