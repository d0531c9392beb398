"""Where run files live: RUNS/<data>/<split>/<system>.trec, under one of several folders (a configuration keeps
its tuners', its baselines' and its fused runs apart)."""

from __future__ import annotations

from pathlib import Path


def find_run(dirs: list[Path], data: str, split: str, system: str) -> Path:
    """RUNS/<data>/<split>/<system>.trec in the first of `dirs` that has it; a missing run names every place."""
    tried = [Path(d) / data / split / f"{system}.trec" for d in dirs]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"no run of {system} on {data}/{split}: looked for {', '.join(map(str, tried))}")
