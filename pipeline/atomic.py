"""Nothing half-written: every file and folder the pipeline writes goes through these two functions."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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
