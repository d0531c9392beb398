import pytest
import torch

from pipeline.common.config import VARIANTS, TunerConfig, variant_config
from pipeline.tuner.model import Tuner


def cfg(**kw):
    base = dict(llm_width=24, stream_layer=2, cross_layer=1, width=16, blocks=2, heads=2, out_dim=8, dropout=0.0)
    return TunerConfig(**{**base, **kw})


def states(b=3, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {1: torch.randn(b, t, 24, generator=g), 2: torch.randn(b, t, 24, generator=g)}


FUSED = {"pooled-concat": dict(kind="pooled-concat", pool_layers=[1, 2]),
         "scalar-mix": dict(kind="scalar-mix", pool_layers=[1, 2]),
         "lmort-multi": dict(kind="lmort", cross_layers=[1, 2])}


@pytest.mark.parametrize("kind", ["lmort", "pooled-linear", *FUSED])
@pytest.mark.parametrize("sink", [True, False])
def test_shapes_and_padding_never_changes_a_vector(kind, sink):
    tuner = Tuner(cfg(**FUSED.get(kind, {"kind": kind}), attention_sink=sink)).eval()
    x = states()
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 1 + [0] * 6]).bool()
    v = tuner(x, mask)
    assert v.shape == (3, 8) and torch.isfinite(v).all()
    # the same texts, padded differently (garbage in the padding), give the same vectors
    wide = {k: torch.cat([s, 1e3 * torch.randn(3, 5, 24)], 1) for k, s in x.items()}
    wide_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)
    assert torch.allclose(tuner(wide, wide_mask), v, atol=1e-5)
    alone = tuner({k: s[1:2, :4] for k, s in x.items()}, mask[1:2, :4])
    assert torch.allclose(alone, v[1:2], atol=1e-5)


@pytest.mark.parametrize("kind", ["lmort", "pooled-linear", *FUSED])
def test_bfloat16_states_under_autocast_give_the_float32_vectors_and_gradients(kind):
    """Training and encoding on a bf16 CPU feed the stored states as bfloat16 under autocast (no float32 copy):
    every tuner kind must take them and give the float32 tuner's vectors, to bfloat16's precision, with float32
    gradients for its float32 weights. (torch.autocast runs on any CPU; without native bf16 it is only slower.)"""
    tuner = Tuner(cfg(**FUSED.get(kind, {"kind": kind}))).eval()
    x, mask = states(b=4, t=9), torch.ones(4, 9, dtype=torch.bool)
    want = tuner(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tuner({k: s.to(torch.bfloat16) for k, s in x.items()}, mask)
    assert got.dtype == torch.float32  # normalised in float32 (pooling and the loss stay float32)
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99
    assert not torch.equal(got, want)  # computed in bfloat16, not silently upcast
    got.sum().backward()
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
               for p in tuner.parameters())


def test_sink_position_is_ignored_when_asked():
    tuner = Tuner(cfg(attention_sink=True)).eval()
    x, mask = states(), torch.ones(3, 7, dtype=torch.bool)
    y = {k: s.clone() for k, s in x.items()}
    for s in y.values():
        s[:, 0] *= 100  # a huge-norm state at position 0
    assert torch.allclose(tuner(x, mask), tuner(y, mask), atol=1e-5)


def test_variants_wire_the_layers_as_named():
    wiring = {v: variant_config(v, a_layer=5, u_layer=9, last_layer=30, llm_width=24) for v in VARIANTS}
    assert (wiring["lmort"].stream_layer, wiring["lmort"].cross_layer) == (9, 5)
    assert (wiring["swapped"].stream_layer, wiring["swapped"].cross_layer) == (5, 9)
    assert wiring["emb-only"].layers == [0] and wiring["last-only"].layers == [30]
    assert wiring["pooled-linear"].kind == "pooled-linear"
    full, reduced = Tuner(cfg(width=None)), Tuner(cfg(width=16))
    assert full.num_parameters() > reduced.num_parameters() > Tuner(cfg(kind="pooled-linear")).num_parameters()


