"""The reranker: the relevance of a (query, passage) pair read from the frozen LLM's stored token states, with
interaction between the two texts' tokens. The LLM never runs over a passage: its states come from the corpus
store, and everything on the passage's side is query-independent, so it is computed once per passage.

Both designs share the input side:

    X = sum_l mix_l proj_l(LN(states l))       ELMo's scalar mix of the stored layers, at the reranker's width
    X = EncoderBlock(X)                        local order + bidirectional self-attention (the stored token saw
                                               only its left), the same blocks for query and passage

late (ColBERT): every token projected and L2-normalised, and the MaxSim sum

    s(q, p) = exp(a) sum_i in q  max_j in p  <q_i, p_j>      (a learnt: the softmax's temperature)

cross (the query reads the passage, as DPR's reader scores passages): the query's tokens are the stream and attend
to the passage's tokens in `cross_blocks` pre-norm residual blocks (cross-attention, then a feed-forward network);
the stream's mean over the query's tokens is mapped to a logit, added to the MaxSim score of the same tokens

    Y = X_q;  Y = Y + CrossAttn(LN(Y), LN(X_p));  Y = Y + FFN(LN(Y))
    s(q, p) = MaxSim(q, p) + w . LN(mean_i Y_i) + b          (w starts at 0: the design starts where late does)

(A cross-attention stack alone, trained from scratch on a few thousand queries, learnt to match tokens far more
slowly than MaxSim does: dev nDCG@10 0.25 against 0.65 on scifact after the same 1,632 queries. With the MaxSim
term the interaction only has to learn what MaxSim misses.)

Position 0 of a stored text is the LLM's attention sink: never a key and never pooled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..activations.store import describe_difference
from ..common.errors import ConfigError, StoreError
from ..common.pooling import pooling_mask
from ..common.weights import save_weights
from .blocks import TokenHead

DESIGNS = ("cross", "late")


@dataclass
class RerankerConfig:
    """The reranker's shape; the layers are the stored layers its mix reads."""

    llm_width: int
    layers: list[int] = field(default_factory=list)
    design: str = "cross"  # cross: the query's tokens attend to the passage's; late: ColBERT's MaxSim
    width: int = 128
    heads: int = 4
    encoder_blocks: int = 1  # self-attention blocks over each text, shared by query and passage
    cross_blocks: int = 1  # cross: query-reads-passage blocks
    late_dim: int = 64  # late: the projected token vectors' size
    ff_ratio: int = 2
    kernel: int = 7
    dropout: float = 0.1
    attention_sink: bool = True

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("the reranker needs at least one stored layer")
        if self.design not in DESIGNS:
            raise ConfigError(f"reranker design must be one of {', '.join(DESIGNS)}, not {self.design!r}")
        if self.width % self.heads:
            raise ConfigError(f"reranker width {self.width} is not a multiple of its {self.heads} heads")

    def to_dict(self) -> dict:
        return asdict(self)


