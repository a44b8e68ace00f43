"""Chunking the analyses over rows, senders, patches, layers and positions changes no result.

On the float64 tiny model: where the chunked and the unchunked computation do the same arithmetic (a forward
from a cached residual, block by block, a steered run started at its vector's block) the results are equal bit
for bit; where a chunk changes the shape of a matrix product (fewer rows: CPU float64 kernels round a row's
product differently by a few ulp depending on the row count) or regroups a float64 sum, they agree to 1e-10.
Memory itself is measured in benchmarks/analysis_memory.py.
"""

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.analysis.block_patching import Patch, patched_final_residuals, standard_patches
from steerinterp.analysis.path_patching import LogitMetric, Node, completion_logprob_metric, path_patch, token_logprob_metric
from steerinterp.errors import SteerInterpError
from tests.conftest import random_vector

PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nhi<|im_end|>\n",
           "a longer prompt here, longer than the others"]
COMPLETIONS = ["To solve it: 5", "hello there", "x y"]


@pytest.fixture(scope="module")
def batch(tiny64):
    return A.teacher_forcing_batch(tiny64, PROMPTS, COMPLETIONS)  # left- and right-padded rows


def _close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape
    both_nan = torch.isnan(a) & torch.isnan(b)
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert (a - b)[~both_nan].abs().max() <= tol if (~both_nan).any() else True


def test_rows_per_forward_budget(tiny64, batch):
    from steerinterp.analysis.batch import budget_rows, rows_per_forward

    assert rows_per_forward(tiny64, batch) == len(batch)  # short rows: all at once
    assert rows_per_forward(tiny64, batch, 2) == 2
    assert budget_rows(si.load_model("tiny", device="cpu"), 2000) >= 1
    with pytest.raises(SteerInterpError, match="batch_size"):
        rows_per_forward(tiny64, batch, 0)


def test_run_blocks_from_a_cached_residual_and_block_by_block_is_one_forward(tiny64, batch):
    from steerinterp.analysis.batch import run_blocks, run_cached

    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 0), 3: random_vector(tiny64, 1)})
    final, cache = run_blocks(tiny64, batch, vecs, ["blocks.1.hook_resid_post"])
    _, ref = run_cached(tiny64, batch, vecs, ["blocks.3.hook_resid_post", "blocks.1.hook_resid_post"])
    assert torch.equal(final, ref["blocks.3.hook_resid_post"])
    later, _ = run_blocks(tiny64, batch, vecs, start=2, resid=cache["blocks.1.hook_resid_post"])
    assert torch.equal(later, final)
    x = None
    for layer in range(tiny64.cfg.n_layers):
        x, _ = run_blocks(tiny64, batch, vecs, start=layer, resid=x, stop=layer + 1)
    assert torch.equal(x, final)
    with pytest.raises(SteerInterpError, match="residual entering"):
        run_blocks(tiny64, batch, vecs, start=2)


def test_paired_caches_empty_a_chunk_when_the_loop_moves_on(tiny64, batch):
    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 0)})
    seen = []
    for _, (_, base), (_, steered) in A.paired_caches(tiny64, batch, vecs, ["blocks.2.hook_resid_post"], batch_size=1):
        assert list(base.keys()) == ["blocks.2.hook_resid_post"]
        seen.append((base, steered))
    assert len(seen) == 3 and all(len(b.keys()) == 0 and len(s.keys()) == 0 for b, s in seen)


# ---- path patching ---------------------------------------------------------------------------------------------------
SENDER_SETS = [[Node.resid(2)], [Node.head(3, h) for h in range(4)], Node.head(3, 1), Node.mlp(3), Node.head(2, 0),
               [Node.mlp(2), Node.head(2, 3)]]


@pytest.mark.parametrize("receivers", [[Node.logits()], [Node.q(3, 2), Node.v(3, 1)], [Node.mlp_in(3)]])
@pytest.mark.parametrize("metric", [completion_logprob_metric(), token_logprob_metric(77, "completion")])
def test_path_patch_chunks_change_nothing(tiny64, batch, receivers, metric):
    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 3, 2.0)})
    kw = dict(new_steering=vecs)
    whole = path_patch(tiny64, batch, SENDER_SETS, receivers, metric, batch_size=3, sender_chunk=6,
                       position_chunk=10**6, **kw)
    per_sender = path_patch(tiny64, batch, SENDER_SETS, receivers, metric, batch_size=3, sender_chunk=1, position_chunk=1, **kw)
    _close(per_sender.values, whole.values)
    _close([per_sender.reference, per_sender.new], [whole.reference, whole.new])
    per_row = path_patch(tiny64, batch, SENDER_SETS, receivers, metric, batch_size=1, sender_chunk=2, position_chunk=3, **kw)
    _close(per_row.values, whole.values)
    _close([per_row.reference, per_row.new], [whole.reference, whole.new])
    default = path_patch(tiny64, batch, SENDER_SETS, receivers, metric, **kw)
    _close(default.values, whole.values)
    # a plain callable (full logits, one sequence at a time) gives the metric's own values
    plain = path_patch(tiny64, batch, SENDER_SETS, receivers, lambda logits, b: metric(logits, b), batch_size=3, **kw)
    _close(plain.values, whole.values)
    _close([plain.reference, plain.new], [whole.reference, whole.new])


