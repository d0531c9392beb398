"""Token-level blocks over the frozen LLM's stored states, shared by the heads that read them with interaction: the
span reader (answers/span_reader.py) and the reranker (reranker.py). A causal LLM's stored token has seen neither its
right context nor the other text, so each head first mixes the stored layers down to its width and gives every
token both directions (a depthwise convolution for local order, bidirectional self-attention for the rest)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScalarMix(nn.Module):
    """ELMo's scalar mix, moved after the projection (the same linear map, applied once per layer):
    gamma * sum_l softmax(w)_l proj_l(LN(layer l)). The LayerNorm has no affine part, so no gradient flows back
    through the 576-wide inputs: a layer costs one normalisation and one matmul, the mix is done at `width`."""

    def __init__(self, layers: list[int], llm_width: int, width: int):
        super().__init__()
        self.layers = list(layers)
        self.proj = nn.ModuleDict({str(layer): nn.Linear(llm_width, width) for layer in layers})
        self.weights = nn.Parameter(torch.zeros(len(layers)))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, states: dict[int, torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.weights.float(), 0)
        out = 0
        for i, layer in enumerate(self.layers):
            x = states[layer]
            x = F.layer_norm(x, x.shape[-1:])
            out = out + w[i] * self.proj[str(layer)](x)
        return self.gamma * out


class EncoderBlock(nn.Module):
    """Pre-norm residual: depthwise convolution, bidirectional self-attention (padding and sink masked), FFN."""

    def __init__(self, d: int, heads: int, ff_ratio: int, kernel: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff_ratio * d), nn.GELU(), nn.Linear(ff_ratio * d, d))
        self.ln_conv, self.ln_attn, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """mask: [B, T] real tokens (the convolution sees zeros past the end); keep: [B, T] attendable keys."""
        x = x + self.drop(self.conv((self.ln_conv(x) * mask[..., None]).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop(self.attend(self.ln_attn(x), keep))
        return x + self.drop(self.ff(self.ln_ff(x)))


class TokenHead(nn.Module):
    """What every head over stored tokens starts from (the span reader, the reranker): its `cfg` (layers, llm_width,
    width, encoder_blocks, heads, ff_ratio, kernel, dropout), the stored layers mixed and projected to `width`, then
    the encoder blocks (built in this order, before the head's own modules: the same initialisation)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.mix = ScalarMix(cfg.layers, cfg.llm_width, cfg.width)
        self.encoder = nn.ModuleList(EncoderBlock(cfg.width, cfg.heads, cfg.ff_ratio, cfg.kernel, cfg.dropout)
                                     for _ in range(cfg.encoder_blocks))
