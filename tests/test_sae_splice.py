"""Steering and sae-lens's spliced SAEs (HookedSAETransformer.add_sae) work together or refuse clearly."""

import warnings

import pytest
import torch

import steerinterp as si
from steerinterp.errors import SteerInterpError


@pytest.fixture
def spliced():
    from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig

    tiny = si.load_model("tiny", device="cpu")
    model = HookedSAETransformer(tiny.cfg, tiny.tokenizer)
    model.load_state_dict(tiny.state_dict(), strict=False)
    model.eval()
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=tiny.cfg.d_model, d_sae=2 * tiny.cfg.d_model, dtype="float32"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    return tiny, model, sae


def test_attached_steering_dropped_by_add_sae_is_refused(spliced):
    _, model, sae = spliced
    vecs = si.SteeringSet.from_tensors(model, {1: torch.ones(model.cfg.d_model)})
    handle = vecs.attach(model)
    model.add_sae(sae)
    with pytest.raises(SteerInterpError, match="blocks.1.hook_resid_post no longer runs"):
        si.generate(model, ["hi"], max_new_tokens=2)
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        si.generate(model, ["hi"], max_new_tokens=2)  # nothing attached any more: fine


def test_steering_where_an_sae_sits_is_refused_and_its_own_hooks_work(spliced):
    tiny, model, sae = spliced
    tokens = torch.tensor([[5, 9, 11, 3]])
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with si.SteeringSet.from_tensors(tiny, {1: v}).applied(tiny):
        plain = tiny(tokens)
    model.add_sae(sae, use_error_term=True)  # with the error term the SAE is an identity on the forward pass
    with pytest.raises(SteerInterpError, match="an SAE is spliced in at blocks.1.hook_resid_post: steer at "
                                               "blocks.1.hook_resid_post.hook_sae_output"):
        with si.SteeringSet.from_tensors(model, {1: v}).applied(model):
            pass
    after = si.SteeringSet.from_tensors(model, {1: v}, hook="blocks.{layer}.hook_resid_post.hook_sae_output")
    with after.applied(model):
        assert torch.allclose(model(tokens), plain, atol=1e-5)  # later layers read SAE output + v = h + v
    assert si.generate(model, ["hi there"], steering=after, max_new_tokens=4, temperature=0).engine == "hooked"
    with warnings.catch_warnings(record=True) as caught:  # the fast mirror would leave the SAE out: it steps aside
        warnings.simplefilter("always")
        out = si.generate(model, ["hi there"], max_new_tokens=4, temperature=0)
    assert out.engine == "hooked" and any("fast rollout engine unavailable" in str(w.message) for w in caught)