def test_loss_falls_on_a_learnable_toy_task():
    """Pairs share a random 'topic' vector: the tuner must learn to match them."""
    torch.manual_seed(0)
    tuner = Tuner(cfg(dropout=0.0, temperature=0.1))
    opt = torch.optim.AdamW(tuner.parameters(), lr=3e-3)  # noisy tokens around a shared topic vector per pair
    losses = []
    for _ in range(80):
        topics = torch.randn(16, 1, 24)
        q = {k: topics + 1.5 * torch.randn(16, 5, 24) for k in (1, 2)}
        d = {k: topics + 1.5 * torch.randn(16, 9, 24) for k in (1, 2)}
        s = tuner(q, torch.ones(16, 5, dtype=torch.bool)) @ tuner(d, torch.ones(16, 9, dtype=torch.bool)).T
        loss = torch.nn.functional.cross_entropy(s / 0.1, torch.arange(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_tuner_sizes_and_their_guard():
    shape = dict(u_layer=0, a_layer=2, last_layer=3, llm_width=576, out_dim=16)
    counts = {size: Tuner(variant_config("lmort", size=size, **shape)).num_parameters()
              for size in ("small", "reduced", "paper")}
    assert counts["small"] < counts["reduced"] < counts["paper"]
    paper = variant_config("lmort", u_layer=0, a_layer=2, last_layer=3, llm_width=64, size="paper")
    assert paper.width is None and paper.blocks == 3 and paper.ff_ratio == 4  # the LLM's width, no projection
    with pytest.raises(ValueError, match="sets blocks"):
        variant_config("lmort", u_layer=0, a_layer=2, last_layer=3, llm_width=64, size="paper", blocks=2)


def test_fusion_baselines_read_the_layers_they_name():
    stored = [0, 3, 6, 9]
    first_last = variant_config("first-last", u_layer=0, a_layer=6, last_layer=9, llm_width=24, stored_layers=stored)
    mix = variant_config("scalar-mix", u_layer=0, a_layer=6, last_layer=9, llm_width=24, stored_layers=stored)
    multi = variant_config("lmort-multi", u_layer=0, a_layer=6, last_layer=9, llm_width=24, stored_layers=stored)
    assert first_last.pool_layers == [0, 9] and first_last.layers == [0, 9]
    assert mix.pool_layers == stored and mix.layers == stored
    assert multi.stream_layer == 0 and multi.cross_layers == stored and multi.kind == "lmort"
    with pytest.raises(ValueError, match="fuses several stored layers"):
        variant_config("scalar-mix", u_layer=0, a_layer=6, last_layer=9, llm_width=24, stored_layers=[6])
    # a layer the tuner does not read never changes its vectors; one it reads does
    x = {layer: torch.randn(2, 5, 24) for layer in (0, 3, 6, 9)}
    mask = torch.ones(2, 5, dtype=torch.bool)
    for config, unread, read in ((first_last, 3, 9), (multi, None, 6)):
        tuner = Tuner(config).eval()
        v = tuner(x, mask)
        if unread is not None:
            assert torch.allclose(tuner({**x, unread: 10 * x[unread]}, mask), v)
        assert not torch.allclose(tuner({**x, read: torch.randn(2, 5, 24)}, mask), v)


def test_scalar_mix_starts_as_a_plain_average_and_learns_its_weights():
    tuner = Tuner(TunerConfig(llm_width=24, stream_layer=1, cross_layer=1, kind="scalar-mix", pool_layers=[1, 2],
                              out_dim=8)).eval()
    assert torch.allclose(torch.softmax(tuner.mix, 0), torch.tensor([0.5, 0.5]))
    x, mask = states(), torch.ones(3, 7, dtype=torch.bool)
    tuner(x, mask).sum().backward()
    assert tuner.mix.grad is not None and tuner.mix.grad.abs().sum() > 0


@pytest.mark.parametrize("knob", [{"similarity": "cosin"}, {"kind": "lmortt"}])
def test_a_misspelt_tuner_knob_is_refused_when_the_config_is_built(knob):
    """`similarity: cosin` once trained a dot-product tuner silently."""
    with pytest.raises(ValueError, match=next(iter(knob))):
        TunerConfig(llm_width=8, stream_layer=0, cross_layer=0, **knob)
