"""The DiffSAE pipeline on the embedded SmolLM2 with the RL-trained add1 vectors (a few hundred tokens)."""

from pathlib import Path

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp import sae as S
from steerinterp.tasks import arithmetic_task

pytestmark = [pytest.mark.embedded, pytest.mark.slow]
VECTORS = Path(__file__).parents[1] / "examples" / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def test_diffsae_pipeline_on_the_embedded_model(embedded, tmp_path):
    model = embedded
    vecs = si.SteeringSet.load(VECTORS, model=model)
    task = arithmetic_task("add1")
    gens = S.sample_labelled(model, task, vecs, problems=list(task.train)[:8], samples_per_problem=2, max_new_tokens=12)
    assert gens.correct.tolist() == [task.is_correct(t, task.train[i]) for t, i in
                                     zip(gens.output.texts, gens.problem_index.tolist())]
    labels = torch.arange(len(gens)) % 2 == 0  # fixed labels: both classes present whatever was sampled
    diffs = S.collect_differences(model, gens.output, vecs, [20, 29], labels=labels, positions="all",
                                  problems=gens.problem_index)
    d20 = diffs["blocks.20.hook_resid_post"]
    assert d20.d_in == model.cfg.d_model and len(d20) > 400
    assert d20.delta.norm(dim=-1).max() < 1e3  # the attention sink (position 0) is left out
    dsae = S.train_diff_sae(d20, d_sae=1152, k=8, batch_size=128, training_tokens=6_400, heldout=0.25,
                            n_batches_for_norm_estimate=4)
    q = dsae.heldout_quality
    assert 0 < q.fvu < 1.0 and q.l0 <= 8
    freq = S.feature_frequencies(dsae, d20)
    assert freq.n_correct == freq.n_incorrect == 8 and len(freq.to_frame(5)) == 5
    contexts = S.top_contexts(model, dsae, d20, freq.top(2), k=3).to_frame()
    assert contexts["context"].str.contains(r"\[\[", regex=True).all()
    assert len(S.decoder_logit_lens(model, dsae, freq.top(2)).to_frame(k=3)) == 12

    test = list(task.test)[:4]
    batch = A.teacher_forcing_batch(model, task.prompts(model, test), [p.final_answer for p in test])
    attr = S.sae_feature_attribution(model, batch, dsae, A.completion_logprob_metric(), steering=vecs)
    assert attr.output_change < 1e-2
    parts = attr.attribution.sum(1) + attr.error + attr.bias + attr.reference
    assert torch.allclose(parts, attr.grad_x_input, rtol=1e-3, atol=1e-2)

    back = S.load_diff_sae(dsae.save(tmp_path / "dsae"))
    v = S.feature_vector(back, attr.top(1)[0], norm=float(vecs[20].vector.norm()))
    out = si.generate(model, task.prompts(model, test[:2]), steering=si.SteeringSet([v]), max_new_tokens=4, temperature=0)
    assert len(out) == 2
