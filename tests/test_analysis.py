"""Analyses I on tiny random Llama-style models: the papers' identities and hand-computed oracles."""

import math

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.analysis.language import hypergeom_sf
from steerinterp.analysis.segments import token_segments
from steerinterp.errors import SteerInterpError
from tests.conftest import random_vector as _vec

PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nhi<|im_end|>\n"]
COMPLETIONS = ["To solve it: 5", "hello there"]


@pytest.fixture(scope="module")
def batch64(tiny64):
    return A.teacher_forcing_batch(tiny64, PROMPTS, COMPLETIONS)


def test_teacher_forcing_batch_layout(tiny):
    b = A.teacher_forcing_batch(tiny, PROMPTS, COMPLETIONS)
    n_p = [len(tiny.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    n_c = [len(tiny.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in COMPLETIONS]
    assert b.prompt_mask.sum(-1).tolist() == n_p and b.completion_mask.sum(-1).tolist() == n_c
    assert (b.prompt_mask & b.completion_mask).sum() == 0
    assert ((b.prompt_mask | b.completion_mask) == b.attention_mask.bool()).all()
    assert b.predicting_mask.sum(-1).tolist() == n_c  # the last prompt token through the second-to-last completion token
    for r in range(2):
        assert b.prompt_mask[r, b.last_prompt_index[r]] and b.completion_mask[r, b.last_prompt_index[r] + 1]
    with pytest.raises(SteerInterpError, match="one completion per prompt"):
        A.teacher_forcing_batch(tiny, PROMPTS, COMPLETIONS[:1])
    with pytest.raises(SteerInterpError, match="GenerationOutput"):
        A.as_batch([1, 2, 3])


def test_paired_caches_cache_only_requested_hooks(tiny, batch64):
    vecs = si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 0)})
    b = A.as_batch(batch64)
    for _, (_, base), (_, steered) in A.paired_caches(tiny, b, vecs, ["blocks.2.hook_resid_post"], batch_size=1):
        assert list(base.keys()) == ["blocks.2.hook_resid_post"] == list(steered.keys())


# ---- persistence (PAPER_NOTES claim 5) -----------------------------------------------------------------------------
def test_persistence_rows_on_their_own_inputs_stack_to_the_joint_result(tiny64, batch64):
    """The papers' design, one single-layer vector at a time compared with the other layers' vectors, stacks to
    exactly the all-at-once result on the same inputs; compare_with decides what Diff-Vector compares with."""
    model = tiny64
    vecs = {1: _vec(model, 1, 0.5), 2: _vec(model, 2, 0.5), 3: _vec(model, 3, 0.5)}
    joint = A.persistence(model, batch64, vecs)
    rows = [A.persistence(model, batch64, {k: v}, compare_with=vecs) for k, v in vecs.items()]
    stacked = A.PersistenceResult.stack(rows)
    assert stacked.steered_layers == [1, 2, 3] and stacked.n_tokens == 3 * joint.n_tokens
    for m in ("diff_vector", "diff_diff", "mean_diff_vector", "delta_norm"):
        assert torch.allclose(getattr(stacked, m), getattr(joint, m), equal_nan=True, atol=1e-12)
        assert torch.allclose(getattr(stacked.prompt, m), getattr(joint.prompt, m), equal_nan=True, atol=1e-12)
    assert torch.equal(stacked.final_shifts[2], joint.final_shifts[2])
    per = stacked.per_sample_frame()  # sample means of the per-sample rows are the matrices' cells
    cell = per[(per.steered_layer == 1) & (per.observed_layer == 3)]
    assert len(cell) == len(batch64) and cell.diff_vector.mean() == pytest.approx(float(joint.diff_vector[0, 3]))
    assert cell.diff_diff.mean() == pytest.approx(float(joint.diff_diff[0, 3]))
    alone = A.persistence(model, batch64, {1: vecs[1]})  # without compare_with: only its own layer to compare
    assert torch.isnan(alone.diff_vector[0, 2:]).all() and not torch.isnan(rows[0].diff_vector[0, 2:3]).any()
    flipped = A.persistence(model, batch64, {1: vecs[1]}, compare_with={k: -v for k, v in vecs.items()})
    assert torch.allclose(flipped.diff_vector, -rows[0].diff_vector, equal_nan=True, atol=1e-12)
    with pytest.raises(SteerInterpError, match="repeat"):
        A.PersistenceResult.stack([rows[0], rows[0]])
    with pytest.raises(SteerInterpError, match="observed layers"):
        A.PersistenceResult.stack([rows[0], A.persistence(model, batch64, {2: vecs[2]}, observed_layers=[2, 3])])


