"""The same guarantees on a GPU (skipped where CUDA is absent, e.g. in CI)."""

import pytest
import torch

import steerinterp as si

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PROMPTS = ["hello world, how are you", "a", "the quick brown fox jumps"]


@pytest.fixture(scope="module")
def gpu_tiny():
    return si.load_model("tiny", device="cuda")


def test_engines_agree_on_cuda(gpu_tiny):
    vecs = si.SteeringSet.from_tensors(gpu_tiny, {1: torch.randn(64), 3: torch.randn(64)})
    assert vecs[1].vector.device.type == "cuda"
    for kw in ({"temperature": 0}, {"seed": [1, 2, 3]}):
        a = si.generate(gpu_tiny, PROMPTS, steering=vecs, max_new_tokens=12, engine="hooked", **kw)
        b = si.generate(gpu_tiny, PROMPTS, steering=vecs, max_new_tokens=12, engine="hf", **kw)
        assert a.completion_tokens == b.completion_tokens and a.tokens.device.type == "cuda"


def test_cuda_matches_cpu(gpu_tiny, tiny):
    toks = torch.tensor([[257, 72, 101, 108, 108, 111]])
    with torch.no_grad():
        assert (gpu_tiny(toks.cuda()).cpu() - tiny(toks)).abs().max() < 1e-4
    cpu = si.generate(tiny, PROMPTS, max_new_tokens=10, temperature=0)
    gpu = si.generate(gpu_tiny, PROMPTS, max_new_tokens=10, temperature=0)
    assert cpu.completion_tokens == gpu.completion_tokens


def test_shared_prompt_gradients_on_cuda(gpu_tiny):
    prompts = [p for p in PROMPTS for _ in range(2)]
    out = si.generate(gpu_tiny, prompts, max_new_tokens=5, seed=list(range(6)))
    grads = []
    for shared in (False, True):
        vecs = si.SteeringSet.zeros(gpu_tiny, [0, 2])
        lp = si.teacher_forced_logprobs(gpu_tiny, out.tokens, out.completion_mask, vecs,
                                        attention_mask=out.attention_mask,
                                        prompt_length=out.prompt_length if shared else None)
        lp.sum().backward()
        grads.append([v.vector.grad for v in vecs])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_training_step_on_cuda(gpu_tiny, tmp_path):
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.tasks import arithmetic_task

    cfg = TrainConfig(steps=2, group_size=2, prompts_per_step=2, max_new_tokens=4)
    res = Trainer(gpu_tiny, arithmetic_task("add1"), cfg, tmp_path / "run", progress=False).train()
    assert res.steering[0].vector.device.type == "cuda"
    loaded = si.SteeringSet.load(tmp_path / "run" / "final", model=gpu_tiny)
    assert loaded[0].vector.device.type == "cuda"
