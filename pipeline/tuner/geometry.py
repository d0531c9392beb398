"""Layer geometry (DESIGN.md, step 1): alignment and uniformity of pooled hidden states, per layer.

alignment  = mean over relevant pairs (q, d+) of ||f(q) - f(d+)||^2           lower = pairs closer
uniformity = log mean over pairs of texts (x, y) of exp(-2 ||f(x) - f(y)||^2)  lower = better spread
(Wang and Isola, 2020), with f the L2-normalised mean-pooled state of one layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment(q: torch.Tensor, d: torch.Tensor) -> float:
    """q, d: [N, H] L2-normalised rows, row i of q relevant to row i of d."""
    return float((q - d).pow(2).sum(-1).mean())


def uniformity(x: torch.Tensor) -> float:
    """x: [N, H] L2-normalised rows; all distinct pairs."""
    sq = torch.pdist(x.to(torch.float64), p=2).pow(2)
    return float(torch.logsumexp(-2 * sq, dim=0) - torch.log(torch.tensor(float(sq.numel()), dtype=torch.float64)))


def alignment_per_layer(pooled_q: torch.Tensor, pooled_d: torch.Tensor) -> list[float]:
    """pooled_q, pooled_d: [N, layers, H] un-normalised pooled states of the pairs' two sides."""
    q, d = F.normalize(pooled_q.float(), dim=-1), F.normalize(pooled_d.float(), dim=-1)
    return [alignment(q[:, layer], d[:, layer]) for layer in range(q.shape[1])]


def uniformity_per_layer(pooled: torch.Tensor) -> list[float]:
    """pooled: [N, layers, H] pooled states of distinct texts."""
    x = F.normalize(pooled.float(), dim=-1)
    return [uniformity(x[:, layer]) for layer in range(x.shape[1])]


def choose_layers(align: list[float], unif: list[float]) -> dict:
    a_layer = min(range(len(align)), key=align.__getitem__)
    u_layer = min(range(len(unif)), key=unif.__getitem__)
    if a_layer != u_layer:
        verdict = (f"The paper's finding holds: the alignment optimum (layer {a_layer}) and the uniformity "
                   f"optimum (layer {u_layer}) sit in different layers.")
    else:
        verdict = (f"The paper's finding does not hold here: alignment and uniformity are both best at "
                   f"layer {a_layer}.")
    if unif[a_layer] > 0.1 * unif[u_layer]:
        verdict += (f" Caution: the A-layer's space is nearly collapsed (uniformity {unif[a_layer]:.3f} against "
                    f"{unif[u_layer]:.3f} at the U-layer), so its low alignment is partly trivial "
                    "(DESIGN.md: the attention sink).")
    return {"a_layer": a_layer, "u_layer": u_layer, "verdict": verdict}