def test_logit_metrics_on_full_logits_equal_the_old_formulas(tiny64, batch):
    with torch.no_grad():
        logits = tiny64(batch.tokens, attention_mask=batch.attention_mask)
    lp = torch.log_softmax(logits.double(), -1)
    sel = batch.positions("completion")
    old_token = (lp[..., 77] * sel).sum(-1) / sel.sum(-1).clamp_min(1)
    old_completion = (lp[:, :-1].gather(-1, batch.tokens[:, 1:, None])[..., 0] * batch.predicting_mask[:, :-1]).sum(-1)
    assert isinstance(token_logprob_metric(77), LogitMetric)
    _close(token_logprob_metric(77, "completion")(logits, batch), old_token, 1e-12)
    _close(completion_logprob_metric()(logits, batch), old_completion, 1e-12)


def test_path_patch_starting_late_equals_the_full_frozen_forward(tiny64, batch):
    """Step 1 starts at the first sender's block from the reference residual; with every head and MLP frozen
    before it, a full forward from the tokens computes the same residual."""
    from steerinterp.analysis.batch import run_blocks
    from steerinterp.steering.hooks import hooks_applied

    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 4, 2.0)})
    metric = completion_logprob_metric()
    res = path_patch(tiny64, batch, [Node.head(3, 2)], [Node.logits()], metric, new_steering=vecs)
    z = [f"blocks.{x}.attn.hook_z" for x in range(4)]
    mlp = [f"blocks.{x}.hook_mlp_out" for x in range(4)]
    _, ref = run_blocks(tiny64, batch, None, z + mlp)
    _, new = run_blocks(tiny64, batch, vecs, z)

    def frozen(name):
        def fn(act, hook):
            out = ref[name].clone()
            if name == "blocks.3.attn.hook_z":
                out[:, :, 2] = new[name][:, :, 2]
            return out

        return fn

    with torch.no_grad(), hooks_applied(tiny64, [(nm, frozen(nm)) for nm in z + mlp]):
        logits = tiny64(batch.tokens, attention_mask=batch.attention_mask)
    assert float(res.values[0]) == pytest.approx(float(metric(logits, batch).mean()), abs=1e-10)


# ---- block patching --------------------------------------------------------------------------------------------------
def test_block_patching_chunks_change_nothing(tiny64, batch):
    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 5, 2.0)})
    patches = standard_patches(tiny64)
    together = patched_final_residuals(tiny64, batch, vecs, patches, layer=2, patch_chunk=len(patches))
    one_by_one = patched_final_residuals(tiny64, batch, vecs, patches, layer=2, patch_chunk=1)
    real = batch.attention_mask.bool()
    _close(together[:, real], one_by_one[:, real])
    for positions in ("first", "completion"):
        kw = dict(layer=2, positions=positions, track=[77, 12])
        whole = A.block_patching(tiny64, batch, vecs, batch_size=3, patch_chunk=len(patches), position_chunk=10**6, **kw)
        chunked = A.block_patching(tiny64, batch, vecs, batch_size=1, patch_chunk=2, position_chunk=2, **kw)
        default = A.block_patching(tiny64, batch, vecs, **kw)
        for other in (chunked, default):
            assert other.names == whole.names and other.n_positions == whole.n_positions
            _close(other.kl_to_base, whole.kl_to_base)
            _close(other.kl_from_steered, whole.kl_from_steered)
            _close(other.kl_by_position, whole.kl_by_position)
            _close(other.kl_from_steered_by_position, whole.kl_from_steered_by_position)
            _close(other.kl_steered_base_by_position, whole.kl_steered_base_by_position)
            _close(other.effect_lost, whole.effect_lost)
            for tok in whole.tracked:
                _close(other.tracked[tok], whole.tracked[tok])
    # the patch order of a sweep does not matter either
    rev = patched_final_residuals(tiny64, batch, vecs, patches[::-1], layer=2, patch_chunk=3)
    _close(rev.flip(0)[:, real], together[:, real])
    base_only = patched_final_residuals(tiny64, batch, vecs, [Patch("base", base_run=True)], layer=2)
    assert torch.equal(base_only[0], together[1])  # the base run itself


