"""oneDNN pre-packed weights for the fast engine's decode steps in bfloat16 (generation.packed_linear): the
packed product is bit-equal to F.linear, generation gives the same tokens and log-probs packed or not, a
packing that is not exact is refused (and the plain product used, with a warning), and nothing stays packed
after a generation."""

import pytest
import torch

import steerinterp as si
from steerinterp.generation import packed_linear
from steerinterp.generation.engines import PACK_AFTER_STEPS, PACK_MAX_ROWS, HFEngine, current_mirror
from steerinterp.generation.packed_linear import (
    PackableLinear,
    packed_weights,
    packing_applies,
    packing_unavailable,
    packing_unavailable_here,
)

pytestmark = pytest.mark.skipif(packing_unavailable_here() is not None, reason=str(packing_unavailable_here()))


@pytest.fixture(scope="module")
def tiny_bf16():
    return si.load_model("tiny", device="cpu", dtype=torch.bfloat16)


def _vecs(model):
    g = torch.Generator().manual_seed(0)
    return si.SteeringSet.from_tensors(model, {i: torch.randn(model.cfg.d_model, generator=g)
                                               for i in range(model.cfg.n_layers)})


def _packed(root):
    return [m for m in root.modules() if isinstance(m, PackableLinear) and m.packed is not None]


def test_every_linear_layer_of_the_mirror_is_packable(tiny_bf16):
    hf = current_mirror(tiny_bf16).hf
    plain = [n for n, m in hf.named_modules() if type(m) is torch.nn.Linear]
    assert plain == [] and packing_applies(hf)
    assert packing_unavailable(hf, 8) is None


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_a_packed_product_is_bit_equal_to_f_linear(rows):
    g = torch.Generator().manual_seed(rows)
    layer = PackableLinear(48, 80, bias=True).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_(generator=g)
        layer.bias.normal_(generator=g)
    x = torch.randn(rows, 1, 48, generator=g).bfloat16()
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with packed_weights(layer, rows) as n:
        assert n == 1 and layer.packed is not None
        got = layer(x)
    assert torch.equal(got, want) and layer.packed is None


def test_packed_and_plain_generation_are_identical(tiny_bf16):
    """Past PACK_AFTER_STEPS decode steps the engine packs; tokens and log-probs equal the plain engine's, and no
    packed weight is left after the call."""
    prompts = ["hello there", "a b c", "what is this", "x"]
    kw = dict(steering=_vecs(tiny_bf16), max_new_tokens=PACK_AFTER_STEPS + 6, seed=[0, 1, 2, 3], stop_at_eos=False)
    packs, plain = HFEngine(tiny_bf16), HFEngine(tiny_bf16, pack=False)
    a = si.generate(tiny_bf16, prompts, engine=packs, **kw)
    b = si.generate(tiny_bf16, prompts, engine=plain, **kw)
    assert packs.packed_layers > 0 and plain.packed_layers == 0
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert _packed(packs.hf) == []
    short = HFEngine(tiny_bf16)
    si.generate(tiny_bf16, prompts, engine=short, **(kw | {"max_new_tokens": PACK_AFTER_STEPS}))
    assert short.packed_layers == 0  # a generation this short never packs
    wide = HFEngine(tiny_bf16)
    si.generate(tiny_bf16, ["hello there"] * (PACK_MAX_ROWS + 1), engine=wide,
                **(kw | {"seed": list(range(PACK_MAX_ROWS + 1))}))
    assert wide.packed_layers == 0  # nor does a batch wider than PACK_MAX_ROWS


def test_float32_weights_are_never_packed(tiny):
    engine = HFEngine(tiny)
    si.generate(tiny, ["hello"], max_new_tokens=PACK_AFTER_STEPS + 2, engine=engine, seed=0, stop_at_eos=False)
    assert engine.packed_layers == 0 and not packing_applies(engine.hf)
    assert "bfloat16" in packing_unavailable(engine.hf, 1)


def test_an_inexact_packing_is_refused_and_generation_falls_back(tiny_bf16, monkeypatch):
    """A packed product that differs from F.linear (here: a weight packed with one entry changed) is found by
    the probe; the engine then warns and multiplies by the plain weights, giving the reference tokens."""
    real = packed_linear._pack

    def off_by_one(weight, rows):
        bad = weight.detach().clone()
        bad.view(-1)[0] += 1
        return real(bad, rows)

    hf = current_mirror(tiny_bf16).hf
    monkeypatch.setattr(packed_linear, "_pack", off_by_one)
    assert "differs from F.linear" in packing_unavailable(hf, 4)
    tiny_bf16_fresh = si.load_model("tiny", device="cpu", dtype=torch.bfloat16)  # a mirror with no verdict cached
    prompts = ["hello there", "a b c"]
    kw = dict(steering=_vecs(tiny_bf16_fresh), max_new_tokens=PACK_AFTER_STEPS + 4, seed=[0, 1], stop_at_eos=False)
    engine = HFEngine(tiny_bf16_fresh)
    with pytest.warns(UserWarning, match="without pre-packed weights.*differs from F.linear"):
        got = si.generate(tiny_bf16_fresh, prompts, engine=engine, **kw)
    assert engine.packed_layers == 0
    monkeypatch.setattr(packed_linear, "_pack", real)
    want = si.generate(tiny_bf16_fresh, prompts, engine=HFEngine(tiny_bf16_fresh, pack=False), **kw)
    assert torch.equal(got.tokens, want.tokens)
