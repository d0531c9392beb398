"""Mean pooling of token states into one vector per text: what the layer analysis, the raw-layer baselines and
the tuner's pooled variants share."""

from __future__ import annotations

import torch


def pooling_mask(mask: torch.Tensor, drop_first: bool) -> torch.Tensor:
    """The tokens that pooling averages: real tokens, minus position 0 when it is an attention sink
    (kept for one-token texts, which would otherwise pool nothing)."""
    mask = mask.bool().clone()
    if drop_first:
        longer = mask.sum(1) > 1
        mask[longer, 0] = False
    return mask


def mean_pool(states: torch.Tensor, mask: torch.Tensor, drop_first: bool = False) -> torch.Tensor:
    """[B, T, H] states, [B, T] mask -> [B, H] mean over the pooled tokens (computed in float32)."""
    m = pooling_mask(mask, drop_first).unsqueeze(-1).to(torch.float32)
    return (states.to(torch.float32) * m).sum(1) / m.sum(1).clamp_min(1.0)