def test_persistence_identities_and_oracle(tiny64, batch64):
    model = tiny64
    vecs = {1: _vec(model, 1, 0.5), 2: _vec(model, 2, 0.5)}
    res = A.persistence(model, batch64, vecs, batch_size=1)
    i1, i2 = 0, 1
    for i, layer in ((i1, 1), (i2, 2)):
        assert torch.isnan(res.diff_diff[i, :layer]).all() and torch.isnan(res.delta_norm[i, :layer]).all()
        assert res.diff_diff[i, layer] == pytest.approx(1.0, abs=1e-10)  # delta == s at every token
        assert res.diff_vector[i, layer] == pytest.approx(1.0, abs=1e-10)
        assert res.mean_diff_vector[i, layer] == pytest.approx(1.0, abs=1e-10)
        assert res.delta_norm[i, layer] == pytest.approx(float(vecs[layer].norm()), rel=1e-9)
    assert torch.isnan(res.diff_vector[i1, 3])  # no vector of layer 3 to compare with
    # oracle: Diff-Diff(1 -> 3), mean |delta| and the final shift recomputed by hand, over completion positions
    # (the default), the prompt's other positions (result.prompt) and all positions (positions="all")
    b = batch64
    with torch.no_grad():
        _, base = model.run_with_cache(b.tokens, attention_mask=b.attention_mask)
        with si.SteeringSet.from_tensors(model, {1: vecs[1]}).applied(model):
            _, st = model.run_with_cache(b.tokens, attention_mask=b.attention_mask)
    delta = st["blocks.3.hook_resid_post"] - base["blocks.3.hook_resid_post"]
    everything = A.persistence(model, batch64, vecs, positions="all")
    groups = {"completion": (res, b.predicting_mask), "prompt": (res.prompt, b.prompt_mask & ~b.predicting_mask),
              "all": (everything, b.prompt_mask | b.predicting_mask)}
    for name, (r, sel) in groups.items():
        assert r.positions == name and r.n_tokens == int(sel.sum())
        per_sample = []
        for row in range(len(b)):
            d = delta[row][sel[row]]
            per_sample.append(torch.nn.functional.cosine_similarity(d, d.mean(0)[None], dim=-1).mean())
        assert r.diff_diff[i1, 3] == pytest.approx(float(torch.stack(per_sample).mean()), abs=1e-10), name
        assert r.delta_norm[i1, 3] == pytest.approx(float(delta[sel].norm(dim=-1).mean()), rel=1e-10), name
        assert torch.allclose(r.final_shifts[1], delta[sel].mean(0), atol=1e-12), name
        assert r.diff_diff[i1, 1] == pytest.approx(1.0, abs=1e-10)
    assert res.prompt.prompt is None and everything.prompt.n_tokens == res.prompt.n_tokens
    assert int(b.predicting_mask.sum()) < everything.n_tokens  # the default really leaves the prompt out
    frame = res.to_frame()
    assert set(frame["steered_layer"]) == {1, 2} and (frame["observed_layer"] >= frame["steered_layer"]).all()
    both = res.to_frame(include_prompt=True)
    assert len(both) == 2 * len(frame) and set(both["positions"]) == {"completion", "prompt"}
    assert "over completion positions" in res.plot().layout.title.text
    with pytest.raises(SteerInterpError, match="positions="):
        A.persistence(model, batch64, vecs, positions="first")


# ---- logit lens and vector statistics (claim: a row of W_U ranks its own token first) -------------------------------
def test_logit_lens_of_an_unembedding_row_ranks_that_token_first(tiny64):
    model = tiny64
    w_u, gamma = model.W_U.detach(), model.ln_final.w.detach()
    raw = A.vector_logit_lens(model, {0: w_u[:, 42].clone(), 3: -w_u[:, 7].clone()}, k=5)
    assert raw.top(0)[0] == 42 and raw.cos[0, 42] == pytest.approx(1.0)
    assert raw.top(3, suppressed=True)[0] == 7
    assert torch.allclose(raw.dot[0], w_u[:, 42] @ w_u)
    norm = A.vector_logit_lens(model, {5: w_u[:, 99] / gamma}, mode="norm")
    assert norm.top(5)[0] == 99
    df = raw.to_frame(k=3)
    assert len(df) == 2 * 2 * 3 and df.iloc[0]["token_id"] == 42
    raw.plot(), raw.plot("top", layer=0)
    with pytest.raises(SteerInterpError, match="processed=False"):
        A.vector_logit_lens(si.load_model("tiny", processed=True), {0: w_u[:, 1].float()})
    with pytest.raises(SteerInterpError, match="width"):
        A.vector_logit_lens(model, {0: torch.ones(3, dtype=torch.float64)})


def test_vector_stats_oracle():
    a = torch.tensor([3.0, 0, 0, 0])
    b = torch.tensor([0, 4.0, 0, 0])
    st = A.vector_stats({0: a, 1: b, 2: a + b})
    assert st.norms.tolist() == pytest.approx([3, 4, 5])
    assert st.cosine[0, 1] == pytest.approx(0) and st.cosine[0, 2] == pytest.approx(0.6)
    s = torch.linalg.svdvals(torch.stack([a, b, a + b]).double())
    assert st.stable_rank == pytest.approx(float((s**2).sum() / s[0] ** 2))
    st.plot()


