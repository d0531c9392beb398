"""Nothing half-written: every file and folder the pipeline writes goes through these two functions."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError


def atomic_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(temporary path) beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # keeps the suffix: writers infer formats from it
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_dir(target: Path, write: Callable[[Path], object]) -> None:
    """Call write(temporary folder) beside `target`, then swap it in. A kill mid-swap leaves `.<name>.old`,
    which `existing_dir` falls back to."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.exists() and target.exists():
        shutil.rmtree(old)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the folder should get the mode a plain mkdir would
    try:
        write(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def existing_dir(folder: Path) -> Path:
    """`folder`, or what a swap interrupted by a kill left of it."""
    old = folder.with_name(f".{folder.name}.old")
    return folder if folder.exists() or not old.exists() else old


def check_writable(path: Path, need_bytes: int = 0, margin_bytes: int = 64 << 20) -> None:
    """Fail fast, in one line, if `path` (a file or folder to be written) cannot be: a regular file where a
    folder must be, a folder without write permission, or a disk with less than `need_bytes` + a margin free."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    for parent in [probe, *probe.parents]:
        if parent.exists() and not parent.is_dir() and parent != path:
            raise OutputError(f"{path}: cannot be written, {parent} is a regular file")
    folder = probe if probe.is_dir() else probe.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be written, no write permission on {folder}")
    free = shutil.disk_usage(folder).free
    if free < need_bytes + margin_bytes:
        raise OutputError(f"{path}: needs about {(need_bytes + margin_bytes) / 1e9:.2f} GB, only "
                          f"{free / 1e9:.2f} GB free on the disk of {folder}")
