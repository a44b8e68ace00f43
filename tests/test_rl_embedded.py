"""RL on the real embedded model: the trainer's fast gradient pass against a plain one, and two steps
of training that touch only the vectors."""

import pytest
import torch

import steerinterp as si
from steerinterp.rl import TrainConfig, Trainer
from steerinterp.tasks import arithmetic_task

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


def test_fast_gradient_pass_matches_a_plain_one_on_the_embedded_model(embedded):
    """Shared-prompt KV cache + no autograd before the first vector + unembedding at completion positions
    only gives the log-probs and gradients of a full forward over every row (float32 rounding)."""
    task = arithmetic_task("add1")
    prompts = [p for p in task.prompts(embedded, task.train[:2]) for _ in range(2)]
    out = si.generate(embedded, prompts, max_new_tokens=6, seed=[0, 1, 2, 3])
    g = torch.Generator().manual_seed(0)
    values = {layer: torch.randn(576, generator=g) * 0.3 for layer in (3, 17, 29)}
    results = []
    for fast in (True, False):
        vecs = si.SteeringSet.from_tensors(embedded, values, trainable=True)
        lp = si.teacher_forced_logprobs(embedded, out.tokens, out.completion_mask, vecs,
                                        attention_mask=out.attention_mask, prompt_mask=out.prompt_mask,
                                        skip_frozen_prefix=fast, prompt_length=out.prompt_length if fast else None)
        (lp * torch.tensor([1.0, -0.5, 0.25, 2.0])[:, None]).sum().backward()
        results.append((lp.detach(), torch.stack([v.vector.grad for v in vecs])))
    (lp_fast, g_fast), (lp_plain, g_plain) = results
    assert (lp_fast - lp_plain).abs().max() < 1e-3
    assert g_plain.abs().max() > 0
    assert (g_fast - g_plain).abs().max() < 1e-3 * g_plain.abs().max()


def test_two_rl_steps_train_only_the_vectors(embedded, tmp_path):
    task = arithmetic_task("add1")
    cfg = TrainConfig(steps=2, group_size=4, prompts_per_step=2, max_new_tokens=8, warmup_ratio=0.0, seed=0)
    before = {n: p.detach().clone() for n, p in embedded.named_parameters() if n in ("W_U", "blocks.29.mlp.W_out")}
    result = Trainer(embedded, task, cfg, tmp_path / "run", progress=False).train()
    df = result.to_frame()
    assert list(df["step"]) == [0, 1] and set(df["engine"]) == {"hf"}  # the fast sampler on the real model
    assert ((df["accuracy"] >= 0) & (df["accuracy"] <= 1)).all() and (df["tokens"] > 0).all()
    assert df["groups_with_signal"].sum() > 0  # some group had mixed rewards, so the vectors got a gradient
    assert len(result.steering) == 30 and all(v.vector.detach().norm() > 0 for v in result.steering)
    for n, p in embedded.named_parameters():
        assert p.grad is None, n
        if n in before:
            assert torch.equal(p.detach(), before[n]), n
    loaded = si.SteeringSet.load(tmp_path / "run" / "final", model=embedded)
    assert all(torch.equal(a.vector, b.vector.detach()) for a, b in zip(loaded, result.steering))
