"""Fast rollouts for every architecture of the zoo (issue 16).

For each tiny random checkpoint (``models.zoo``): which engine ``generate`` picks; greedy steered generation
token-identical between the fast engine (the checkpoint's own ``transformers`` class on the
HookedTransformer's weights), the HookedTransformer and plain ``transformers`` ``generate`` with an
equivalent forward hook on the decoder layer; steering at every mirrored hook site; the mirror noticing an
edit to a shared, an in-place and a copied weight; the mirror's own memory within ``MIRROR_MEMORY_BUDGET``.
Each test records ``capability`` / ``support`` for ``scripts/support_matrix.py``.
"""

import warnings

import pytest
import torch

import steerinterp as si
from steerinterp.generation.engines import _MIRRORS, hf_mirror
from steerinterp.generation.hf_mirror import MIRROR_MEMORY_BUDGET, mirror_architecture
from steerinterp.models import ZOO, zoo_checkpoint
from steerinterp.steering.sites import SITE_TABLES

FAST = "fast engine"
GREEDY = "greedy = HF generate"
PROMPTS = ["hello there, how", "ab"]  # different lengths: left padding
NEW = 8
#: architectures whose mirror cannot be exact (generation falls back to the hooked engine), with the reason
FALLBACK: dict[str, str] = {}


def _load(name):
    return si.load_model(zoo_checkpoint(name), device="cpu")


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request):
    name = request.param
    return name, _load(name)


def _support(name):
    return "fallback" if name in FALLBACK else "yes"


def _vector(model, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.cfg.d_model, generator=g)


def _greedy(model, steering=None, engine="auto"):
    return si.generate(model, PROMPTS, steering=steering, max_new_tokens=NEW, temperature=0, engine=engine)


