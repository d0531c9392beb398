"""The span reader: an extractive answer head over the frozen LLM's stored token states.

The question's states come from the queries store (or the question's own forward at `lmort ask`), the passage's
from the corpus store: the LLM never runs over a passage at answer time. A causal LLM's passage token has seen
neither the question nor its own right context, so the head supplies both, as QANet/BiDAF did over static vectors:

    C = sum_l mix_l proj_l(LN(passage l))      ELMo's scalar mix of the chosen layers, at the reader's width
    Q = sum_l mix_l proj_l(LN(question l))     (the same mix and projections)
    C, Q = EncoderBlock(C), EncoderBlock(Q)    depthwise conv (local order) + bidirectional self-attention + FFN
    S_ij = w . [c_i; q_j; c_i * q_j]           BiDAF's trilinear similarity (context-query attention)
    A = softmax_j(S) Q                         what of the question each passage token attends to
    B = softmax_j(S) softmax_i(S)^T C          query-to-context attention, as QANet computes it
    M0 = Linear([C; A; C*A; C*B])
    M1 = ModelBlocks(M0), M2 = ModelBlocks(M1) (shared weights, as QANet's three passes)
    start = w_s . [M0; M1], end = w_e . [M0; M2]   over passage tokens; the sink and the padding masked

A span (i, j) scores start_i + end_j, with i <= j < i + max_answer_tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..activations.store import describe_difference
from ..common.errors import ConfigError
from ..common.pooling import pooling_mask
from ..common.weights import save_weights
from ..interaction.blocks import EncoderBlock, TokenHead

NEG = -1e4  # a masked logit (finite: bfloat16 and float16 both hold it)


@dataclass
class ReaderConfig:
    """The span reader's shape. These defaults are the rag configuration's `reader:` model knobs' (a test holds
    them equal); the layers are the stored layers the mix reads."""

    llm_width: int
    layers: list[int] = field(default_factory=list)
    width: int = 128
    heads: int = 4
    encoder_blocks: int = 1  # embedding-encoder blocks, shared by passage and question
    model_blocks: int = 1  # the model-encoder stack, applied twice (M1, M2); 2 costs 1.55x the step
    ff_ratio: int = 2
    kernel: int = 7  # the depthwise convolution's width (local order: the stored states saw only the left)
    dropout: float = 0.1
    max_answer_tokens: int = 30
    attention_sink: bool = True  # position 0 of a stored text is the LLM's attention sink: never a key or answer

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("the span reader needs at least one stored layer")
        if self.width % self.heads:
            raise ConfigError(f"reader width {self.width} is not a multiple of its {self.heads} heads")

    def to_dict(self) -> dict:
        return asdict(self)


class ContextQueryAttention(nn.Module):
    """BiDAF's attention flow with QANet's query-to-context term: [C; A; C*A; C*B] projected back to d."""

    def __init__(self, d: int):
        super().__init__()
        self.w_c, self.w_q = nn.Linear(d, 1, bias=False), nn.Linear(d, 1, bias=False)
        self.w_cq = nn.Parameter(torch.empty(d).uniform_(-d ** -0.5, d ** -0.5))
        self.bias = nn.Parameter(torch.zeros(()))
        self.out = nn.Linear(4 * d, d)

    def forward(self, c: torch.Tensor, q: torch.Tensor, c_keep: torch.Tensor, q_keep: torch.Tensor) -> torch.Tensor:
        s = self.w_c(c) + self.w_q(q).transpose(1, 2) + (c * self.w_cq) @ q.transpose(1, 2) + self.bias  # [B, Tc, Tq]
        s = s.float()
        s_q = torch.softmax(s.masked_fill(~q_keep[:, None, :], NEG), dim=2)  # each passage token over the question
        s_c = torch.softmax(s.masked_fill(~c_keep[:, :, None], NEG), dim=1)  # each question token over the passage
        a = s_q.to(q.dtype) @ q
        b = (s_q @ s_c.transpose(1, 2)).to(c.dtype) @ c
        return self.out(torch.cat([c, a, c * a, c * b], dim=-1))


class SpanReader(TokenHead):
    def __init__(self, cfg: ReaderConfig):
        super().__init__(cfg)
        d = cfg.width
        self.cq = ContextQueryAttention(d)
        self.model_stack = nn.ModuleList(EncoderBlock(d, cfg.heads, cfg.ff_ratio, cfg.kernel, cfg.dropout)
                                         for _ in range(cfg.model_blocks))
        self.start, self.end = nn.Linear(2 * d, 1), nn.Linear(2 * d, 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _encode(self, states: dict[int, torch.Tensor], mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.mix(states)
        for block in self.encoder:
            x = block(x, mask, keep)
        return x

    def _model(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.model_stack:
            x = block(x, mask, keep)
        return x

    def forward(self, passage: dict[int, torch.Tensor], passage_mask: torch.Tensor,
                question: dict[int, torch.Tensor], question_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """passage: {layer: [B, Tp, llm_width]} with its [B, Tp] mask; question: {layer: [B, Tq, llm_width]} with
        its mask -> start and end logits [B, Tp] in float32 (NEG where no answer may start or end)."""
        c_keep = pooling_mask(passage_mask, self.cfg.attention_sink)
        q_keep = pooling_mask(question_mask, self.cfg.attention_sink)
        c = self._encode(passage, passage_mask, c_keep)
        q = self._encode(question, question_mask, q_keep)
        m0 = self.cq(c, q, c_keep, q_keep)
        m1 = self._model(m0, passage_mask, c_keep)
        m2 = self._model(m1, passage_mask, c_keep)
        start = self.start(torch.cat([m0, m1], -1)).squeeze(-1).float()
        end = self.end(torch.cat([m0, m2], -1)).squeeze(-1).float()
        return start.masked_fill(~c_keep, NEG), end.masked_fill(~c_keep, NEG)

    # ------------------------------------------------------------ saving, with the stores it was trained on

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """safetensors weights + reader.json: the config and `extra` (the stores' shared fingerprint, dev scores)."""
        save_weights(folder, self.state_dict(), "reader.json", {"config": self.cfg.to_dict(), **(extra or {})})

    @classmethod
    def load(cls, folder: Path, stores: dict | None = None, device: str = "cpu") -> SpanReader:
        """A saved reader; with `stores` (the shared fingerprint of the stores it will read), one trained on other
        stores (model, layers, template, case, dtype) is refused with the difference spelled out."""
        from ..common.errors import StoreError

        folder = Path(folder)
        if not (folder / "reader.json").is_file():
            raise FileNotFoundError(f"{folder}: no span reader here (run `lmort train-reader`)")
        meta = json.loads((folder / "reader.json").read_text())
        if stores is not None and meta.get("stores") != stores:
            raise StoreError(f"{folder}: the reader was trained on other stores: "
                             f"{describe_difference(meta.get('stores') or {}, stores, ('reader has', 'stores have'))}")
        reader = cls(ReaderConfig(**meta["config"]))
        reader.load_state_dict(load_file(folder / "model.safetensors"))
        return reader.to(device).eval()


def best_spans(start: torch.Tensor, end: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """The best (start, end) per row with start <= end < start + max_tokens, and its score start + end:
    [B] each. start, end: [B, T] logits."""
    t = start.shape[1]
    scores = start[:, :, None] + end[:, None, :]
    i = torch.arange(t, device=start.device)
    allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_tokens)
    flat = scores.masked_fill(~allowed, float("-inf")).flatten(1)
    best, where = flat.max(dim=1)
    return where // t, where % t, best


def span_loss(start: torch.Tensor, end: torch.Tensor, gold_start: torch.Tensor,
              gold_end: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the gold start and end tokens, averaged."""
    return (F.cross_entropy(start, gold_start) + F.cross_entropy(end, gold_end)) / 2
