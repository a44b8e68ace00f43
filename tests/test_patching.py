"""Block patching after a steered layer: identities and a hand-written forward of the last block."""

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.analysis.block_patching import Patch, patched_final_residuals, standard_patches
from steerinterp.errors import SteerInterpError

TEXT = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\nTo add them: 5"


@pytest.fixture(scope="module")
def setup(tiny64):
    model = tiny64
    batch = A.teacher_forcing_batch(model, [TEXT[:-14]], [TEXT[-14:]])  # no padding: one sequence
    g = torch.Generator().manual_seed(3)
    s = torch.randn(model.cfg.d_model, generator=g, dtype=torch.float64) * 2
    vecs = si.SteeringSet.from_tensors(model, {2: s})
    return model, batch, vecs, s


def _runs(model, batch, vecs):
    with torch.no_grad():
        _, base = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
        with vecs.applied(model):
            _, steer = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    return base, steer


def hand_block(model, h_in, rot_q, rot_k, v, z=None, attn_for_mlp=None, attn_for_resid=None):
    """The last block written out: GQA attention from rotated q/k and v, W_O, then ln2 + MLP."""
    blk = model.blocks[3]
    n_heads, n_kv, d_head = model.cfg.n_heads, model.cfg.n_key_value_heads, model.cfg.d_head
    if z is None:
        k = rot_k.repeat_interleave(n_heads // n_kv, dim=2)
        vv = v.repeat_interleave(n_heads // n_kv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", rot_q, k) / d_head**0.5
        t = scores.shape[-1]
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vv)
    attn = torch.einsum("bqhd,hdm->bqm", z, blk.attn.W_O) + blk.attn.b_O
    a_mlp = attn if attn_for_mlp is None else attn_for_mlp(attn)
    a_res = attn if attn_for_resid is None else attn_for_resid(attn)
    mlp = blk.mlp(blk.ln2(h_in + a_mlp))
    return h_in + a_res + mlp


def test_reference_patches_and_identities(setup):
    model, batch, vecs, s = setup
    base, steer = _runs(model, batch, vecs)
    n_heads = model.cfg.n_heads
    patches = [Patch("no_patch"), Patch("base", base_run=True), Patch("skip_attn", attn=True),
               Patch("all_z", z_heads=tuple(range(n_heads))), Patch("skip_layer", attn=True, mlp=True),
               Patch("all_q_k_v", q_heads=tuple(range(n_heads)), k_groups=(0, 1), v_groups=(0, 1))]
    out = patched_final_residuals(model, batch, vecs, patches, layer=3)
    final = "blocks.3.hook_resid_post"
    assert torch.allclose(out[0], steer[final], atol=1e-12)  # no_patch = steered
    assert torch.equal(out[1], base[final])  # base = unsteered
    assert torch.allclose(out[2], out[3], atol=1e-12)  # all heads' z = Skip-Attn
    assert torch.allclose(out[4], base[final] + s, atol=1e-12)  # Skip-Layer = unsteered block + s before ln_final
    assert torch.allclose(out[5], out[2], atol=1e-12)  # all of q, k, v from base = the base attention output
    assert (out[0] - out[1]).abs().max() > 1e-3


@pytest.mark.parametrize("patch", [
    Patch("skip_head[1]", z_heads=(1,)), Patch("skip_head[1]->mlp", z_heads=(1,), path="mlp"),
    Patch("skip_head[1]->resid", z_heads=(1,), path="resid"), Patch("steer_head[2]", z_heads=(0, 1, 3)),
    Patch("q[3]", q_heads=(3,)), Patch("k[1]", k_groups=(1,)), Patch("v[0]", v_groups=(0,)),
    Patch("skip_attn->resid", attn=True, path="resid"),
])
def test_each_patch_matches_a_hand_written_last_block(setup, patch):
    model, batch, vecs, _ = setup
    base, steer = _runs(model, batch, vecs)
    got = patched_final_residuals(model, batch, vecs, [patch], layer=3)[0]
    h_in = steer["blocks.3.hook_resid_pre"]
    rq, rk, v = (steer[f"blocks.3.attn.hook_{n}"].clone() for n in ("rot_q", "rot_k", "v"))
    rq[:, :, list(patch.q_heads)] = base["blocks.3.attn.hook_rot_q"][:, :, list(patch.q_heads)]
    rk[:, :, list(patch.k_groups)] = base["blocks.3.attn.hook_rot_k"][:, :, list(patch.k_groups)]
    v[:, :, list(patch.v_groups)] = base["blocks.3.attn.hook_v"][:, :, list(patch.v_groups)]
    z = None
    if patch.z_heads:
        z = steer["blocks.3.attn.hook_z"].clone()
        z[:, :, list(patch.z_heads)] = base["blocks.3.attn.hook_z"][:, :, list(patch.z_heads)]
    steered_attn = steer["blocks.3.hook_attn_out"]
    if patch.attn:
        patched_attn = base["blocks.3.hook_attn_out"]
        expected = hand_block(model, h_in, rq, rk, v, attn_for_mlp=lambda a: steered_attn,
                              attn_for_resid=lambda a: patched_attn)
    elif patch.path == "mlp":
        expected = hand_block(model, h_in, rq, rk, v, z=z, attn_for_resid=lambda a: steered_attn)
    elif patch.path == "resid":
        expected = hand_block(model, h_in, rq, rk, v, z=z, attn_for_mlp=lambda a: steered_attn)
    else:
        expected = hand_block(model, h_in, rq, rk, v, z=z)
    assert torch.allclose(got, expected, atol=1e-10)
    # the hand-written block reproduces the unpatched steered run too
    plain = hand_block(model, h_in, steer["blocks.3.attn.hook_rot_q"], steer["blocks.3.attn.hook_rot_k"],
                       steer["blocks.3.attn.hook_v"])
    assert torch.allclose(plain, steer["blocks.3.hook_resid_post"], atol=1e-10)


def test_batched_sweep_equals_one_patch_at_a_time(tiny64):
    model = tiny64
    batch = A.teacher_forcing_batch(model, ["<|im_start|>user\nhi<|im_end|>\n", "a longer prompt here"], ["ok then", "x"])
    vecs = si.SteeringSet.from_tensors(model, {1: torch.randn(model.cfg.d_model, dtype=torch.float64)})
    patches = standard_patches(model)
    together = patched_final_residuals(model, batch, vecs, patches, layer=2)
    for i, p in enumerate(patches):
        alone = patched_final_residuals(model, batch, vecs, [p], layer=2)[0]
        real = batch.attention_mask.bool()
        assert torch.allclose(together[i][real], alone[real], atol=1e-10), p.name


def test_block_patching_metrics(setup):
    model, batch, vecs, _ = setup
    res = A.block_patching(model, batch, vecs, positions="completion", track=[77])
    df = res.to_frame().set_index("patch")
    assert df.loc["no_patch", "kl_from_steered"] == pytest.approx(0, abs=1e-10)
    assert df.loc["base", "kl_to_base"] == pytest.approx(0, abs=1e-12)
    assert df.loc["no_patch", "retained"] == pytest.approx(1.0) and df.loc["base", "retained"] == pytest.approx(0.0)
    assert df.loc["no_patch", "effect_lost"] == pytest.approx(0.0, abs=1e-10)
    assert df.loc["base", "effect_lost"] == pytest.approx(1.0)
    assert df.loc["no_patch", "kl_to_base"] > 1e-6 and df.loc["skip_layer", "kl_to_base"] > 0
    n_kv = model.cfg.n_key_value_heads
    assert len(df) == 4 + 4 * 3 + n_kv * 2 + 2 + 4 * 2
    res.plot(), res.plot("retained", prefix="steer_head[")
    with pytest.raises(SteerInterpError, match="block must follow"):
        A.block_patching(model, batch, si.SteeringSet.from_tensors(model, {3: torch.ones(64, dtype=torch.float64)}))
    with pytest.raises(SteerInterpError, match="path="):
        Patch("x", path="sideways")


def test_effect_lost_is_the_papers_ratio(setup):
    """effect_lost = KL(steered || patched) / KL(steered || base): 0 patching nothing, 1 back to the base model."""
    from steerinterp.analysis.readout import final_logprobs

    model, batch, vecs, _ = setup
    patches = [Patch("nothing"), Patch("base", base_run=True), Patch("skip_attn", attn=True),
               Patch("skip_layer", attn=True, mlp=True)]
    res = A.block_patching(model, batch, vecs, patches, positions="completion")
    df = res.to_frame().set_index("patch")
    assert list(df.columns[:4]) == ["effect_lost", "kl_from_steered", "kl_to_base", "retained"]
    assert df.loc["nothing", "kl_from_steered"] == pytest.approx(0, abs=1e-12)  # patching nothing: KL(steered || patched) = 0
    assert df.loc["nothing", "effect_lost"] == pytest.approx(0, abs=1e-10)
    assert df.loc["base", "effect_lost"] == pytest.approx(1.0, abs=1e-12)  # everything back to base: ratio 1
    assert df.loc["base", "retained"] == pytest.approx(0, abs=1e-12)
    assert df.loc["nothing", "retained"] == pytest.approx(1.0, abs=1e-10)
    # the ratio by hand, from the patched final residuals and the full softmaxes
    out = patched_final_residuals(model, batch, vecs, patches, layer=3)
    sel = batch.predicting_mask
    with torch.no_grad(), vecs.applied(model):
        steered = model(batch.tokens, attention_mask=batch.attention_mask)
    with torch.no_grad():
        base = model(batch.tokens, attention_mask=batch.attention_mask)
    ls, lb = (torch.log_softmax(x[sel].double(), -1) for x in (steered, base))
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)  # noqa: E731
    ref = kl(ls, lb).mean()
    assert res.kl_steered_base == pytest.approx(float(ref), rel=1e-9)
    for i, name in enumerate(df.index):
        lp = final_logprobs(model, out[i][sel])
        assert df.loc[name, "kl_from_steered"] == pytest.approx(float(kl(ls, lp).mean()), rel=1e-9, abs=1e-13)
        assert df.loc[name, "effect_lost"] == pytest.approx(float(kl(ls, lp).mean() / ref), rel=1e-9, abs=1e-12)
        assert df.loc[name, "retained"] == pytest.approx(float(kl(lp, lb).mean() / ref), rel=1e-9, abs=1e-12)
    assert 0 < df.loc["skip_layer", "effect_lost"] and df.loc["skip_layer", "effect_lost"] != df.loc["skip_layer", "retained"]
    # per completion position: 0 and 1 at every position
    pf = res.position_frame()
    assert (pf.loc["base"] - 1).abs().max() < 1e-12 and pf.loc["nothing"].abs().max() < 1e-10
    assert res.position_frame("kl_from_steered").loc["skip_attn"].mean() == pytest.approx(df.loc["skip_attn", "kl_from_steered"])
    assert "effect_lost = KL(steered || patched) / KL(steered || base)" in res.plot(prefix="skip").layout.title.text
    with pytest.raises(SteerInterpError, match="metric="):
        res.position_frame("kl")