# ---- attention diff --------------------------------------------------------------------------------------------------
def test_attention_diff_chunks_and_the_cached_route_agree(tiny64, batch, monkeypatch):
    import steerinterp.analysis.attention as attention

    vecs = si.SteeringSet.from_tensors(tiny64, {1: random_vector(tiny64, 6, 2.0)})
    for positions in ("completion", "all"):
        whole = attention.attention_diff(tiny64, batch, vecs, positions=positions, batch_size=3, query_chunk=10**6)
        chunked = attention.attention_diff(tiny64, batch, vecs, positions=positions, batch_size=1, query_chunk=1)
        some = attention.attention_diff(tiny64, batch, vecs, positions=positions, layers=[3, 1], query_chunk=5)
        monkeypatch.setattr(attention, "is_bridge", lambda model: True)  # the route that caches patterns per layer group
        cached = attention.attention_diff(tiny64, batch, vecs, positions=positions, batch_size=2, layer_chunk=3)
        monkeypatch.undo()
        a = whole.to_frame().set_index(["layer", "head"])
        assert whole.n_queries == chunked.n_queries == cached.n_queries == some.n_queries
        for other in (chunked, cached, some):
            b = other.to_frame().set_index(["layer", "head"])
            _close(torch.tensor(b.to_numpy()), torch.tensor(a.loc[b.index].to_numpy()), 1e-12)


# ---- persistence, token shift, residual lens ---------------------------------------------------------------------------
def test_persistence_chunks_and_late_starts_change_nothing(tiny64, batch, monkeypatch):
    import importlib

    persistence = importlib.import_module("steerinterp.analysis.persistence")  # the package attribute is the function
    vecs = {0: random_vector(tiny64, 7, 0.5), 1: random_vector(tiny64, 8, 0.5), 3: random_vector(tiny64, 9, 0.5)}
    late = persistence.persistence(tiny64, batch, vecs, batch_size=3)
    monkeypatch.setattr(persistence, "_first_block", lambda steering: None)  # every steered run from the tokens
    full = persistence.persistence(tiny64, batch, vecs, batch_size=3)
    monkeypatch.undo()
    for m in ("diff_vector", "diff_diff", "mean_diff_vector", "delta_norm", "diff_diff_per_sample"):
        assert torch.equal(torch.nan_to_num(getattr(late, m), 7.0), torch.nan_to_num(getattr(full, m), 7.0)), m
    for layer in vecs:
        assert torch.equal(late.final_shifts[layer], full.final_shifts[layer])
    per_row = persistence.persistence(tiny64, batch, vecs, batch_size=1)
    default = persistence.persistence(tiny64, batch, vecs, observed_layers=[3, 1, 2])
    for m in ("diff_vector", "diff_diff", "mean_diff_vector", "delta_norm"):
        _close(getattr(per_row, m), getattr(late, m))
        _close(getattr(default, m), getattr(late, m)[:, 1:])
    _close(per_row.diff_diff_per_sample, late.diff_diff_per_sample)
    for m in ("diff_vector", "diff_diff", "mean_diff_vector", "delta_norm", "diff_diff_per_sample"):  # the prompt's report too
        _close(getattr(per_row.prompt, m), getattr(late.prompt, m))
        assert torch.equal(torch.nan_to_num(getattr(late.prompt, m), 7.0), torch.nan_to_num(getattr(full.prompt, m), 7.0)), m


def test_token_shift_and_residual_lens_chunks_change_nothing(tiny64, batch):
    vecs = si.SteeringSet.from_tensors(tiny64, {2: random_vector(tiny64, 10, 2.0)})
    a = A.token_shift(tiny64, batch, vecs, track=[77], batch_size=3, position_chunk=10**6).to_frame()
    b = A.token_shift(tiny64, batch, vecs, track=[77], batch_size=1, position_chunk=1).to_frame()
    c = A.token_shift(tiny64, batch, vecs, track=[77]).to_frame()
    for other in (b, c):
        assert list(other.columns) == list(a.columns)
        for col in a.columns:
            if a[col].dtype.kind == "f":
                _close(torch.tensor(other[col].to_numpy()), torch.tensor(a[col].to_numpy()))
            else:
                assert other[col].tolist() == a[col].tolist(), col
    r1 = A.residual_logit_lens(tiny64, batch, vecs, positions="completion", batch_size=3, position_chunk=10**6, track=[77])
    r2 = A.residual_logit_lens(tiny64, batch, vecs, positions="completion", batch_size=1, position_chunk=1, track=[77])
    _close(r1.kl, r2.kl, 1e-12)
    assert r1.top1_agreement == r2.top1_agreement
    _close(r1.tracked[next(iter(r1.tracked))], r2.tracked[next(iter(r2.tracked))], 1e-12)