# ---- token shift (first-token substitution) -----------------------------------------------------------------------------
def test_token_shift_oracle_and_zero_vector(tiny64, batch64):
    model = tiny64
    last = model.cfg.n_layers - 1
    target = 77
    s = model.W_U[:, target].detach() / model.ln_final.w.detach() * 3.0
    vecs = si.SteeringSet.from_tensors(model, {last: s})
    res = A.token_shift(model, batch64, vecs, track=[target], batch_size=1)
    df = res.to_frame()
    b = batch64
    assert len(df) == int(b.predicting_mask.sum())
    assert (df.groupby("sample")["pos"].min() == 0).all()
    with torch.no_grad():
        base = torch.softmax(model(b.tokens, attention_mask=b.attention_mask).double(), -1)
        with vecs.applied(model):
            steer = torch.softmax(model(b.tokens, attention_mask=b.attention_mask).double(), -1)
    r, t = 1, int(b.last_prompt_index[1])
    dp = steer[r, t] - base[r, t]
    row = df[(df["sample"] == 1) & (df["pos"] == 0)].iloc[0]
    assert row["dst_id"] == int(dp.argmax()) == target
    assert row["dst_dp"] == pytest.approx(float(dp.max()), abs=1e-10)
    assert row["src_id"] == int(dp.argmin()) and row["would_be_id"] == int(base[r, t].argmax())
    kl = float((steer[r, t] * (steer[r, t].log() - base[r, t].log())).sum())
    assert row["kl"] == pytest.approx(kl, rel=1e-8)
    label = model.tokenizer.decode([target])
    assert row[f"dp[{label}]"] == pytest.approx(float(dp[target]), abs=1e-12)
    assert (df["dst_id"] == target).all()  # a token bias boosts its token everywhere
    summ = res.summary()
    assert set(summ["position"]) == {"pos 0", "pos > 0"}
    assert res.by_token("dst", top=1)["dst"].iloc[0] == label
    for kind in ("positions", "tokens", "tracked"):
        res.plot(kind)
    zero = A.token_shift(model, batch64, si.SteeringSet.from_tensors(model, {last: torch.zeros_like(s)}))
    assert zero.to_frame()["kl"].abs().max() < 1e-12 and zero.to_frame()["dst_dp"].abs().max() < 1e-12
    short = A.token_shift(model, batch64, vecs, max_positions=2)
    assert short.to_frame()["pos"].max() == 1


def test_residual_lens_is_zero_before_the_steered_layer_and_matches_the_logits_at_the_end(tiny64, batch64):
    model = tiny64
    vecs = si.SteeringSet.from_tensors(model, {2: _vec(model, 5)})
    res = A.residual_logit_lens(model, batch64, vecs, track=[77])
    assert res.kl[0] == pytest.approx(0, abs=1e-12) and res.kl[1] == pytest.approx(0, abs=1e-12)
    assert res.kl[2] > 1e-6 and res.top1_agreement[0] == 1.0
    shift = A.token_shift(model, batch64, vecs).to_frame()
    assert res.kl[-1] == pytest.approx(float(shift[shift["pos"] == 0]["kl"].mean()), rel=1e-9)
    assert list(res.to_frame().columns)[-2:] == [f"p_base[{model.tokenizer.decode([77])}]",
                                                 f"p_steered[{model.tokenizer.decode([77])}]"]
    res.plot()


# ---- language ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "script"), [
    (" hello", "latin_ascii"), (" café", "latin_extended"), ("Straße", "latin_extended"), (" привет", "cyrillic"),
    ("中文", "cjk"), ("ひら", "hiragana"), ("مرحبا", "arabic"), (" 123", "digits"), ("{", "punctuation"),
    ("\n ", "whitespace"), ("\ufffd", "byte_fragment"), ("", "empty"),
])
def test_token_script(text, script):
    assert A.token_script(text) == script


def test_hypergeom_sf_matches_brute_force():
    total, succ, draws = 20, 6, 7
    pmf = [math.comb(succ, i) * math.comb(total - succ, draws - i) / math.comb(total, draws) for i in range(draws + 1)]
    for x in range(0, 8):
        assert hypergeom_sf(x, total, succ, draws) == pytest.approx(sum(pmf[x:]), abs=1e-12)


def test_language_shares_on_a_crafted_lens():
    vocab = [" the", " and", " of", "中", "Ж", " é", "1", " a"]
    cos = torch.tensor([[0.9, 0.8, 0.1, -0.9, -0.8, -0.7, 0.0, 0.2]], dtype=torch.float64)
    lens = A.LogitLensResult([4], cos.clone(), cos, "raw", vocab, k=3)
    res = A.language_shares(lens)
    df = res.to_frame().set_index("direction")
    assert res.base_rate == pytest.approx(3 / 7)  # '1' is neutral
    assert df.loc["suppressed", "non_english_share"] == 1.0 and df.loc["boosted", "non_english_share"] == 0.0
    assert df.loc["suppressed", "p_value"] == pytest.approx(hypergeom_sf(3, 7, 3, 3))
    res.plot()


