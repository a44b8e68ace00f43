"""Analyses on the embedded SmolLM2 with the RL-trained add1 vectors shipped in examples/."""

from pathlib import Path

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.tasks import arithmetic_task

pytestmark = [pytest.mark.embedded, pytest.mark.slow]
VECTORS = Path(__file__).parents[1] / "examples" / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


@pytest.fixture(scope="module")
def setup(embedded):
    vecs = si.SteeringSet.load(VECTORS, model=embedded)
    task = arithmetic_task("add1")
    problems = list(task.test)[:4]
    rollouts = si.generate(embedded, task.prompts(embedded, problems), steering=vecs, max_new_tokens=12, temperature=1.0,
                           seed=0)
    return embedded, vecs, rollouts


def test_trained_last_layer_vector_reads_out_as_digits(setup):
    model, vecs, _ = setup
    lens = A.vector_logit_lens(model, vecs.subset([29]), k=10)
    boosted = [lens.vocab[i] for i in lens.top(29)]
    assert sum(t.strip().isdigit() for t in boosted) >= 5, boosted  # the RL task's answers are digits
    assert lens.cos.shape == (1, model.cfg.d_vocab)


def test_first_generated_token_moves_most(setup):
    model, vecs, rollouts = setup
    res = A.token_shift(model, rollouts, vecs, track=["To"])
    summ = res.summary().set_index("position")
    assert summ.loc["pos 0", "kl_mean"] > summ.loc["pos > 0", "kl_mean"]
    assert summ.loc["pos 0", "dp[To]_mean"] < 0  # the base model's "To solve ..." opening is pushed down


def test_persistence_identities_hold_on_the_real_model(setup):
    model, vecs, rollouts = setup
    res = A.persistence(model, rollouts, vecs.subset([10, 20]), observed_layers=range(8, 30, 2))
    j10, j20 = res.observed_layers.index(10), res.observed_layers.index(20)
    assert res.diff_diff[0, j10] == pytest.approx(1.0, abs=1e-3) and res.diff_diff[1, j20] == pytest.approx(1.0, abs=1e-3)
    assert torch.isnan(res.diff_diff[1, : j20]).all()
    assert res.delta_norm[0, j10] == pytest.approx(float(vecs[10].vector.norm()), rel=1e-2)


def test_residual_lens_is_silent_before_the_steered_layer(setup):
    model, vecs, rollouts = setup
    res = A.residual_logit_lens(model, rollouts, vecs.subset([20]), layers=[5, 19, 20, 29])
    assert res.kl[0] == 0 and res.kl[1] == 0 and res.kl[2] > 0


def test_block_patching_identities_on_the_real_model(setup):
    from steerinterp.analysis.block_patching import Patch, patched_final_residuals

    model, vecs, rollouts = setup
    pen = vecs.subset([28]).scaled(20.0)
    batch = A.as_batch(rollouts).rows(slice(0, 2))
    out = patched_final_residuals(model, batch, pen, [Patch("no_patch"), Patch("base", base_run=True),
                                                      Patch("skip_layer", attn=True, mlp=True)], layer=29)
    with torch.no_grad():
        _, base = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask,
                                       names_filter=["blocks.29.hook_resid_post"])
    real = batch.attention_mask.bool()
    s = pen[28].vector * pen[28].scale
    assert torch.allclose(out[2][real], (base["blocks.29.hook_resid_post"] + s)[real], atol=2e-3)
    res = A.block_patching(model, batch, pen, [Patch("no_patch"), Patch("skip_attn", attn=True)], positions="completion")
    df = res.to_frame().set_index("patch")
    assert df.loc["no_patch", "kl_from_steered"] < 1e-6 and df.loc["skip_attn", "kl_to_base"] > 0
