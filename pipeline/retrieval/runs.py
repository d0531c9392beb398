"""Where run files live: RUNS/<data>/<split>/<system>.trec, under one of several folders (a configuration keeps
its tuners', its baselines' and its fused runs apart)."""

from __future__ import annotations

from pathlib import Path

from ..common.metrics import Run, read_trec_run


def find_run(dirs: list[Path], data: str, split: str, system: str) -> Path:
    """RUNS/<data>/<split>/<system>.trec in the first of `dirs` that has it; a missing run names every place."""
    tried = [Path(d) / data / split / f"{system}.trec" for d in dirs]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"no run of {system} on {data}/{split}: looked for {', '.join(map(str, tried))}")


def read_checked_run(dirs: list[Path], data: str, split: str, system: str, qrels: dict) -> Run:
    """`system`'s run on data/split from the first of `dirs` that has it, checked to answer the split's queries
    (a run of another set or split is one line naming the file)."""
    from .fusion import check_run_of

    path = find_run(dirs, data, split, system)
    run = read_trec_run(path)
    check_run_of(run, qrels, str(path))
    return run