def test_language_shares_leave_out_byte_fragments_and_correct_across_layers():
    from scipy.stats import false_discovery_control

    vocab = [" the", " and", " of", "中", "\ufffd", "\ufffd\ufffd", " é", "1", " a", " to"]
    g = torch.Generator().manual_seed(0)
    cos = torch.randn(5, len(vocab), generator=g, dtype=torch.float64)
    cos[0] = torch.tensor([0.9, 0.8, 0.7, -0.5, -0.9, -0.8, -0.6, 0.0, 0.2, 0.1])  # fragments at the very bottom
    lens = A.LogitLensResult([0, 1, 2, 3, 4], cos.clone(), cos, "raw", vocab, k=4)
    res = A.language_shares(lens)
    sup = res.to_frame().set_index(["direction", "layer"]).loc["suppressed"]
    # layer 0's bottom 4: two fragments (not counted), 中 and é (non-English): 2 of 2 letter tokens
    assert sup.loc[0, "byte_fragments"] == 2 and sup.loc[0, "letter_tokens"] == 2 and sup.loc[0, "non_english"] == 2
    assert res.base_rate == pytest.approx(2 / 7)  # ' the', ' and', ' of', 中, é, ' a', ' to'; '1' and fragments neutral
    assert sup.loc[0, "p_value"] == pytest.approx(hypergeom_sf(2, 7, 2, 2))
    old = A.language_shares(lens, include_fragments=True)
    old_sup = old.to_frame().set_index(["direction", "layer"]).loc["suppressed"]
    assert old.base_rate == pytest.approx(4 / 9) and old_sup.loc[0, "non_english"] == 4 and old_sup.loc[0, "letter_tokens"] == 4
    # Benjamini-Hochberg across the layers of each direction, as scipy computes it; significance by q
    frame = res.to_frame()
    for direction in ("boosted", "suppressed"):
        d = frame[frame.direction == direction]
        ok = d["p_value"].notna().to_numpy()
        assert d["q_value"].to_numpy()[ok] == pytest.approx(false_discovery_control(d["p_value"].to_numpy()[ok], method="bh"))
        assert (d["significant"] == (d["q_value"] < 0.05)).all()
    assert (frame["q_value"].dropna() >= frame["p_value"].dropna() - 1e-15).all()
    assert A.language_shares(lens, alpha=1.0).to_frame()["significant"].sum() >= frame["significant"].sum()
    res.plot()


def test_benjamini_hochberg_matches_scipy_and_keeps_nan():
    from scipy.stats import false_discovery_control

    from steerinterp.analysis.stats import benjamini_hochberg

    p = torch.tensor([0.01, 0.04, 0.03, 0.2, 0.5, 0.001, 0.04])
    assert benjamini_hochberg(p).numpy() == pytest.approx(false_discovery_control(p.numpy(), method="bh"))
    # by hand: sorted 0.001 0.01 0.03 0.04 0.04 0.2 0.5, times 7 / rank: 0.007 0.035 0.07 0.07 0.056 0.233 0.5,
    # then the running minimum from the top: 0.007 0.035 0.056 0.056 0.056 0.233 0.5
    hand = [0.035, 0.056, 0.056, 0.2 * 7 / 6, 0.5, 0.007, 0.056]
    assert benjamini_hochberg(p).tolist() == pytest.approx(hand)
    q = benjamini_hochberg(torch.tensor([0.01, float("nan"), 0.02]))
    assert math.isnan(q[1]) and q[[0, 2]].tolist() == pytest.approx([0.02, 0.02])


# ---- composition (claim: a vector composed with itself at scale 0 is the base model) -----------------------------------
def test_combine_identities(tiny64, batch64):
    model = tiny64
    a = si.SteeringSet.from_tensors(model, {1: _vec(model, 1)})
    b = si.SteeringSet.from_tensors(model, {3: _vec(model, 3)})
    toks, mask = batch64.tokens, batch64.attention_mask

    def logits(v):
        with torch.no_grad(), A.batch.steering_context(model, v, batch64):
            return model(toks, attention_mask=mask)

    assert torch.equal(logits(A.combine(a, a, scales=[0, 0])), logits(None))
    assert torch.allclose(logits(A.combine(a, a)), logits(a.scaled(2.0)), atol=1e-12)
    both = si.SteeringSet(list(a) + list(b))
    assert torch.allclose(logits(A.combine(a, b)), logits(both), atol=1e-12)
    with pytest.raises(SteerInterpError, match="scales"):
        A.combine(a, b, scales=[1.0])


