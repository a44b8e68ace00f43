"""The default engine returns what the HookedTransformer returns under any hook and any weight change
(issue: "the default generation engine ignores the user's own hooks and weight edits")."""

import warnings

import pytest
import torch

import steerinterp as si
from steerinterp.errors import SteerInterpError
from steerinterp.generation.engines import _MIRRORS

PROMPTS = ["hello there", "what is this", "a b c"]


@pytest.fixture
def model():
    m = si.load_model("tiny", device="cpu")
    si.generate(m, PROMPTS, max_new_tokens=2, temperature=0)  # builds and caches the fast mirror
    assert m in _MIRRORS
    return m


def _both(model, **kw):
    kw = {"max_new_tokens": 8, "temperature": 0, **kw}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = si.generate(model, PROMPTS, **kw)
    hooked = si.generate(model, PROMPTS, engine="hooked", **kw)
    return auto, hooked, [str(w.message) for w in caught]


def _zero(act, hook):
    return torch.zeros_like(act)


def test_user_hooks_in_a_context_are_honoured(model):
    before = si.generate(model, PROMPTS, max_new_tokens=8, temperature=0).texts
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", _zero)]):
        auto, hooked, warned = _both(model)
    assert auto.texts == hooked.texts and auto.texts != before and auto.engine == "hooked"
    assert any("hooks the fast engine cannot run" in w and "blocks.1.hook_resid_post" in w for w in warned)
    assert si.generate(model, PROMPTS, max_new_tokens=8, temperature=0).engine == "hf"  # hooks gone: fast again


def test_add_hook_and_attached_steering_and_torch_hooks_are_honoured(model):
    model.add_hook("blocks.2.hook_resid_post", _zero)
    try:
        auto, hooked, _ = _both(model, seed=3, temperature=1.0)
        assert auto.texts == hooked.texts and auto.engine == "hooked"
        with pytest.raises(SteerInterpError, match="cannot honour the model's own hooks"):
            si.generate(model, PROMPTS, engine="hf", max_new_tokens=2)
    finally:
        model.reset_hooks(including_permanent=True)
    vecs = si.SteeringSet.from_tensors(model, {1: 3 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))})
    handle = vecs.attach(model)
    try:
        auto, hooked, _ = _both(model)
        assert auto.texts == hooked.texts and auto.engine == "hooked"
    finally:
        handle.remove()
    h = model.blocks[0].mlp.register_forward_hook(lambda mod, args, out: out * 0)
    try:
        auto, hooked, _ = _both(model)
        assert auto.texts == hooked.texts and auto.engine == "hooked"
    finally:
        h.remove()


@pytest.mark.parametrize("edit", ["W_O.data", "W_Q.data", "W_in.inplace", "load_state_dict", "new_tensor", "W_E.data"])
def test_weight_edits_are_honoured(model, edit):
    clean = si.generate(model, PROMPTS, max_new_tokens=8, temperature=0).texts
    with torch.no_grad():
        if edit == "W_O.data":
            model.blocks[2].attn.W_O.data.zero_()
        elif edit == "W_Q.data":  # a weight the mirror holds as a copy
            model.blocks[1].attn.W_Q.data.mul_(-3.0)
        elif edit == "W_in.inplace":
            model.blocks[3].mlp.W_in.mul_(4.0)
        elif edit == "load_state_dict":
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            sd["blocks.0.attn._W_K"].mul_(-2.0)
            model.load_state_dict(sd)
        elif edit == "new_tensor":
            model.blocks[2].ln2.w = torch.nn.Parameter(model.blocks[2].ln2.w * 5, requires_grad=False)
        else:
            model.embed.W_E.data[model.to_tokens("h", prepend_bos=False)[0, 0]] *= 50  # one token's row
    auto, hooked, _ = _both(model)
    assert auto.texts == hooked.texts and auto.engine == "hf"  # the mirror was rebuilt or shares the edit
    assert auto.texts != clean


def test_a_bias_the_mirror_lacks_falls_back_and_says_why(model):
    with torch.no_grad():
        model.blocks[1].attn.b_O.data += 0.5
    auto, hooked, warned = _both(model)
    assert auto.texts == hooked.texts and auto.engine == "hooked"
    assert any("non-zero bias blocks.1.attn.b_O" in w for w in warned)


def test_the_mirror_shares_all_but_the_query_key_value_weights(model):
    mirror = _MIRRORS[model]
    assert all(n.split(".")[-1] in ("W_Q", "_W_K", "_W_V") for n in mirror.copies)
    assert {"embed.W_E", "unembed.W_U", "blocks.0.attn.W_O", "blocks.0.mlp.W_in"} <= set(mirror.shared)


def test_the_rl_sampler_obeys_the_same_rule(model):
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.tasks import arithmetic_task

    cfg = TrainConfig(steps=1, group_size=2, prompts_per_step=2, max_new_tokens=3)
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", _zero)]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = Trainer(model, arithmetic_task("add1"), cfg, progress=False).train().metrics[0]
    assert m["engine"] == "hooked"
