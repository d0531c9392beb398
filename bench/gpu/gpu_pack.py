"""Pack SmolLM2-135M's first blocks for a lent GPU machine that has no model hub and takes 64 MiB of files.

The GGUF's own quantised bytes are carried unchanged (Q8_0 embedding, Q4_1 blocks): the embedding rows of tokens
that no text of the stores uses are zeroed, so the xz-compressed file holds only what the run reads. On the GPU
machine, `bench/gpu/gpu_model.py` dequantises them with the gguf library into the same float32 weights that
`lmort extract` converts here (a check below compares them exactly). Layers 0..L need the embedding and L blocks.

    python bench/gpu/gpu_pack.py --stores cache/large/stores --blocks 2 --out .gpu
"""

from __future__ import annotations

import argparse
import glob
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import zarr
from safetensors.numpy import save_file

from pipeline.activations.llm import PRESETS, _gguf_path, resolve_model


def used_tokens(stores: Path) -> np.ndarray:
    used = np.zeros(1 << 20, bool)
    for path in glob.glob(str(stores / "*" / "*.zarr")):
        used[zarr.open_group(path, mode="r")["token_ids"][:]] = True
    return np.flatnonzero(used)


def pack(stores: Path, blocks: int, out: Path, model: str = "smollm2-135m", parts: int = 1) -> None:
    """With `parts` > 1 the blocks are split evenly: the first part (with the embedding) goes to `out`, part i
    to the folder `out`-i, each under 64 MiB, carried by its own call and copied into `out` there."""
    import gguf

    reader = gguf.GGUFReader(_gguf_path(PRESETS[model]))
    tokens = used_tokens(stores)
    bounds = np.linspace(0, blocks, parts + 1).round().astype(int)
    for i in range(parts):
        keep = (*(("token_embd.", "output_norm.") if i == 0 else ()),
                *(f"blk.{b}." for b in range(bounds[i], bounds[i + 1])))
        folder = out if i == 0 else out.with_name(f"{out.name}-{i}")
        _write_part(reader, keep, tokens, folder, "blocks.safetensors" if i == 0 else f"blocks-{i}.safetensors")
    _copy_model_files(model, out)
    print(f"{len(tokens):,} token rows used; blocks 0..{blocks - 1} in {parts} part(s)")


def _write_part(reader, keep: tuple[str, ...], tokens: np.ndarray, out: Path, name: str) -> None:
    tensors, meta = {}, {}
    for t in reader.tensors:
        if not t.name.startswith(keep):
            continue
        raw = np.array(t.data).view(np.uint8).reshape(int(t.shape[-1]) if len(t.shape) > 1 else 1, -1).copy()
        if t.name.startswith("token_embd."):
            mask = np.ones(len(raw), bool)
            mask[tokens] = False
            raw[mask] = 0
        tensors[t.name] = raw
        meta[t.name] = json.dumps([t.tensor_type.name, [int(s) for s in t.shape]])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / name
    save_file(tensors, tmp, metadata=meta)
    with open(tmp, "rb") as f, lzma.open(out / f"{name}.xz", "wb", preset=6) as g:
        shutil.copyfileobj(f, g)
    tmp.unlink()
    print(f"{out / name}.xz: {len(tensors)} tensors, {(out / f'{name}.xz').stat().st_size / 1e6:.1f} MB")


def _copy_model_files(model: str, out: Path) -> None:
    folder = Path(resolve_model(model)[0])
    for name in ("config.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (folder / name).exists():
            shutil.copy(folder / name, out / name)
    with open(folder / "tokenizer.json", "rb") as f, lzma.open(out / "tokenizer.json.xz", "wb") as g:
        shutil.copyfileobj(f, g)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stores", type=Path, required=True, help="stores whose texts' tokens the run needs")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--parts", type=int, default=1, help="split the blocks over this many folders (64 MiB a call)")
    a = ap.parse_args()
    pack(a.stores, a.blocks, a.out, parts=a.parts)