def test_normalised_gain_oracle():
    pair = torch.tensor([[0.5, 0.8], [float("nan"), 0.6]])
    r = A.normalised_gain(pair, torch.tensor([0.5, 0.6]), 0.9)
    assert r[0, 0] == pytest.approx((0.5 - 0.5) / (0.9 - 0.5))
    assert r[0, 1] == pytest.approx((0.8 - 0.6) / (0.9 - 0.6))
    assert torch.isnan(r[1, 0])


def test_compose_pairs_diagonal_is_the_single_layer(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    singles = {1: si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 1)}), 2: si.SteeringSet.from_tensors(tiny, {2: _vec(tiny, 2)})}
    res = A.compose_pairs(tiny, task, singles, 0.5, problems=task.test[:3], max_new_tokens=3, progress=False)
    assert res.layers == [1, 2] and res.accuracy.shape == (2, 2) and torch.isnan(res.accuracy[1, 0])
    assert len(res.to_frame()) == 3
    per = res.per_problem  # the outcomes behind every cell, for intervals
    assert set(per.variant) == {"base", "1+1", "1+2", "2+2"} and (per.groupby("variant").size() == 3).all()
    assert per[per.variant == "1+2"].correct.mean() == pytest.approx(float(res.accuracy[0, 1]))
    res.plot()


def test_compose_pairs_reuses_known_outcomes_and_evaluates_the_rest(tiny, monkeypatch):
    """Known rows stand in for their variants exactly (only the others are evaluated); an extra reference is
    evaluated beside them; known rows from other settings (greedy rows in a sampled run) are refused."""
    import steerinterp.tasks.evaluation as evaluation
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    singles = {1: si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 1)}), 2: si.SteeringSet.from_tensors(tiny, {2: _vec(tiny, 2)})}
    every = si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 1), 3: _vec(tiny, 3)})
    kw = dict(problems=task.test[:3], max_new_tokens=3, progress=False, mode="sampled", samples=2)
    first = A.compose_pairs(tiny, task, singles, every, **kw)
    evaluated = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda m, t, v, **k: evaluated.append(*v) or real(m, t, v, **k))
    old = first.per_problem[first.per_problem.variant != "all"]
    again = A.compose_pairs(tiny, task, singles, every, extra={"other": singles[2]}, known=old, **kw)
    assert evaluated == ["all", "other"]
    assert torch.equal(again.accuracy.nan_to_num(-1), first.accuracy.nan_to_num(-1))
    assert again.all_layer_accuracy == first.all_layer_accuracy and again.base_accuracy == first.base_accuracy
    got = again.per_problem.set_index(["variant", "seed", "problem"]).sort_index()
    assert got.loc["all"].equals(first.per_problem.set_index(["variant", "seed", "problem"]).sort_index().loc["all"])
    assert got.loc["other"].correct.tolist() == got.loc["2+2"].correct.tolist()  # same set, same sampling seeds
    greedy = A.compose_pairs(tiny, task, singles, every, **{**kw, "mode": "greedy"}).per_problem
    with pytest.raises(SteerInterpError, match="other .sample seed, problem. pairs"):
        A.compose_pairs(tiny, task, singles, every, known=greedy[greedy.variant == "1+2"], **kw)
    with pytest.raises(SteerInterpError, match="lack column 'correct'"):
        A.compose_pairs(tiny, task, singles, every, known=old.drop(columns="correct"), **kw)
    with pytest.raises(SteerInterpError, match="clashes"):
        A.compose_pairs(tiny, task, singles, every, extra={"all": every}, **kw)


def test_compose_pairs_runs_every_pair_of_eight_or_more_layers(monkeypatch):
    """All i <= j pairs of a list of >= 8 layers: n (n + 1) / 2 evaluations (diagonal = single layers), plus base."""
    import steerinterp.tasks.evaluation as evaluation

    layers = [0, 2, 3, 5, 8, 11, 13, 17, 19]  # 9 layers
    g = torch.Generator().manual_seed(0)
    singles = {i: si.SteeringSet([si.SteeringVector(torch.randn(8, generator=g), f"blocks.{i}.hook_resid_post")])
               for i in layers + [21]}
    seen = {}

    class Fake:
        def __init__(self, name):
            self.name = name

        def accuracy(self, name, mode):
            if name == "base":
                return 0.1
            i, j = (int(x) for x in name.split("+"))
            return 0.2 + 0.01 * i + 0.001 * j

        def details(self):
            import pandas as pd

            return pd.DataFrame([{"variant": self.name, "mode": "greedy", "seed": None, "problem": "p",
                                  "correct": self.accuracy(self.name, "greedy")}])  # one problem: its mean

    def fake_evaluate(model, task, variants, **kw):
        (name, steering), = variants.items()
        seen[name] = steering
        return Fake(name)

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    res = A.compose_pairs(None, None, singles, 0.9, layers=layers, progress=False)
    n = len(layers)
    pairs = [k for k in seen if k != "base"]
    assert len(pairs) == n * (n + 1) // 2 == 45 and "base" in seen and "all" not in seen
    assert len(res.to_frame()) == 45 and res.layers == layers
    assert int((~torch.isnan(res.accuracy)).sum()) == 45
    assert sorted(v.hook_name for v in seen["3+17"]) == ["blocks.17.hook_resid_post", "blocks.3.hook_resid_post"]
    assert seen["5+5"] is singles[5]
    row = res.to_frame().set_index(["layer_i", "layer_j"]).loc[(3, 17)]
    best = max(0.2 + 0.01 * 3 + 0.003, 0.2 + 0.17 + 0.017)
    assert row["R"] == pytest.approx((0.2 + 0.03 + 0.017 - best) / (0.9 - best))
    res.plot()


