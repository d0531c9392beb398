"""Where the project keeps its artifacts."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where artifacts land: $LMORT_CACHE, else cache/ under the current directory (the project root)."""
    return Path(os.environ.get("LMORT_CACHE", "cache"))