# ---- teacher-forced log-probs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True])
def test_teacher_forced_logprobs_chunks_change_no_value_or_gradient(tiny64, shared):
    prompts = [p for p in PROMPTS for _ in range(2)]
    out = si.generate(tiny64, prompts, max_new_tokens=7, seed=list(range(len(prompts))))
    kw = dict(attention_mask=out.attention_mask, prompt_mask=out.prompt_mask,
              prompt_length=out.prompt_length if shared else None)
    results = {}
    for rows, chunk in ((None, 10**6), (None, 1), (1, 3), (2, 10**6)):
        g = torch.Generator().manual_seed(5)
        vecs = si.SteeringSet.from_tensors(tiny64, {layer: torch.randn(64, generator=g, dtype=torch.float64)
                                                    for layer in (1, 3)}, trainable=True)
        lp = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, vecs, batch_size=rows,
                                        position_chunk=chunk, **kw)
        (lp * torch.linspace(-1, 1, lp.shape[0], dtype=lp.dtype)[:, None]).sum().backward()
        with torch.no_grad():
            lp_nograd = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, vecs, batch_size=rows,
                                                   position_chunk=chunk, **kw)
        results[rows, chunk] = (lp.detach(), [v.vector.grad.clone() for v in vecs], lp_nograd)
    lp0, grads0, _ = results[None, 10**6]
    for lp, grads, lp_nograd in results.values():
        _close(lp, lp0)
        _close(lp_nograd, lp0)
        for a, b in zip(grads, grads0):
            _close(a, b)
            assert a.abs().max() > 0
    with torch.no_grad():
        default = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, None, **kw)
        one_row = si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, None, batch_size=1, position_chunk=2, **kw)
    _close(default, one_row)
    with pytest.raises(SteerInterpError, match="position_chunk"):
        si.teacher_forced_logprobs(tiny64, out.tokens, out.completion_mask, position_chunk=0)


def test_gradient_rows_follow_the_memory_budget(monkeypatch):
    """The RL gradient pass's rows per forward/backward: the embedded model's shapes (measured: ~0.1 GB per row of
    70 + 32 tokens, ~0.85 GB per row of 100 + 256) keep the 32-token tasks in one pass of 64 rows and split the
    256-token one into whole groups; the limit, the group rounding and the environment override hold."""
    from types import SimpleNamespace

    from steerinterp.generation.decode import GRADIENT_BUDGET, gradient_row_bytes, gradient_rows

    smollm = SimpleNamespace(cfg=SimpleNamespace(n_layers=30, d_model=576, d_mlp=1536, n_heads=9, d_vocab=49152,
                                                 dtype=torch.float32))
    assert 0.08e9 < gradient_row_bytes(smollm, 102, 32) < 0.13e9
    assert 0.75e9 < gradient_row_bytes(smollm, 356, 256) < 1.1e9
    half = SimpleNamespace(cfg=SimpleNamespace(**{**vars(smollm.cfg), "dtype": torch.bfloat16}))
    assert gradient_row_bytes(half, 356, 256) < gradient_row_bytes(smollm, 356, 256)
    assert gradient_rows(smollm, 102, 32, 64, group=8) == 64
    assert gradient_rows(smollm, 356, 256, 64, group=8) == 8
    assert gradient_rows(smollm, 356, 256, 64, group=8, budget=6 * 2**30) == 6  # less than a group: not rounded
    assert gradient_rows(smollm, 102, 32, 4, group=8) == 4 and gradient_rows(smollm, 4096, 4000, 64, group=8) == 1
    monkeypatch.setenv("STEERINTERP_GRADIENT_BUDGET", str(2 * GRADIENT_BUDGET))
    assert gradient_rows(smollm, 356, 256, 64, group=8) == 16
    monkeypatch.setenv("STEERINTERP_GRADIENT_BUDGET", "8 GiB")
    with pytest.raises(SteerInterpError, match="STEERINTERP_GRADIENT_BUDGET.*positive number of bytes"):
        gradient_rows(smollm, 356, 256, 64)