# ---- transfer ----------------------------------------------------------------------------------------------------------
def test_fit_linear_map_recovers_an_exact_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    m, c = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)
    w, off, r2 = A.fit_linear_map(x, x @ m + c)
    assert torch.allclose(w, m, atol=1e-9) and torch.allclose(off, c, atol=1e-9) and r2 == pytest.approx(1.0)


def test_transfer_between_widths_needs_a_map(tiny):
    wide = si.load_model("tiny", tiny=si.TinyConfig(d_model=96, n_layers=3, seed=1))
    vecs = si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 1), 3: _vec(tiny, 3)})
    with pytest.raises(SteerInterpError, match="fit_residual_map"):
        A.transfer_vectors(vecs, wide)
    same = A.transfer_vectors(vecs, tiny)
    assert all(torch.equal(same[k].vector, vecs[k].vector) for k in (1, 3))
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "What is 2 + 3? It is 5.", "hello world"]
    fit = A.fit_residual_map(tiny, wide, texts)
    assert fit.pairs == {0: 0, 1: 1, 2: 1, 3: 2}  # same relative depth
    assert all(-1 <= r <= 1 for r in fit.r2.values()) and fit.n_tokens > 50
    mapped = fit.apply(vecs, wide)
    assert mapped.layers == [1, 2] and mapped[1].vector.shape == (96,)
    assert torch.allclose(mapped[1].vector.double(), vecs[1].vector.double() @ fit.weights[1], atol=1e-5)
    self_fit = A.fit_residual_map(tiny, tiny, texts, pairs={2: 2}, ridge=0.0)
    assert self_fit.r2[2] == pytest.approx(1.0, abs=1e-6)
    fit.to_frame(), fit.plot()