def test_engine_choice(zoo, record_property):
    name, model = zoo
    record_property("capability", FAST)
    record_property("support", _support(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _greedy(model)
    messages = [str(w.message) for w in caught if "fast rollout engine unavailable" in str(w.message)]
    if name in FALLBACK:
        assert out.engine == "hooked" and any(FALLBACK[name] in m for m in messages), messages
    else:
        assert out.engine == "hf" and not messages, messages
        assert _MIRRORS[model].architecture == mirror_architecture(model) in SITE_TABLES


def _hf_generate(name, layer, vector):
    """Plain transformers greedy generate, the vector added to decoder layer ``layer``'s output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = zoo_checkpoint(name)
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(directory))
    tok.padding_side = "left"
    layers = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers

    def add(module, args, out):
        return (out[0] + vector,) + tuple(out[1:]) if isinstance(out, tuple) else out + vector

    handle = layers[layer].register_forward_hook(add)
    try:
        enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = hf.generate(**enc, do_sample=False, max_new_tokens=NEW, pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        rows.append(row)
    return rows


def test_greedy_steered_matches_hooked_and_hf_generate(zoo, record_property):
    name, model = zoo
    record_property("capability", GREEDY)
    record_property("support", _support(name))
    layer = model.cfg.n_layers // 2
    vec = _vector(model)
    vecs = si.SteeringSet.from_tensors(model, {layer: vec})
    fast, hooked = _greedy(model, vecs), _greedy(model, vecs, engine="hooked")
    assert fast.engine == ("hooked" if name in FALLBACK else "hf")
    assert fast.completion_tokens == hooked.completion_tokens
    assert fast.completion_tokens == _hf_generate(name, layer, vec)
    assert fast.completion_tokens != _greedy(model).completion_tokens  # the vector matters


def test_every_mirrored_site_steers_like_the_hooked_engine(zoo, record_property):
    name, model = zoo
    record_property("capability", FAST)
    record_property("support", _support(name))
    if name in FALLBACK:
        return
    layer = model.cfg.n_layers // 2
    table = SITE_TABLES[mirror_architecture(model)]
    hf = hf_mirror(model)
    for kind in table:
        hf.get_submodule(table[kind][0].format(l=layer))  # the module exists in the mirror
        if kind == "mlp.hook_post":  # d_mlp-wide: reached by adaptive steering (captured there, added at mlp_out)
            g = torch.Generator().manual_seed(1)
            steer = si.AdaptiveSteering({layer: torch.randn(model.cfg.d_mlp, generator=g)},
                                        {layer: _vector(model, 2, scale=0.3)})
        else:
            steer = si.SteeringSet.from_tensors(model, {layer: _vector(model, 3)}, hook=f"blocks.{{layer}}.{kind}")
        fast, hooked = _greedy(model, steer, engine="hf"), _greedy(model, steer, engine="hooked")
        assert fast.completion_tokens == hooked.completion_tokens, kind


def _logits_agree(model):
    probe = torch.tensor([[5, 17, 40, 3, 99, 7, 61, 2, 33, 12]])
    with torch.no_grad():
        return torch.allclose(hf_mirror(model)(probe).logits, model(probe), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(ZOO))
def test_the_mirror_notices_edits(name, record_property):
    record_property("capability", FAST)
    record_property("support", _support(name))
    if name in FALLBACK:
        return
    model = _load(name)
    _greedy(model)
    mirror = _MIRRORS[model]
    params = dict(model.named_parameters())
    assert mirror.copies, "the zoo's shapes leave room for some copies"
    copied = next(iter(mirror.copies))
    in_place = [n for n in mirror.shared if n.endswith(("W_Q", "W_K", "W_V")) and n not in mirror.copies]
    shared = f"blocks.{model.cfg.n_layers - 1}.mlp.W_out"
    assert shared in mirror.shared and in_place, (mirror.shared, in_place)
    with torch.no_grad():
        for edited in (shared, in_place[-1]):  # storage the HF model reads: seen at once, nothing rebuilt
            params[edited].data.mul_(1.5)
            assert mirror.divergence(model) is None and _logits_agree(model) and _MIRRORS[model] is mirror
        params[copied].data.mul_(-2.0)  # a copy: found stale, exactly, and rebuilt
        assert mirror.divergence(model) == f"{copied} was edited"
        assert _logits_agree(model) and _MIRRORS[model] is not mirror
    assert _greedy(model).completion_tokens == _greedy(model, engine="hooked").completion_tokens


def test_the_mirror_memory_stays_within_budget(zoo, record_property):
    name, model = zoo
    record_property("capability", FAST)
    record_property("support", _support(name))
    if name in FALLBACK:
        return
    _greedy(model)
    mirror = _MIRRORS[model]
    record_property("copied_fraction", f"{mirror.copied_fraction:.3f}")
    assert 0 < mirror.copied_fraction <= MIRROR_MEMORY_BUDGET


@pytest.mark.parametrize("engine", ["hooked", "hf"])
def test_sampling_logits_include_the_final_soft_cap(engine):
    """Gemma-2 soft-caps its logits after the unembedding: both engines' next-token logits (what sampling
    draws from) and teacher-forced log-probs (what RL differentiates) must be the capped ones."""
    from transformers import AutoModelForCausalLM

    from steerinterp.generation.engines import final_logits

    directory = zoo_checkpoint("gemma2")
    model = _load("gemma2")
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokens = torch.tensor([[5, 70, 80, 90, 100, 33]])
    with torch.no_grad():
        ref = hf(tokens).logits
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        assert torch.allclose(final_logits(model, resid), ref, atol=1e-4)
        assert not torch.allclose(model.unembed(model.ln_final(resid)), ref, atol=1e-3)  # the cap matters here
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 3:] = True
    lp = si.teacher_forced_logprobs(model, tokens, mask)
    want = torch.log_softmax(ref[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0]
    assert torch.allclose(lp[:, 1:][mask[:, 1:]], want[mask[:, 1:]], atol=1e-4)
    # the same seed samples the same tokens from either engine: both draw from the capped distribution
    a = si.generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3, engine=engine)
    b = si.generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=3, engine="hooked")
    assert torch.equal(a.tokens, b.tokens)
