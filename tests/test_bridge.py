"""TransformerLens 4.x keeps only TransformerBridge: steering and generation work on it too."""

import pytest
import torch

import steerinterp as si


@pytest.fixture(scope="module")
def bridge():
    return si.load_model("tiny", device="cpu", backend="bridge")


def test_bridge_satisfies_the_protocol(bridge):
    assert type(bridge).__name__ == "TransformerBridge"
    assert isinstance(bridge, si.HookedModel)


def test_bridge_logits_match_hooked_transformer(bridge, tiny):
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    with torch.no_grad():
        assert (bridge(toks) - tiny(toks)).abs().max() < 1e-5


def test_steering_applies_on_a_bridge_and_is_removed(bridge, tiny):
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    vecs = si.SteeringSet.from_tensors(tiny, {1: torch.randn(64), 2: torch.randn(64)})
    with torch.no_grad():
        base = bridge(toks)
        with vecs.applied(bridge):
            b = bridge(toks)
        with vecs.applied(tiny):
            t = tiny(toks)
        assert (b - base).abs().max() > 1e-2
        assert (b - t).abs().max() < 1e-5
        assert torch.equal(bridge(toks), base)


def test_generation_on_a_bridge_matches_the_hooked_path(bridge, tiny):
    prompts = ["hello there", "a", "what is up"]
    vecs = si.SteeringSet.from_tensors(tiny, {1: 2 * torch.randn(64, generator=torch.Generator().manual_seed(1))})
    for steering in (None, vecs):
        a = si.generate(bridge, prompts, steering=steering, max_new_tokens=10, temperature=0)
        b = si.generate(tiny, prompts, steering=steering, max_new_tokens=10, temperature=0, engine="hooked")
        assert a.engine == "bridge" and a.completion_tokens == b.completion_tokens


def test_teacher_forced_logprobs_on_a_bridge(bridge, tiny):
    vecs = si.SteeringSet.zeros(tiny, [1])
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    cm = torch.tensor([[0, 0, 0, 1, 1, 1]]).bool()
    lp_b = si.teacher_forced_logprobs(bridge, toks, cm, vecs)
    lp_b.sum().backward()
    assert vecs[1].vector.grad is not None and vecs[1].vector.grad.abs().sum() > 0
    assert torch.allclose(lp_b.detach(), si.teacher_forced_logprobs(tiny, toks, cm, vecs).detach(), atol=1e-5)
