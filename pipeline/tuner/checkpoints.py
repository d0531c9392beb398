"""Training checkpoints (safetensors + JSON), one format for every trainer: the tuner, the adapter's loop, the span
reader and the reranker. A checkpoint holds the module, the optimizer's state, the schedule and the trainer's own
state; it is resumed only when it was made with the same `setup` (settings, stores, data)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..common.atomic import atomic_dir, existing_dir
from .loop import fresh_state

log = logging.getLogger(__name__)


def save_checkpoint(module, opt, schedule, state: dict, folder: Path) -> None:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    saved = {**state, "param_groups": sd["param_groups"], "schedule": schedule.state_dict()}

    def write(tmp: Path):
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp / "model.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(saved, indent=1))
    atomic_dir(folder, write)


def load_checkpoint(module, opt, schedule, folder: Path) -> dict:
    state = json.loads((folder / "state.json").read_text())
    module.load_state_dict(load_file(folder / "model.safetensors"))
    flat = load_file(folder / "optimizer.safetensors")
    opt_state: dict = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    schedule.load_state_dict(state.pop("schedule"))
    return state


def resume_or_start(module, opt, schedule, setup: dict, out: Path, fresh: dict | None = None) -> dict:
    """The training state: a checkpoint's in `out` when it was made with the same `setup` (settings, stores, pairs),
    else `fresh` (the loop's fresh state by default; a checkpoint of other settings is removed, with the best
    module it had saved)."""
    fresh = fresh_state(setup) if fresh is None else fresh
    ckpt = existing_dir(out / "checkpoint")
    if not (ckpt / "state.json").exists():
        return fresh
    saved = json.loads((ckpt / "state.json").read_text())
    if saved.get("setup") == setup and "schedule" in saved:
        log.info(f"resuming {out} after step {saved['step']}")
        return load_checkpoint(module, opt, schedule, ckpt)
    log.info(f"{out}: the checkpoint is for other settings; training from scratch")  # a changed parameter
    for old in (ckpt, out / "best"):
        shutil.rmtree(old, ignore_errors=True)
    return fresh
