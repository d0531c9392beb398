"""Build a model folder from `bench/gpu/gpu_pack.py`'s file: dequantise with the gguf library, rename to the
transformers names, undo llama.cpp's q/k row permutation (as transformers' own GGUF loader does), save float32
safetensors, and a config with as many blocks as were carried (the stored layers need no more).

    python bench/gpu/gpu_model.py --packed .gpu --out $LMORT_CACHE/models/smollm2-135m [--check FOLDER]
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def hf_weights(packed: Path) -> dict[str, np.ndarray]:
    """Every carried part: blocks.safetensors.xz in `packed`, and blocks-<i>.safetensors.xz there or in the
    folders the packer split off (`packed`-<i>, carried by earlier calls and copied beside it)."""
    config = json.loads((packed / "config.json").read_text())
    out = {}
    for part in sorted(packed.glob("blocks*.safetensors.xz")):
        out.update(_part_weights(part, config))
    return out


def _part_weights(part: Path, config: dict) -> dict[str, np.ndarray]:
    with lzma.open(part) as f:
        raw = f.read()
    tmp = part.with_suffix(".tmp")
    tmp.write_bytes(raw)
    out = {}
    with safe_open(tmp, "numpy") as f:
        meta = f.metadata()
        for name in f.keys():
            qtype, shape = json.loads(meta[name])
            w = gguf.quants.dequantize(f.get_tensor(name), gguf.GGMLQuantizationType[qtype]).astype(np.float32)
            w = w.reshape(list(reversed(shape))) if len(shape) > 1 else w.reshape(-1)
            if name == "token_embd.weight":
                out["model.embed_tokens.weight"] = w
            elif name == "output_norm.weight":
                out["model.norm.weight"] = w
            else:
                block, kind = re.match(r"blk\.(\d+)\.(\w+)\.weight", name).groups()
                if kind == "attn_q":
                    w = unpermute(w, config["num_attention_heads"])
                elif kind == "attn_k":
                    w = unpermute(w, config["num_key_value_heads"])
                out[f"model.layers.{block}.{NAMES[kind]}.weight"] = w
    tmp.unlink()
    return out


def build(packed: Path, out: Path) -> None:
    weights = hf_weights(packed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, out / "model.safetensors")
    for f in packed.iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, out / f.name)
    with lzma.open(packed / "tokenizer.json.xz") as f, open(out / "tokenizer.json", "wb") as g:
        shutil.copyfileobj(f, g)
    # the config says how many blocks there are: the carried ones (the model is cut after them anyway)
    config = json.loads((out / "config.json").read_text())
    config["num_hidden_layers"] = len({k.split(".")[2] for k in weights if k.startswith("model.layers.")})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    print(f"{out}: {len(weights)} tensors, {sum(v.size for v in weights.values()):,} parameters")


def check(packed: Path, reference: Path) -> None:
    """Every carried tensor equals the locally converted model's, bit for bit (zeroed embedding rows aside)."""
    weights = hf_weights(packed)
    with safe_open(reference / "model.safetensors", "numpy") as f:
        for name, w in weights.items():
            ref = f.get_tensor(name)
            if name == "model.embed_tokens.weight":
                rows = np.flatnonzero(np.abs(w).sum(1) > 0)
                w, ref = w[rows], ref[rows]
            assert w.shape == ref.shape and np.array_equal(w, ref), name
    print(f"{len(weights)} tensors identical to {reference}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packed", type=Path, default=Path(".gpu"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--check", type=Path, help="a locally converted model folder to compare with")
    a = ap.parse_args()
    if a.check:
        check(a.packed, a.check)
    if a.out:
        build(a.packed, a.out)