class CrossBlock(nn.Module):
    """Pre-norm residual: the query's tokens attend to the passage's (keys and values computed once a passage, by
    `keys_values`), then a feed-forward network."""

    def __init__(self, d: int, heads: int, ff_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff_ratio * d), nn.GELU(), nn.Linear(ff_ratio * d, d))
        self.ln_q, self.ln_kv, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def keys_values(self, p: torch.Tensor) -> torch.Tensor:
        """[N, Tp, d] passage tokens -> [N, Tp, 2d]: what every query reading this passage attends to."""
        return self.kv(self.ln_kv(p))

    def forward(self, y: torch.Tensor, kv: torch.Tensor, p_keep: torch.Tensor) -> torch.Tensor:
        """y: [M, Tq, d] query streams; kv: [M, Tp, 2d] their passages' keys and values; p_keep: [M, Tp]."""
        m, t, d = y.shape
        h = self.heads
        q = self.q(self.ln_q(y)).view(m, t, h, d // h).transpose(1, 2)
        k, v = kv.view(m, kv.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=p_keep[:, None, None, :])
        y = y + self.drop(self.out(a.transpose(1, 2).reshape(m, t, d)))
        return y + self.drop(self.ff(self.ln_ff(y)))


class Reranker(TokenHead):
    def __init__(self, cfg: RerankerConfig):
        super().__init__(cfg)
        d = cfg.width
        self.proj = nn.Linear(d, cfg.late_dim)
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # a MaxSim sum of cosines spans a few units: the softmax
        # needs it scaled (ColBERT's 32 query tokens span 32); learnt, from exp(2.3) = 10
        if cfg.design == "cross":
            self.cross = nn.ModuleList(CrossBlock(d, cfg.heads, cfg.ff_ratio, cfg.dropout)
                                       for _ in range(cfg.cross_blocks))
            self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
            nn.init.zeros_(self.head[1].weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, states: dict[int, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """{layer: [B, T, llm_width]} stored states and their [B, T] mask -> the text's tokens (the MaxSim vectors,
        projected and normalised, then for cross the tokens at the reranker's width) and the [B, T] tokens that
        count (the sink and padding left out). A passage's encoding depends on nothing else: it is computed once."""
        keep = pooling_mask(mask, self.cfg.attention_sink)
        x = self.mix(states)
        for block in self.encoder:
            x = block(x, mask, keep)
        v = F.normalize(self.proj(x).float(), dim=-1)
        return (v if self.cfg.design == "late" else torch.cat([v.to(x.dtype), x], -1)), keep

    def _maxsim(self, q: torch.Tensor, q_keep: torch.Tensor, p: torch.Tensor, p_keep: torch.Tensor,
                pairs: torch.Tensor | None) -> torch.Tensor:
        if pairs is None:  # every query against every passage: no copy of the passages per query
            sim = torch.einsum("bid,njd->bnij", q.float(), p.float())  # [B, N, Tq, Tp]
            keep = p_keep[None, :, None, :]
        else:
            sim = torch.einsum("bid,bnjd->bnij", q.float(), p[pairs].float())
            keep = p_keep[pairs][:, :, None, :]
        sim = sim.masked_fill(~keep, -1.0)  # cosines >= -1: a pad never wins a max
        return (sim.max(-1).values * q_keep[:, None, :]).sum(-1) * self.log_scale.exp()

    def score(self, q: torch.Tensor, q_keep: torch.Tensor, p: torch.Tensor, p_keep: torch.Tensor,
              pairs: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded queries [B, Tq, .] and passages [N, Tp, .] -> [B, n] float32 scores of query b against passage
        pairs[b, j] (pairs: [B, n] indices into the passages; None: every passage, n = N)."""
        k = self.cfg.late_dim
        late = self._maxsim(q[..., :k], q_keep, p[..., :k], p_keep, pairs)
        if self.cfg.design == "late":
            return late
        q, p = q[..., k:], p[..., k:]
        if pairs is None:
            pairs = torch.arange(p.shape[0], device=p.device).expand(q.shape[0], -1)
        b, n = pairs.shape
        y = q[:, None].expand(b, n, *q.shape[1:]).reshape(b * n, *q.shape[1:])
        keep = p_keep[pairs].reshape(b * n, -1)
        for block in self.cross:
            kv = block.keys_values(p)[pairs].reshape(b * n, p.shape[1], -1)
            y = block(y, kv, keep)
        qk = q_keep[:, None].expand(b, n, -1).reshape(b * n, -1, 1).to(y.dtype)
        pooled = (y * qk).sum(1) / qk.sum(1).clamp_min(1.0)
        return late + self.head(pooled).float().view(b, n)

    # ------------------------------------------------------------ saving, with the stores it was trained on

    def digest(self) -> str:
        """A hash of the weights and the configuration: passage encodings stored beside an index name the reranker
        that made them (rerank.py `EncodedPassages.save`)."""
        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """safetensors weights + reranker.json: the config and `extra` (the stores' shared fingerprint, dev)."""
        save_weights(folder, self.state_dict(), "reranker.json", {"config": self.cfg.to_dict(), **(extra or {})})

    @classmethod
    def load(cls, folder: Path, stores: dict | None = None, device: str = "cpu") -> Reranker:
        """A saved reranker; with `stores` (the shared fingerprint of the stores it will read), one trained on other
        stores (model, layers, template, case, dtype) is refused in one line."""
        folder = Path(folder)
        if not (folder / "reranker.json").is_file():
            raise FileNotFoundError(f"{folder}: no reranker here (run `lmort train-reranker`)")
        meta = json.loads((folder / "reranker.json").read_text())
        if stores is not None and meta.get("stores") != stores:
            difference = describe_difference(meta.get("stores") or {}, stores, ("reranker has", "stores have"))
            raise StoreError(f"{folder}: the reranker was trained on other stores: {difference}")
        reranker = cls(RerankerConfig(**meta["config"]))
        reranker.load_state_dict(load_file(folder / "model.safetensors"))
        return reranker.to(device).eval()