def test_patched_generation_matches_teacher_forced_patching(setup):
    """Greedy decoding under a patch (KV caches) agrees with the full-sequence patched forward."""
    from steerinterp.analysis.patched_generation import PatchedEngine

    model, batch, vecs, _ = setup
    prompts = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nhi<|im_end|>\n"]
    for patch in (Patch("skip_head[1]->mlp", z_heads=(1,), path="mlp"), Patch("k[0]", k_groups=(0,)),
                  Patch("skip_layer", attn=True, mlp=True)):
        out = si.generate(model, prompts, steering=vecs, max_new_tokens=6, temperature=0,
                          engine=PatchedEngine(model, 3, patch))
        b = A.as_batch(out)
        final = patched_final_residuals(model, b, vecs, [patch], layer=3)[0]
        logits = model.unembed(model.ln_final(final))
        pred = logits.argmax(-1)
        for r in range(len(prompts)):
            gen = b.completion_mask[r].nonzero()[:, 0]
            assert torch.equal(pred[r, gen - 1], b.tokens[r, gen]), patch.name


def test_patched_accuracy_references(tiny):
    from steerinterp.analysis.patched_generation import patched_accuracy
    from steerinterp.tasks import arithmetic_task
    from steerinterp.tasks.evaluation import evaluate

    task = arithmetic_task("add1")
    vecs = si.SteeringSet.from_tensors(tiny, {2: torch.randn(64) * 3})
    kw = dict(problems=task.test[:3], max_new_tokens=4)
    res = patched_accuracy(tiny, task, vecs, [Patch("no_patch"), Patch("base", base_run=True), Patch("skip_attn", attn=True)],
                           progress=False, **kw)
    ref = evaluate(tiny, task, {"base": None, "steered": vecs}, samples=0, **kw)
    rows = {(r["variant"], r["problem"]): r["completion"] for r in res.evaluation.rows}
    for r in ref.rows:
        assert rows[("no_patch" if r["variant"] == "steered" else "base", r["problem"])] == r["completion"]
    assert set(res.to_frame()["variant"]) == {"no_patch", "base", "skip_attn"}
    res.plot(prefix="skip_attn")


