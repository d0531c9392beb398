import math

import torch

from pipeline.common.pooling import mean_pool
from pipeline.tuner.geometry import alignment, choose_layers, uniformity


def test_alignment_and_uniformity_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # pair 1: ||(1,-1)||^2 = 2, pair 2: 0 -> mean 1
    assert alignment(q, d) == 1.0
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # squared distances: 2, 4, 2 -> log((e^-4 + e^-8 + e^-4) / 3)
    expected = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert abs(uniformity(x) - expected) < 1e-9


def test_mean_pool_drops_the_sink_but_not_a_single_token():
    states = torch.tensor([[[100.0], [1.0], [3.0], [7.0]], [[5.0], [9.0], [9.0], [9.0]]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert torch.allclose(mean_pool(states, mask), torch.tensor([[104 / 3], [5.0]]))
    assert mean_pool(states, mask, drop_first=True).tolist() == [[2.0], [5.0]]


def test_choose_layers_and_verdict():
    c = choose_layers([0.9, 0.2, 0.5], [-1.0, -0.5, -3.0])
    assert (c["a_layer"], c["u_layer"]) == (1, 2) and "holds" in c["verdict"]
    assert "does not hold" in choose_layers([0.1, 0.5], [-2.0, -1.0])["verdict"]
    assert "Caution" not in choose_layers([0.9, 0.2, 0.5], [-1.0, -0.5, -3.0])["verdict"]
    assert "nearly collapsed" in choose_layers([0.5, 0.01], [-1.0, -0.02])["verdict"]