def test_transfer_grid_normalises_by_the_recipients_own_vectors(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    vecs = si.SteeringSet.from_tensors(tiny, {3: _vec(tiny, 1, 4.0)})
    res = A.transfer_grid({"m": tiny}, {"m": vecs}, task, problems=task.test[:3], max_new_tokens=3)
    assert list(res.accuracy.columns) == ["unsteered", "m"]
    norm = res.normalised
    if res.accuracy.loc["m", "m"] != res.accuracy.loc["m", "unsteered"]:
        assert norm.loc["m", "m"] == pytest.approx(1.0)
    assert len(res.to_frame()) == 2
    per = res.per_problem  # every graded outcome behind the grid
    assert len(per) == 2 * 3 and set(per.donor) == {"unsteered", "m"} and set(per.recipient) == {"m"}
    assert per[per.donor == "m"].correct.mean() == pytest.approx(float(res.accuracy.loc["m", "m"]))
    res.plot()
    # a model and its donor may share a name ("base"); the unsteered column is apart
    named = A.transfer_grid({"base": tiny}, {"base": vecs}, task, problems=task.test[:2], max_new_tokens=2)
    assert named.to_frame()["donor"].tolist() == ["unsteered", "base"]
    with pytest.raises(SteerInterpError, match="unsteered"):
        A.transfer_grid({"m": tiny}, {"unsteered": vecs}, task, problems=task.test[:2])


# ---- adaptive magnitudes and segments ------------------------------------------------------------------------------------
def test_token_segments_of_a_chatml_prompt():
    pieces = ["<|im_start|>", "system", "\n", "Be", " brief", "<|im_end|>", "\n", "<|im_start|>", "user", "\n", "2+3", "?",
              "<|im_end|>", "\n", "<|im_start|>", "ass", "istant", "\n", "5"]
    labels = token_segments(pieces, 18, {"<|im_start|>", "<|im_end|>"})
    assert labels[:3] == ["system header"] * 3 and labels[3:6] == ["system message"] * 3
    assert labels[6] == "between turns" and labels[7:10] == ["user header"] * 3
    assert labels[10:13] == ["user message"] * 3 and labels[14:18] == ["assistant header"] * 4
    assert labels[18] == "generation"


def test_adaptive_magnitudes_oracle(tiny64, batch64):
    from steerinterp.steering.adaptive import AdaptiveSteering

    model = tiny64
    ad = AdaptiveSteering.init(model, [2], seed=0)
    ad.b[2] = torch.nn.Parameter(_vec(model, 4))
    ad.a[2] = torch.nn.Parameter(ad.a[2].detach().double())
    res = A.adaptive_magnitudes(model, batch64, ad, batch_size=1)
    df = res.to_frame()
    b = batch64
    with torch.no_grad():
        _, cache = model.run_with_cache(b.tokens, attention_mask=b.attention_mask)
    u = cache["blocks.2.mlp.hook_post"][0][b.attention_mask[0].bool()]
    expected = ad.b[2].norm() * (u @ ad.a[2])
    got = df[(df["sample"] == 0)].sort_values("position")["magnitude"].to_numpy()
    assert torch.allclose(torch.tensor(got), expected.detach(), atol=1e-10)
    assert set(df["segment"]) >= {"user header", "user message", "generation"}
    assert res.summary()["mean"].iloc[0] >= 0
    assert "generation" in res.by_segment().columns
    per = res.by_segment(per_sample=True)  # one row per (sample, layer): the mean over that sample's tokens
    one = df[(df["sample"] == 0) & (df["segment"] == "generation")]
    assert per.loc[(0, 2), "generation"] == pytest.approx(one["normalised"].abs().mean(), abs=1e-12)
    assert len(per) == df["sample"].nunique() * len(res.layers)
    res.plot(), res.plot("scatter")
    with pytest.raises(SteerInterpError, match="AdaptiveSteering"):
        A.adaptive_magnitudes(model, batch64, si.SteeringSet.from_tensors(model, {1: _vec(model, 1)}))


# ---- prefix control -----------------------------------------------------------------------------------------------------
def test_assistant_prefix_is_written_into_prompts_and_read_by_the_verifier(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    pre = task.with_assistant_prefix("The answer is ")
    p = task.test[0]
    assert pre.prompts(tiny, [p])[0] == task.prompts(tiny, [p])[0] + "The answer is "
    assert pre.is_correct(str(p.final_answer), p) and not pre.is_correct("", p)
    assert task.assistant_prefix == ""


def test_first_token_prob_oracle(tiny64):
    model = tiny64
    vecs = si.SteeringSet.from_tensors(model, {3: _vec(model, 3)})
    tok = model.tokenizer("T", add_special_tokens=False)["input_ids"][0]
    got = A.first_token_prob(model, PROMPTS, tok, vecs)
    probs = []
    for p in PROMPTS:
        ids = torch.tensor([model.tokenizer(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), vecs.applied(model):
            probs.append(torch.softmax(model(ids)[0, -1].double(), -1)[tok])
    assert got == pytest.approx(float(torch.stack(probs).mean()), rel=1e-9)


def test_streaming_chunks_do_not_change_results(tiny64, batch64):
    vecs = si.SteeringSet.from_tensors(tiny64, {2: _vec(tiny64, 5)})
    a = A.token_shift(tiny64, batch64, vecs).to_frame()
    b = A.token_shift(tiny64, batch64, vecs, batch_size=1, position_chunk=3).to_frame()
    assert a.equals(b) or (a.drop(columns=["sample"]).round(12).equals(b.drop(columns=["sample"]).round(12)))
    r1 = A.residual_logit_lens(tiny64, batch64, vecs, positions="completion")
    r2 = A.residual_logit_lens(tiny64, batch64, vecs, positions="completion", batch_size=1, position_chunk=2)
    assert r1.kl == pytest.approx(r2.kl, rel=1e-10, abs=1e-14)


def test_prefix_control_runs_three_variants(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    vecs = si.SteeringSet.from_tensors(tiny, {3: _vec(tiny, 2, 5.0)})
    res = A.prefix_control(tiny, task, vecs, prefix="T", problems=task.test[:3], samples=1, max_new_tokens=3)
    df = res.to_frame()
    assert list(df["variant"]) == ["base", "base + prefix", "steered"]
    prompts = task.prompts(tiny, task.test[:3])
    tok = tiny.tokenizer("T", add_special_tokens=False)["input_ids"][0]
    assert res.p_first_base == pytest.approx(A.first_token_prob(tiny, prompts, tok))
    rows = res.evaluation.details()
    assert (rows[rows["variant"] == "base + prefix"]["mode"] == "sampled").sum() == 3
    r = res.recovered("greedy")
    assert math.isnan(r) or isinstance(r, float)
    res.plot()
    with pytest.raises(SteerInterpError, match="not one"):
        A.prefix_control(tiny, task, vecs, prefix="To be")


def test_per_problem_prefix(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    p = task.test[0]

    def first_operand(problem):
        return problem.question.split("What is ")[1].split(" ")[0]

    pre = task.with_assistant_prefix(first_operand, "first operand")
    assert pre.prompts(tiny, [p])[0].endswith(first_operand(p)) and "first operand" in pre.name
    vecs = si.SteeringSet.from_tensors(tiny, {3: _vec(tiny, 2, 5.0)})
    res = A.prefix_control(tiny, task, vecs, prefix=first_operand, problems=task.test[:2], samples=0, max_new_tokens=2)
    assert res.prefix == "first_operand" and 0 <= res.p_first_base <= 1


def test_single_layer_views_keep_hook_scale_and_positions(tiny64, batch64):
    """persistence / compose_pairs / transfer apply a set's own vectors (hook, scale, positions), not a copy at
    the default hook."""
    s = _vec(tiny64, 7)
    only_prompt = si.SteeringSet([si.SteeringVector(s, "blocks.1.hook_mlp_out", 2.0, "prompt")])
    res = A.persistence(tiny64, batch64, only_prompt, observed_layers=[1, 2], positions="all")
    # delta at the steered layer is 2s on prompt tokens and 0 on completion tokens
    n_prompt = int((batch64.prompt_mask).sum())
    n_all = int((batch64.prompt_mask | batch64.predicting_mask).sum())
    assert res.delta_norm[0, 0] == pytest.approx(float(2 * s.norm()) * n_prompt / n_all, rel=1e-9)
    # over completion positions only the last prompt token of each row is steered; the prompt's report is all 2s
    comp = A.persistence(tiny64, batch64, only_prompt, observed_layers=[1, 2])
    n_pred = int(batch64.predicting_mask.sum())
    assert comp.delta_norm[0, 0] == pytest.approx(float(2 * s.norm()) * len(batch64) / n_pred, rel=1e-9)
    assert comp.prompt.delta_norm[0, 0] == pytest.approx(float(2 * s.norm()), rel=1e-9)
    moved = A.transfer_vectors(only_prompt, tiny64, layer_map={1: 2})
    v = moved[2]
    assert v.hook_name == "blocks.2.hook_mlp_out" and v.scale == 2.0 and v.positions.kind == "prompt"
    with pytest.raises(SteerInterpError, match="two vectors in block 1"):
        A.persistence(tiny64, batch64, si.SteeringSet([si.SteeringVector(s, "blocks.1.hook_mlp_out"),
                                                        si.SteeringVector(s, "blocks.1.hook_resid_post")]))


def test_batches_longer_than_the_context_are_a_clear_error(tiny):
    n_ctx = tiny.cfg.n_ctx
    n_prompt = len(tiny.tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"])
    long = "b" * (n_ctx - n_prompt + 1)  # one token per byte of plain text
    with pytest.raises(SteerInterpError, match=f"^{n_ctx + 1} tokens exceed the model's context of {n_ctx} \\(prompt 1: ") as e:
        A.teacher_forcing_batch(tiny, PROMPTS, [COMPLETIONS[0], long])
    assert "\n" not in str(e.value)
    fits = A.teacher_forcing_batch(tiny, PROMPTS, [COMPLETIONS[0], long[:-1]])  # exactly n_ctx tokens
    assert int(fits.attention_mask.sum(-1).max()) == n_ctx
    assert A.as_batch(fits, tiny) is fits
    grown = A.Batch(*(torch.cat([t, t[:, -1:]], 1) for t in (fits.tokens, fits.attention_mask, fits.prompt_mask,
                                                                fits.completion_mask)))
    with pytest.raises(SteerInterpError, match=f"^{n_ctx + 1} tokens exceed the model's context of {n_ctx} \\(row 1 "):
        A.as_batch(grown, tiny)
    assert A.as_batch(grown) is grown  # without a model there is no context to check


def test_weight_change_measures_the_distance_between_family_members(tiny):
    """Exact identities on a copy of the tiny model: 0 for itself; one parameter moved by a known delta gives
    that parameter's relative change, and the overall one recomputed by hand; other shapes are refused."""
    import copy

    from steerinterp.analysis import weight_change

    same = weight_change(tiny, tiny)
    assert same.relative == 0.0 and same.changed == []
    other = copy.deepcopy(tiny)
    name, p = next((n, p) for n, p in other.named_parameters() if p.ndim == 2)
    delta = torch.randn_like(p) * 0.01
    with torch.no_grad():
        p.add_(delta)
    res = weight_change(tiny, other)
    assert res.changed == [name]
    ref = dict(tiny.named_parameters())[name].double()
    row = res.to_frame().set_index("parameter").loc[name]
    assert row["change"] == pytest.approx(float(delta.double().norm()), rel=1e-5)
    assert row["relative"] == pytest.approx(float(delta.double().norm() / ref.norm()), rel=1e-5)
    total = sum(float(q.double().norm()) ** 2 for q in tiny.parameters()) ** 0.5
    assert res.relative == pytest.approx(float(delta.double().norm()) / total, rel=1e-5)
    assert res.plot().data[0].y is not None
    with pytest.raises(SteerInterpError, match="same width"):
        weight_change(tiny, si.load_model("tiny", tiny=si.TinyConfig(d_model=96, seed=1)))
    with pytest.raises(SteerInterpError, match="same architecture"):
        weight_change(tiny, si.load_model("tiny", tiny=si.TinyConfig(n_layers=tiny.cfg.n_layers + 1, seed=1)))