def test_attention_diff_oracle(setup):
    model, batch, vecs, _ = setup
    res = A.attention_diff(model, batch, vecs, positions="all", layer_chunk=3)
    df = res.to_frame().set_index(["layer", "head"])
    assert (df.loc[[0, 1, 2], "tv"] == 0).all()  # before and at the steered layer nothing moves
    base, steer = _runs(model, batch, vecs)
    pb, ps = base["blocks.3.attn.hook_pattern"][0], steer["blocks.3.attn.hook_pattern"][0]  # [heads, q, k]
    tv = 0.5 * (ps - pb).abs().sum(-1).mean(-1)
    assert df.loc[3, "tv"].to_numpy() == pytest.approx(tv.numpy(), abs=1e-12)
    m = 0.5 * (pb + ps)
    js = 0.5 * ((pb * (pb / m).log()).nan_to_num().sum(-1) + (ps * (ps / m).log()).nan_to_num().sum(-1)).mean(-1)
    assert df.loc[3, "js"].to_numpy() == pytest.approx(js.numpy(), abs=1e-12)
    total = df.loc[3, ["mass_first_token", "mass_prompt", "mass_generated"]].sum(axis=1)
    assert total.abs().max() < 1e-12  # mass moves between key groups, none is created
    first = (ps - pb)[:, :, 0].mean(-1)
    assert df.loc[3, "mass_first_token"].to_numpy() == pytest.approx(first.numpy(), abs=1e-12)
    assert res.top(2)["layer"].tolist() == [3, 3]
    res.plot(), res.plot("js")


