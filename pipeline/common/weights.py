"""A trained module on disk: its tensors as safetensors beside a JSON of what it is (config, dev score, the stores
it was trained on), written to a temporary folder and swapped in whole. Tuner, span reader and adapter share it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import atomic_dir


def save_weights(folder: Path, tensors: dict[str, torch.Tensor], meta_name: str, meta: dict,
                 weights_name: str = "model.safetensors") -> None:
    """`folder`/`weights_name` (the tensors, on the CPU, contiguous) and `folder`/`meta_name` (`meta` as JSON)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / weights_name)
        (tmp / meta_name).write_text(json.dumps(meta, indent=1))
    atomic_dir(Path(folder), write)
