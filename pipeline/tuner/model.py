"""The LMORT tuner (DESIGN.md, step 2): reads two layers of a frozen LLM, outputs one dense vector per text.

    stream = proj(LN(U-layer states))                 the block stream starts from the U-layer
    ctx    = proj(LN(A-layer states))                 cross-attention keys and values
    repeat N blocks:
        stream = LN(stream + SelfAttn(stream))        bidirectional, padding (and sink) masked, fused SDPA
        stream = LN(stream + CrossAttn(stream, ctx))
        stream = LN(stream + FFN(stream))
    vector = out(mean over real tokens of stream)     cosine / temperature, or inner product

The ablations are configs of the same module: swapped wiring, one layer feeding both attentions
(A-only, U-only, embedding-only, last-only), and a pooled-linear baseline (mean-pooled layer, one Linear).
The reviewers' fusion baselines read several stored layers at once:
    first-last   out(concat(mean(first layer), mean(last layer)))
    scalar-mix   out(gamma * sum_l softmax(w)_l mean(layer l))       ELMo's scalar mix over every stored layer
    lmort-multi  the LMORT stack whose cross-attention reads every stored layer at once (keys concatenated
                 along the tokens, each layer tagged with a learned layer embedding)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..common.batching import length_buckets
from ..common.config import TunerConfig
from ..common.pooling import mean_pool, pooling_mask
from ..common.precision import autocast, feed_dtype
from ..common.weights import save_weights


class Attention(nn.Module):
    """Bidirectional multi-head attention of a stream over keys and values (itself, or another layer's states),
    through PyTorch's fused scaled-dot-product kernel. No dropout on the attention weights: on a CPU drawing that
    [B, heads, T, T] mask cost more than the rest of a training step (dropout stays on the residual branches)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d] stream, ctx: [B, S, d] keys and values, keep: [B, S] True where a key may be attended."""
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if x.device.type == "cpu":  # the CPU's fused kernel is faster in float32 than in bfloat16 (forward and
            with torch.autocast("cpu", enabled=False):  # backward: 0.08 against 0.13 s for 64 x 7 heads x 256)
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep[:, None, None, :])
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff_ratio: int, dropout: float):
        super().__init__()
        self.self_attn, self.cross_attn = Attention(d, heads), Attention(d, heads)
        self.ff = nn.Sequential(nn.Linear(d, ff_ratio * d), nn.GELU(), nn.Linear(ff_ratio * d, d))
        self.ln_self, self.ln_cross, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, keep: torch.Tensor, ctx_keep: torch.Tensor) -> torch.Tensor:
        """keep: [B, T] True where a key may be attended (real tokens, not the sink); ctx_keep the same for ctx."""
        x = self.ln_self(x + self.drop(self.self_attn(x, x, keep)))
        x = self.ln_cross(x + self.drop(self.cross_attn(x, ctx, ctx_keep)))
        return self.ln_ff(x + self.drop(self.ff(x)))


class Tuner(nn.Module):
    def __init__(self, cfg: TunerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width or cfg.llm_width
        self.in_norm = nn.ModuleDict({str(layer): nn.LayerNorm(cfg.llm_width) for layer in cfg.layers})
        if cfg.kind == "pooled-linear":
            self.out = nn.Linear(cfg.llm_width, cfg.out_dim)
        elif cfg.kind == "pooled-concat":
            self.out = nn.Linear(cfg.llm_width * len(cfg.pool_layers), cfg.out_dim)
        elif cfg.kind == "scalar-mix":
            self.mix = nn.Parameter(torch.zeros(len(cfg.pool_layers)))  # softmax weights, uniform at the start
            self.gamma = nn.Parameter(torch.ones(()))
            self.out = nn.Linear(cfg.llm_width, cfg.out_dim)
        elif cfg.kind == "lmort":
            self.proj = nn.ModuleDict({str(layer): nn.Linear(cfg.llm_width, d) if cfg.width else nn.Identity()
                                       for layer in cfg.layers})
            heads = cfg.heads or max(1, d // 64)
            self.blocks = nn.ModuleList(Block(d, heads, cfg.ff_ratio, cfg.dropout) for _ in range(cfg.blocks))
            self.out = nn.Linear(d, cfg.out_dim)
            if cfg.cross_layers:  # which layer each key came from
                self.layer_emb = nn.Parameter(torch.zeros(len(cfg.cross_layers), d))
        else:
            raise ValueError(f"unknown tuner kind {cfg.kind!r}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """safetensors weights + tuner.json (the config and `extra`: epoch, dev score, the stores' fingerprint)."""
        save_weights(folder, self.state_dict(), "tuner.json", {"config": self.cfg.to_dict(), **(extra or {})})

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> Tuner:
        meta = json.loads((Path(folder) / "tuner.json").read_text())
        tuner = cls(TunerConfig(**meta["config"]))
        tuner.load_state_dict(load_file(Path(folder) / "model.safetensors"))
        return tuner.to(device).eval()

    def forward(self, states: dict[int, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """states: {layer: [B, T, llm_width]}, mask: [B, T] real tokens -> [B, out_dim] text vectors."""
        keep = pooling_mask(mask, self.cfg.attention_sink)

        def mean(x):
            return mean_pool(x, keep)

        def inp(layer):  # bfloat16 states (fed under autocast) stay bfloat16: LayerNorm takes them as they are
            x = states[layer]
            return self.in_norm[str(layer)](x if x.dtype == torch.bfloat16 else x.float())

        def proj(layer):
            return self.proj[str(layer)](inp(layer))

        kind = self.cfg.kind
        if kind == "pooled-linear":
            v = self.out(mean(inp(self.cfg.stream_layer)))
        elif kind == "pooled-concat":
            v = self.out(torch.cat([mean(inp(layer)) for layer in self.cfg.pool_layers], dim=-1))
        elif kind == "scalar-mix":
            pooled = torch.stack([mean(inp(layer)) for layer in self.cfg.pool_layers], dim=1)  # [B, layers, H]
            v = self.out(self.gamma * (F.softmax(self.mix, dim=0)[None, :, None] * pooled).sum(1))
        else:
            x = proj(self.cfg.stream_layer)
            if self.cfg.cross_layers:  # every listed layer's tokens are keys: [B, layers * T, d]
                ctx = torch.cat([proj(layer) + self.layer_emb[i] for i, layer in enumerate(self.cfg.cross_layers)], 1)
                ctx_keep = keep.repeat(1, len(self.cfg.cross_layers))
            else:
                ctx, ctx_keep = proj(self.cfg.cross_layer), keep
            for block in self.blocks:
                x = block(x, ctx, keep, ctx_keep)
            v = self.out(mean(x))
        v = v.float()  # the vector (and so the scores and the loss) in float32, under autocast too
        return F.normalize(v, dim=-1) if self.cfg.similarity == "cosine" else v

    def score_scale(self) -> float:
        return 1.0 / self.cfg.temperature if self.cfg.similarity == "cosine" else 1.0

    # encoding (as sentence-transformers' model.encode): from a store, or from new text through the LLM

    @torch.inference_mode()
    def encode_store(self, store, ids: list[str] | None = None, batch_tokens: int = 16384, desc: str = "encode",
                     progress: bool = True, bf16: bool = True) -> np.ndarray:
        """[N, out_dim] float32 vectors of `ids` (default: every text of an ActivationStore), in the order given,
        under bf16 autocast where the device computes bfloat16 natively (unless `bf16` is False)."""
        ids = list(store.ids) if ids is None else ids
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        feed = feed_dtype(device, bf16)
        out = np.zeros((len(ids), self.cfg.out_dim), dtype=np.float32)
        with tqdm(total=len(ids), unit="text", desc=desc, disable=not progress) as bar:
            for idx in length_buckets([int(store.lengths[store.row[i]]) for i in ids], batch_tokens):
                states, mask = store.batch([ids[i] for i in idx], self.cfg.layers, feed)
                with autocast(device, bf16):
                    out[idx] = self({k: v.to(device) for k, v in states.items()}, mask.to(device)).float().cpu().numpy()
                bar.update(len(idx))
        self.train(was_training)
        return out

    @torch.inference_mode()
    def encode_texts(self, llm, texts: list[str], template, max_length: int, kind: str = "query",
                     bf16: bool = True) -> np.ndarray:
        """The online path: new text -> the truncated frozen LLM (a FrozenLLM) -> the tuner, with no store."""
        fmt = template.format_query if kind == "query" else (lambda t: template.format_passage("", t))
        token_ids, _ = llm.tokenize([fmt(t) for t in texts], max_length)
        out = np.zeros((len(texts), self.cfg.out_dim), dtype=np.float32)
        device = next(self.parameters()).device
        feed = feed_dtype(device, bf16)  # as encode_store feeds the stored states
        self.eval()
        for idx, states, mask in llm.iter_hidden_states(token_ids, self.cfg.layers, progress=False):
            with autocast(device, bf16):
                out[idx] = self({k: v.to(device, feed) for k, v in states.items()},
                                mask.to(device).bool()).float().cpu().numpy()
        return out


def trained_on(folder: Path) -> dict | None:
    """The shared fingerprint of the stores a saved tuner was trained on (None for tuners saved before it was
    recorded)."""
    return json.loads((Path(folder) / "tuner.json").read_text()).get("stores")