def test_route_attribution_sums_to_the_exact_logit_change(setup):
    model, batch, vecs, s = setup
    res = A.route_attribution(model, batch, vecs, tokens=[77, 12], positions="completion")
    summ = res.summary()
    base, steer = _runs(model, batch, vecs)
    sel = batch.predicting_mask
    lb = model.unembed(model.ln_final(base["blocks.3.hook_resid_post"]))[sel].double()
    ls = model.unembed(model.ln_final(steer["blocks.3.hook_resid_post"]))[sel].double()
    for tok in (77, 12):
        label = model.tokenizer.decode([tok])
        assert summ.loc["total", label] == pytest.approx(float((ls - lb)[:, tok].mean()), abs=1e-9)
    comps = set(res.to_frame()["component"])
    assert comps == {"direct", "attn 3", "mlp 3", "norm"}  # vector at 2: only block 3 follows
    assert "attn 3 (next block)" in summ.index
    res.plot()


def test_path_patching_oracles(setup):
    from steerinterp.analysis.path_patching import Node, path_patch, token_logprob_metric

    model, batch, vecs, s = setup
    metric = token_logprob_metric(77, "completion")
    base, steer = _runs(model, batch, vecs)
    final = "blocks.3.hook_resid_post"

    def m(resid):
        return float(metric(model.unembed(model.ln_final(resid)), batch).mean())

    # the vector's residual node straight to the logits, every head and MLP frozen = Skip-Layer
    res = path_patch(model, batch, [Node.resid(2), [Node.head(3, h) for h in range(4)]], [Node.logits()], metric,
                     new_steering=vecs)
    assert res.reference == pytest.approx(m(base[final])) and res.new == pytest.approx(m(steer[final]))
    assert res.values[0] == pytest.approx(m(base[final] + s), abs=1e-10)
    # all heads of the last layer to the logits: reference + the change in attention output (b_O cancels)
    attn_delta = steer["blocks.3.hook_attn_out"] - base["blocks.3.hook_attn_out"]
    assert res.values[1] == pytest.approx(m(base[final] + attn_delta), abs=1e-10)
    # the vector's node to one query head of the last layer: only the direct residual path reaches it
    blk = model.blocks[3]
    x = blk.ln1(base["blocks.3.hook_resid_pre"] + s)
    q2 = torch.einsum("btd,dk->btk", x, blk.attn.W_Q[2]) + blk.attn.b_Q[2]

    def patch_q(act, hook):
        act = act.clone()
        act[:, :, 2] = q2
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask,
                                      fwd_hooks=[("blocks.3.attn.hook_q", patch_q)])
    res_q = path_patch(model, batch, [Node.resid(2)], [Node.q(3, 2)], metric, new_steering=vecs)
    assert res_q.values[0] == pytest.approx(float(metric(logits, batch).mean()), abs=1e-10)
    # a sweep equals one sender at a time; senders after the receiver do nothing
    heads = [Node.head(2, h) for h in range(4)] + [Node.mlp(2)]
    vecs1 = si.SteeringSet.from_tensors(model, {1: s})
    sweep = path_patch(model, batch, heads, [Node.mlp_in(3)], metric, new_steering=vecs1, sender_chunk=2)
    for i, h in enumerate(heads):
        one = path_patch(model, batch, [h], [Node.mlp_in(3)], metric, new_steering=vecs1)
        assert sweep.values[i] == pytest.approx(float(one.values[0]), abs=1e-10)
    late = path_patch(model, batch, [Node.head(3, 0)], [Node.q(3, 0)], metric, new_steering=vecs)
    assert late.values[0] == pytest.approx(late.reference, abs=1e-10)
    assert sweep.to_frame().shape[0] == 5
    sweep.plot(), path_patch(model, batch, [Node.head(3, h) for h in range(4)], [Node.logits()], metric,
                             new_steering=vecs).plot()
    with pytest.raises(SteerInterpError, match="receiver"):
        path_patch(model, batch, [Node.resid(2)], [Node("z", 3, 0)], metric)


def test_block_patching_per_position_kl(setup):
    model, batch, vecs, _ = setup
    res = A.block_patching(model, batch, vecs, [Patch("no_patch"), Patch("skip_attn", attn=True)], positions="completion")
    pf = res.position_frame("kl_to_base")
    n_c = int(batch.completion_mask.sum())
    assert pf.shape == (2, n_c)
    assert pf.loc["no_patch"].mean() == pytest.approx(res.to_frame().set_index("patch").loc["no_patch", "kl_to_base"])
    first = A.block_patching(model, batch, vecs, [Patch("no_patch")], positions="first")
    assert first.kl_to_base[0] == pytest.approx(float(pf.loc["no_patch", 0]))
