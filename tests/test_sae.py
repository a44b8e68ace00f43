"""DiffSAE and SAE-feature attribution on tiny models and hand-built SAEs: identities and oracles."""

import contextlib
import shutil

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp import sae as S
from steerinterp.errors import SteerInterpError
from tests.conftest import random_vector as _vec

PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nWhat is 4 + 4?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nhi<|im_end|>\n"]
COMPLETIONS = ["To solve it: 5", "8", "hello there friend"]
LABELS = [True, False, True]


@pytest.fixture(scope="module")
def batch64(tiny64):
    return A.teacher_forcing_batch(tiny64, PROMPTS, COMPLETIONS)


def _relu_sae(d_in, d_sae, *, w_enc=None, w_dec=None, dtype="float64", hook="blocks.1.hook_resid_post"):
    """A sae-lens StandardSAE (ReLU) with given weights and zero biases."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype=dtype))
    with torch.no_grad():
        if w_enc is not None:
            sae.W_enc.copy_(w_enc)
        if w_dec is not None:
            sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook
    return sae


def _planted(n=4000, d=16, n_dirs=24, seed=0, hook="blocks.1.hook_resid_post"):
    """Rows that are sparse non-negative combinations of fixed directions, 20 rows per sample."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    codes = (torch.rand(n, n_dirs, generator=g) < 0.08).float() * (1 + torch.rand(n, n_dirs, generator=g))
    samples = torch.arange(n) // 20
    return S.DiffActivations(hook, codes @ dirs, samples, torch.arange(n) % 20, torch.zeros(n, dtype=torch.long),
                             torch.ones(n, dtype=torch.bool), torch.arange(n // 20) % 3 == 0)


# --- collecting differences -------------------------------------------------------------------------

def test_differences_are_zero_before_and_exactly_the_vector_at_the_steered_layer(tiny64, batch64):
    s = _vec(tiny64, 1)
    vecs = si.SteeringSet.from_tensors(tiny64, {1: s})
    diffs = S.collect_differences(tiny64, batch64, vecs, [0, 1, 3], labels=LABELS)
    assert set(diffs) == {f"blocks.{i}.hook_resid_post" for i in (0, 1, 3)}
    at0, at1, at3 = (diffs[f"blocks.{i}.hook_resid_post"] for i in (0, 1, 3))
    assert at0.delta.abs().max() == 0
    assert torch.allclose(at1.delta, s.float().expand_as(at1.delta), atol=1e-6)
    assert at3.delta.norm(dim=-1).min() > 0
    # rows: every position predicting a completion token, labelled with its sample's label
    assert len(at1) == int(batch64.predicting_mask.sum())
    assert at1.in_completion.all()
    assert at1.row_labels.tolist() == [LABELS[i] for i in at1.sample.tolist()]
    assert at1.token.tolist() == [int(batch64.tokens[b, p]) for b, p in zip(at1.sample, at1.position)]
    assert len(at1.sample_tokens) == 3
    for row, mask in zip(at1.sample_tokens, batch64.attention_mask):  # padding is marked -1
        assert [t == -1 for t in row] == (mask == 0).tolist()


def test_all_positions_leave_out_the_attention_sink_and_chunking_changes_nothing(tiny64, batch64):
    vecs = si.SteeringSet.from_tensors(tiny64, {1: _vec(tiny64, 2)})
    full = S.collect_differences(tiny64, batch64, vecs, 2, labels=LABELS, positions="all")["blocks.2.hook_resid_post"]
    first_real = batch64.attention_mask.argmax(-1)
    assert len(full) == int(batch64.attention_mask.sum()) - 3
    assert not any(int(p) == int(first_real[s]) for s, p in zip(full.sample, full.position))
    assert (~full.in_completion).any() and full.in_completion.any()
    chunked = S.collect_differences(tiny64, batch64, vecs, 2, labels=LABELS, positions="all", batch_size=1)
    assert torch.equal(chunked["blocks.2.hook_resid_post"].delta, full.delta)
    assert torch.equal(chunked["blocks.2.hook_resid_post"].sample, full.sample)
    with pytest.raises(SteerInterpError, match="no hook point"):
        S.collect_differences(tiny64, batch64, vecs, 99, labels=LABELS)
    with pytest.raises(SteerInterpError, match="one label per sample"):
        S.collect_differences(tiny64, batch64, vecs, 2, labels=[True])
    with pytest.raises(SteerInterpError, match="positions="):
        S.collect_differences(tiny64, batch64, vecs, 2, labels=LABELS, positions="prompt")


def test_labelled_generations_use_the_tasks_verifier(tiny):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    gens = S.sample_labelled(tiny, task, si.SteeringSet.from_tensors(tiny, {1: _vec(tiny, 3)}),
                             problems=task.train[:3], samples_per_problem=2, max_new_tokens=4, seed=1)
    assert len(gens) == 6 and gens.problem_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert gens.correct.tolist() == [task.is_correct(t, task.train[i]) for t, i in zip(gens.output.texts, [0, 0, 1, 1, 2, 2])]
    forced = S.label_generations(task, task.train[:3], gens.output, [0, 0, 1, 1, 2, 2])
    forced.output.texts[0] = str(task.train[0].final_answer)
    assert S.label_generations(task, task.train[:3], forced.output, [0, 0, 1, 1, 2, 2]).correct[0]
    assert list(gens.to_frame().columns)[-2:] == ["problem", "correct"]


# --- the store and the activation stream ------------------------------------------------------------

def test_store_round_trip_and_split(tiny64, batch64, tmp_path):
    vecs = si.SteeringSet.from_tensors(tiny64, {1: _vec(tiny64, 4)})
    mem = S.collect_differences(tiny64, batch64, vecs, [1, 2], labels=LABELS, batch_size=1)
    chunks = S.iter_differences(tiny64, batch64, vecs, [1, 2], labels=LABELS, batch_size=1)
    S.write_difference_store(tmp_path / "d", chunks, labels=LABELS, sample_tokens=batch64.tokens.tolist())
    store = S.DiffActivationStore(tmp_path / "d")
    assert store.hooks == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    disk = store[2]
    assert disk.n_shards == 3 and len(disk) == len(mem["blocks.2.hook_resid_post"])
    loaded = disk.load()
    for f in ("delta", "sample", "position", "token", "in_completion"):
        assert torch.equal(getattr(loaded, f), getattr(mem["blocks.2.hook_resid_post"], f))
    train, held = disk.split_samples(0.34, seed=0)
    mtrain, mheld = mem["blocks.2.hook_resid_post"].split_samples(0.34, seed=0)
    assert torch.equal(train.load().sample, mtrain.sample) and torch.equal(held.load().sample, mheld.sample)
    assert set(held.load().sample.tolist()).isdisjoint(train.load().sample.tolist())
    # statistics stream shard by shard and match the in-memory rows
    d = tiny64.cfg.d_model
    sae = _relu_sae(d, 8, w_enc=torch.randn(d, 8, dtype=torch.float64), w_dec=torch.randn(8, d, dtype=torch.float64),
                    dtype="float64")
    mem2 = mem["blocks.2.hook_resid_post"]
    q_disk, q_mem = S.sae_quality(sae, disk), S.sae_quality(sae, mem2)
    assert (q_disk.l0, q_disk.dead, q_disk.n_rows) == (q_mem.l0, q_mem.dead, q_mem.n_rows)
    assert q_disk.mse == pytest.approx(q_mem.mse) and q_disk.fvu == pytest.approx(q_mem.fvu)  # summed shard by shard
    assert torch.equal(S.feature_frequencies(sae, disk).freq_correct, S.feature_frequencies(sae, mem2).freq_correct)
    with pytest.raises(SteerInterpError, match="already holds"):
        S.write_difference_store(tmp_path / "d", [], labels=LABELS)
    shutil.rmtree(tmp_path / "d" / "blocks.2.hook_resid_post")
    with pytest.raises(SteerInterpError, match="missing"):
        store[2].load()
    with pytest.raises(SteerInterpError, match="not a complete difference store"):
        S.DiffActivationStore(tmp_path)


def test_activation_batches_are_seeded_epoch_permutations_and_skip_exactly():
    acts = _planted(n=200, d=4)
    stream = S.activation_batches(acts, 50, seed=3)
    epoch = torch.cat([next(stream) for _ in range(4)])
    assert torch.equal(epoch[torch.argsort(epoch[:, 0])], acts.delta[torch.argsort(acts.delta[:, 0])])
    again = S.activation_batches(acts, 50, seed=3)
    first = [next(again) for _ in range(7)]
    skipped = S.activation_batches(acts, 50, seed=3, start_batch=5)
    assert torch.equal(next(skipped), first[5]) and torch.equal(next(skipped), first[6])
    assert not torch.equal(next(S.activation_batches(acts, 50, seed=4)), first[0])


def test_sharded_stream_visits_every_row_each_epoch(tmp_path):
    acts = _planted(n=240, d=4)
    parts = [acts.select(torch.arange(i, min(i + 70, 240))) for i in range(0, 240, 70)]
    S.write_difference_store(tmp_path / "s", ({acts.hook_name: p} for p in parts), labels=acts.labels)
    disk = S.DiffActivationStore(tmp_path / "s")[acts.hook_name]
    stream = S.activation_batches(disk, 40, seed=0, buffer_shards=2)
    epoch = torch.cat([next(stream) for _ in range(6)])
    assert torch.equal(epoch[torch.argsort(epoch[:, 0])], acts.delta[torch.argsort(acts.delta[:, 0])])


# --- training with sae-lens -------------------------------------------------------------------------

def test_topk_sae_learns_planted_directions_and_reports_quality(tmp_path):
    acts = _planted()
    dsae = S.train_diff_sae(acts, d_sae=48, k=4, batch_size=256, training_tokens=60_000, lr=2e-3)
    q = dsae.heldout_quality
    assert type(dsae.sae).__name__ == "TopKSAE"
    # rows: distinct rows only (about 13% of the planted rows are all zero, one row), 10% of the samples held out
    split = S.training_rows(acts, heldout=0.1, seed=0)
    zero = int((acts.delta == 0).all(-1).sum())
    assert split.n_distinct == len(acts) - zero + 1 and split.heldout_by == "generation (no problem ids)"
    assert q.n_rows == split.n_heldout and dsae.train_quality.n_rows == split.n_train
    assert split.n_train + split.n_heldout == split.n_distinct
    assert dsae.data == split.summary() and dsae.to_frame()["distinct_rows"].iloc[0] == split.n_distinct
    assert q.fvu < 0.2 and q.l0 <= 4 and 0 <= q.dead < 48
    # the report matches a recomputation by hand
    held = split.heldout
    with torch.no_grad():
        acts_h = dsae.sae.encode(held.delta)
        recon = dsae.sae.decode(acts_h)
    fvu = ((held.delta - recon) ** 2).sum() / ((held.delta - held.delta.mean(0)) ** 2).sum()
    assert abs(float(fvu) - q.fvu) < 1e-4 and abs(float((acts_h != 0).sum(-1).float().mean()) - q.l0) < 1e-6
    # save / load keeps the SAE and its report
    back = S.load_diff_sae(dsae.save(tmp_path / "sae"))
    assert back.hook_name == acts.hook_name and back.heldout_quality == q and back.data == dsae.data
    assert torch.equal(back.sae.encode(held.delta), acts_h)
    assert set(dsae.to_frame()["split"]) == {"train", "heldout"}


def test_interrupted_sae_training_resumes_to_identical_weights(tmp_path):
    acts = _planted(n=2000)
    kw = dict(d_sae=32, k=4, batch_size=200, training_tokens=8_000, lr=1e-3, n_checkpoints=3)
    whole = S.train_diff_sae(acts, checkpoint_dir=tmp_path / "a", **kw)
    S.train_diff_sae(acts, checkpoint_dir=tmp_path / "b", **kw)
    kept = sorted((p for p in (tmp_path / "b").iterdir()), key=lambda p: int(p.name))
    for later in kept[1:]:  # as if the run had died right after its first checkpoint
        shutil.rmtree(later)
    resumed = S.train_diff_sae(acts, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    for name, t in whole.sae.state_dict().items():
        assert torch.equal(t, resumed.sae.state_dict()[name]), name


def test_other_sae_lens_architectures_and_clear_errors():
    acts = _planted(n=1000)
    std = S.train_diff_sae(acts, architecture="standard", d_sae=32, batch_size=200, training_tokens=2_000,
                           sae_kwargs={"l1_coefficient": 1.0})
    assert type(std.sae).__name__ == "StandardSAE"
    with pytest.raises(SteerInterpError, match="not a sae-lens training architecture; choose from"):
        S.train_diff_sae(acts, architecture="nope")
    with pytest.raises(SteerInterpError, match="no setting 'colour'"):
        S.train_diff_sae(acts, batch_size=200, sae_kwargs={"colour": 1})
    with pytest.raises(SteerInterpError, match="fewer than one batch"):
        S.train_diff_sae(acts, batch_size=5000)
    with pytest.raises(SteerInterpError, match="checkpoint_dir"):
        S.train_diff_sae(acts, resume=True)


# --- feature statistics -------------------------------------------------------------------------------

def _hand_labelled():
    """4 samples (2 correct), d=3; with an identity ReLU SAE feature i fires iff delta_i > 0."""
    delta = torch.tensor([[1., 0, 0], [0, 2, 0], [3, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 5], [0, 0, 1]])
    sample = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    comp = torch.tensor([True, True, True, True, True, True, False])
    labels = torch.tensor([True, True, False, False])
    tokens = [[10, 11, 12], [13, 14, 15], [16, 17, 18], [19, 20, 21]]
    pos = torch.tensor([0, 1, 0, 1, 2, 1, 2])
    return S.DiffActivations("blocks.1.hook_resid_post", delta, sample, pos, torch.tensor([t[p] for t, p in zip(
        [tokens[s] for s in sample.tolist()], pos.tolist())]), comp, labels, tokens)


def test_feature_frequencies_oracle():
    from scipy.stats import fisher_exact

    d = _hand_labelled()
    sae = _relu_sae(3, 3, w_enc=torch.eye(3, dtype=torch.float64), w_dec=torch.eye(3, dtype=torch.float64), dtype="float32")
    r = S.feature_frequencies(sae, d)
    # samples 0, 1 are correct, 2, 3 incorrect; feature 0 fires in samples 0, 1; feature 1 in 0, 2;
    # feature 2 in 3 (row 6, not a completion row, only counts with rows="all")
    assert r.freq_correct.tolist() == [1.0, 0.5, 0.0] and r.freq_incorrect.tolist() == [0.0, 0.5, 0.5]
    assert r.token_freq_correct.tolist() == [0.5, 0.25, 0.0] and r.token_freq_incorrect.tolist() == [0.0, 0.5, 0.5]
    assert r.mean_activation.tolist() == [2.0, 1.5, 5.0]
    assert r.p_value[0] == pytest.approx(fisher_exact([[2, 0], [0, 2]])[1])
    assert r.p_value[1] == pytest.approx(1.0)
    assert r.top(1, toward="correct") == [0] and r.top(1, toward="incorrect") == [2]
    everything = S.feature_frequencies(sae, d, rows="all")
    assert everything.freq_incorrect[2] == 0.5 and everything.token_freq_incorrect[2] == pytest.approx(2 / 3)
    assert everything.mean_activation[2] == 3.0
    frame = r.to_frame()
    assert frame["feature"].tolist()[0] in (0, 2) and len(r.plot().data) == 2
    by_layer = S.frequencies_by_layer({1: r, 2: r}, k=2)
    assert len(by_layer.to_frame()) == 4 and len(by_layer.plot().data) == 2
    only_correct = S.DiffActivations(d.hook_name, d.delta, d.sample, d.position, d.token, d.in_completion,
                                     torch.ones(4, dtype=torch.bool), d.sample_tokens)
    with pytest.raises(SteerInterpError, match="both correct and incorrect"):
        S.feature_frequencies(sae, only_correct)


def test_stratified_test_discounts_features_that_only_mark_hard_problems():
    from scipy.stats import chi2

    # problems A (samples 0-3: 2 correct, 2 incorrect), B (4-11: all correct), C (12-19: all incorrect);
    # feature 0 fires on every sample of C only, feature 1 on the two incorrect samples of A
    labels = torch.tensor([1, 1, 0, 0] + [1] * 8 + [0] * 8, dtype=torch.bool)
    problem = torch.tensor([0] * 4 + [1] * 8 + [2] * 8)
    rows = torch.zeros(20, 2)
    rows[12:, 0] = 1.0
    rows[[2, 3], 1] = 1.0
    d = S.DiffActivations("blocks.1.hook_resid_post", rows, torch.arange(20), torch.ones(20, dtype=torch.long),
                          torch.zeros(20, dtype=torch.long), torch.ones(20, dtype=torch.bool), labels)
    sae = _relu_sae(2, 2, w_enc=torch.eye(2, dtype=torch.float64), w_dec=torch.eye(2, dtype=torch.float64), dtype="float32")
    plain = S.feature_frequencies(sae, d)
    within = S.feature_frequencies(sae, d, strata=problem)
    assert plain.test == "fisher" and within.test == "cmh" and within.to_frame()["test"].iloc[0] == "cmh"
    assert plain.p_value[0] < 0.05 and within.p_value[0] == 1.0  # only marks problem C
    # feature 1 in stratum A by the textbook formula: a = 0, E = 2 * 2 / 4, Var = 2*2*2*2 / (4^2 * 3)
    stat = (abs(0 - 1.0) - 0.5) ** 2 / (16 / 48)
    assert within.p_value[1] == pytest.approx(chi2.sf(stat, 1))
    assert torch.equal(within.freq_correct, plain.freq_correct)
    with pytest.raises(SteerInterpError, match="one id per sample"):
        S.feature_frequencies(sae, d, strata=problem[:3])


def test_benjamini_hochberg_oracle():
    from steerinterp.sae.features import benjamini_hochberg

    p = torch.tensor([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    assert torch.allclose(benjamini_hochberg(p), torch.tensor([0.04, 0.0533333, 0.0533333, 0.2], dtype=torch.float64))


def test_top_contexts_and_decoder_logit_lens(tiny64):
    d = _hand_labelled()
    sae = _relu_sae(3, 3, w_enc=torch.eye(3, dtype=torch.float64), w_dec=torch.eye(3, dtype=torch.float64), dtype="float32")
    ctx = S.top_contexts(tiny64, sae, d, [0, 2], k=2, window=1)
    rows = ctx.to_frame()
    assert rows[rows.feature == 0].activation.tolist() == [3.0, 1.0]
    top = rows.iloc[0]
    assert (top["sample"], top["position"], top["correct"]) == (1, 0, True)
    t13, t14 = A.batch.token_strings(tiny64, [13, 14])
    assert top["context"] == f"[[{t13}]]{t14}" and top["token"] == t13
    assert rows[rows.feature == 2].activation.tolist() == [5.0, 1.0]
    # a decoder row along one unembedding column reads out as that token
    w_u = tiny64.W_U.detach()
    w_dec = torch.randn(4, tiny64.cfg.d_model, dtype=torch.float64) * 1e-3
    w_dec[2] = w_u[:, 7]
    big = _relu_sae(tiny64.cfg.d_model, 4, w_dec=w_dec)
    lens = S.decoder_logit_lens(tiny64, big, [2, 0], mode="raw")
    assert lens.layers == [0, 2] and lens.top(2, 1) == [7] and "feature" in lens.to_frame().columns


# --- attribution and steering -------------------------------------------------------------------------

@pytest.mark.parametrize("difference", [False, True])
def test_attribution_terms_add_up_to_gradient_times_input_and_leave_the_output_unchanged(tiny64, batch64, difference):
    model = tiny64
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    sae = _relu_sae(d, 3 * d, w_enc=torch.randn(d, 3 * d, generator=g, dtype=torch.float64) / d ** 0.5,
                    w_dec=torch.randn(3 * d, d, generator=g, dtype=torch.float64) / d ** 0.5, hook="blocks.2.hook_resid_post")
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=g, dtype=torch.float64))
        sae.b_enc.copy_(torch.randn(3 * d, generator=g, dtype=torch.float64) * 0.1)
    vecs = si.SteeringSet.from_tensors(model, {1: _vec(model, 6)})
    metric = A.completion_logprob_metric()
    r = S.sae_feature_attribution(model, batch64, sae, metric, steering=vecs, difference=difference, batch_size=2)
    assert r.output_change < 1e-10
    parts = r.attribution.sum(1) + r.error + r.bias + r.reference
    assert torch.allclose(parts, r.grad_x_input, atol=1e-9, rtol=1e-9)
    assert (r.reference.abs() > 0).all() == difference
    # oracle: the gradient of the metric w.r.t. the hook activation, by a plain hook, times the activation
    grabbed = {}

    def grab(act, hook):
        act = act.detach().requires_grad_(True)
        grabbed["x"] = act
        return act

    with vecs.applied(model, prompt_mask=batch64.prompt_mask, attention_mask=batch64.attention_mask), \
            si.steering.add_hooks(model, [("blocks.2.hook_resid_post", grab)]):
        logits = model(batch64.tokens, attention_mask=batch64.attention_mask)
        metric(logits, batch64).sum().backward()
    x = grabbed["x"]
    assert torch.allclose((x * x.grad).sum((1, 2)), r.grad_x_input, atol=1e-9)
    assert torch.allclose(metric(logits, batch64).detach(), r.metric)
    # first order: scaling one feature's activation by (1 + eps) moves the metric by eps * attribution
    f = r.top(1)[0]
    eps = 1e-5

    def bump(act, hook):
        ref = torch.zeros_like(act)
        if difference:
            ref = base_ref
        f_acts = sae.encode(act - ref)
        return act + eps * f_acts[..., f : f + 1] * sae.W_dec[f]

    base_ref = A.batch.run_cached(model, batch64, None, ["blocks.2.hook_resid_post"])[1]["blocks.2.hook_resid_post"]
    with torch.no_grad(), vecs.applied(model, prompt_mask=batch64.prompt_mask, attention_mask=batch64.attention_mask):
        with si.steering.add_hooks(model, [("blocks.2.hook_resid_post", bump)]):
            bumped = metric(model(batch64.tokens, attention_mask=batch64.attention_mask), batch64)
    assert torch.allclose((bumped - r.metric) / eps, r.attribution[:, f], rtol=1e-3, atol=1e-6)
    assert not model.hook_dict["blocks.2.hook_resid_post"].fwd_hooks
    assert r.to_frame(5)["term"].tolist()[-3:] == ["error", "bias", "reference"] and r.plot().data


NORMALISATIONS = ["none", "expected_average_only_in", "layer_norm", "constant_norm_rescale", "covariance_whitening"]


def _expected_decoder_offset(sae, x):
    """decode(0) by hand: b_dec through sae-lens's run-time output normalisation of this input."""
    b = sae.b_dec.detach()
    norm = sae.cfg.normalize_activations
    if norm == "layer_norm":  # in: (x - mu) / (std + eps); out: y * std + mu
        mu = x.mean(-1, keepdim=True)
        return b * (x - mu).std(-1, keepdim=True) + mu
    if norm == "constant_norm_rescale":  # in: x * sqrt(d) / |x|; out: y * |x| / sqrt(d)
        return b * x.norm(dim=-1, keepdim=True) / sae.cfg.d_in ** 0.5
    return b.expand_as(x)  # none, expected_average_only_in, covariance_whitening: identity at run time


@pytest.mark.parametrize("arch", ["standard", "topk"])
@pytest.mark.parametrize("normalize", NORMALISATIONS)
def test_attribution_identity_holds_for_every_sae_lens_normalisation(tiny64, batch64, normalize, arch):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    model, hook = tiny64, "blocks.2.hook_resid_post"
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(1)
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=3 * d, dtype="float64", normalize_activations=normalize))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=3 * d, k=8, dtype="float64", normalize_activations=normalize,
                                    rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, 3 * d, generator=g, dtype=torch.float64) / d ** 0.5)
        sae.W_dec.copy_(torch.randn(3 * d, d, generator=g, dtype=torch.float64) / d ** 0.5)
        sae.b_dec.copy_(torch.randn(d, generator=g, dtype=torch.float64))
        sae.b_enc.copy_(torch.randn(3 * d, generator=g, dtype=torch.float64) * 0.1)
    sae.cfg.metadata.hook_name = hook
    metric = A.completion_logprob_metric()
    r = S.sae_feature_attribution(model, batch64, sae, metric, batch_size=2)
    assert r.output_change < 1e-10  # the splice leaves the output unchanged
    parts = r.attribution.sum(1) + r.error + r.bias + r.reference
    assert torch.allclose(parts, r.grad_x_input, atol=1e-9, rtol=1e-9)
    assert (r.attribution != 0).any() and (r.reference == 0).all()
    # oracle: the gradient at the hook by a plain hook, and decode(0) written out for the normalisation
    grabbed = {}

    def grab(act, hook):
        act = act.detach().requires_grad_(True)
        grabbed["x"] = act
        return act

    with si.steering.add_hooks(model, [(hook, grab)]):
        metric(model(batch64.tokens, attention_mask=batch64.attention_mask), batch64).sum().backward()
    x, m = grabbed["x"], batch64.attention_mask[..., None].double()
    assert torch.allclose((x * x.grad * m).sum((1, 2)), r.grad_x_input, atol=1e-9)
    expected_bias = (_expected_decoder_offset(sae, x.detach()) * x.grad * m).sum((1, 2))
    assert torch.allclose(r.bias, expected_bias, atol=1e-9, rtol=1e-9)
    if normalize in ("layer_norm", "constant_norm_rescale"):  # the plain b_dec . grad term would be wrong
        assert not torch.allclose(r.bias, (sae.b_dec.detach() * x.grad * m).sum((1, 2)), atol=1e-3)


def test_attribution_errors(tiny64, batch64):
    sae = _relu_sae(tiny64.cfg.d_model, 8, hook="")
    with pytest.raises(SteerInterpError, match="which hook"):
        S.sae_feature_attribution(tiny64, batch64, sae, A.completion_logprob_metric())
    with pytest.raises(SteerInterpError, match="steering="):
        S.sae_feature_attribution(tiny64, batch64, sae, A.completion_logprob_metric(), hook_name="blocks.1.hook_resid_post",
                                  difference=True)


def test_feature_vector_steers_along_the_decoder_row(tiny64, batch64):
    d = tiny64.cfg.d_model
    w_dec = torch.randn(5, d, dtype=torch.float64)
    sae = _relu_sae(d, 5, w_dec=w_dec, hook="blocks.2.hook_resid_post")
    v = S.feature_vector(sae, 3, norm=2.5)
    assert v.hook_name == "blocks.2.hook_resid_post" and v.vector.norm().item() == pytest.approx(2.5)
    assert torch.allclose(v.vector / 2.5, w_dec[3] / w_dec[3].norm())
    with si.SteeringSet([v]).applied(tiny64):
        steered = tiny64(batch64.tokens, attention_mask=batch64.attention_mask)
    with si.SteeringSet.from_tensors(tiny64, {2: w_dec[3] / w_dec[3].norm() * 2.5}).applied(tiny64):
        manual = tiny64(batch64.tokens, attention_mask=batch64.attention_mask)
    assert torch.allclose(steered, manual)
    assert torch.equal(S.feature_vector(sae, 3).vector, w_dec[3])
    with pytest.raises(SteerInterpError, match="out of range"):
        S.feature_vector(sae, 5)
    with pytest.raises(SteerInterpError, match="scale=-1"):
        S.feature_vector(sae, 0, norm=-1)


# --- rows: problem ids, distinct rows, held out by problem ---------------------------------------------

ROW_PROMPTS = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nWhat is 4 + 4?<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nhi<|im_end|>\n"]


def _row_batch(model):
    """Three problems, two generations each (shared prompt; problem 0's two completions are the same)."""
    prompts = [ROW_PROMPTS[i] for i in (0, 0, 1, 1, 2, 2)]
    completions = ["5", "5", "The answer is 8", "8", "hello", "hello there"]
    return A.teacher_forcing_batch(model, prompts, completions), torch.tensor([0, 0, 1, 1, 2, 2])


def _hand_keys(d):
    """Each row named by its real tokens up to its position and its distance from the prompt's end."""
    first = {}
    for s, p, c in zip(d.sample.tolist(), d.position.tolist(), d.in_completion.tolist()):
        if c:
            first[s] = min(first.get(s, p), p)
    return [(tuple(t for t in d.sample_tokens[s][: p + 1] if t >= 0), p - first[s] + 1 if c else 0)
            for s, p, c in zip(d.sample.tolist(), d.position.tolist(), d.in_completion.tolist())]


def test_rows_carry_problem_ids_and_equal_rows_share_a_key(tiny64, tmp_path):
    batch, problems = _row_batch(tiny64)
    vecs = si.SteeringSet.from_tensors(tiny64, {0: _vec(tiny64, 3)})
    labels = [True, False, True, False, True, True]
    d = S.collect_differences(tiny64, batch, vecs, [2], labels=labels, positions="all", problems=problems,
                              batch_size=2)["blocks.2.hook_resid_post"]
    assert torch.equal(d.problem, problems) and torch.equal(d.select(d.in_completion).problem, problems)
    keys, hand = S.row_keys(d), _hand_keys(d)
    assert len(set(keys.tolist())) == len(set(hand))  # as many distinct keys as distinct (prefix, offset) pairs
    for i in range(len(d)):
        for j in range(i):
            assert (keys[i] == keys[j]) == (hand[i] == hand[j])
            if hand[i] == hand[j]:  # the same row in another generation (other padding): the same values
                assert torch.allclose(d.delta[i], d.delta[j], atol=1e-10)
    assert len(set(hand)) < len(d)  # prompts repeat within problems and share the chat prefix across them
    with pytest.raises(SteerInterpError, match="problem ids"):
        S.collect_differences(tiny64, batch, vecs, [2], labels=labels, problems=[0, 1])
    # LabelledGenerations label rows with their problems; a store keeps them
    from steerinterp.sae.collect import LabelledGenerations

    gens = LabelledGenerations(batch, torch.tensor(labels), problems, [])
    via_gens = S.collect_differences(tiny64, gens, vecs, [2], positions="all")["blocks.2.hook_resid_post"]
    assert torch.equal(via_gens.problem, problems)
    S.write_difference_store(tmp_path / "s", S.iter_differences(tiny64, gens, vecs, [2], positions="all", batch_size=4),
                             labels=labels, sample_tokens=S.sample_token_rows(batch))
    disk = S.DiffActivationStore(tmp_path / "s")[2]
    assert torch.equal(disk.problem, problems) and torch.equal(S.row_keys(disk.load()), keys)


def test_training_rows_are_distinct_and_held_out_by_problem(tiny64, tmp_path):
    batch, problems = _row_batch(tiny64)
    vecs = si.SteeringSet.from_tensors(tiny64, {0: _vec(tiny64, 3)})
    labels = [True, False, True, False, True, True]
    d = S.collect_differences(tiny64, batch, vecs, [2], labels=labels, positions="all",
                              problems=problems)["blocks.2.hook_resid_post"]
    hand = _hand_keys(d)
    split = S.training_rows(d, heldout=0.34, seed=0)  # one of the three problems
    assert split.heldout_by == "problem" and split.n_problems == 3 and split.n_heldout_problems == 1
    held_problems = set(problems[split.heldout.sample].tolist())
    assert len(held_problems) == 1 and held_problems.isdisjoint(problems[split.train.sample].tolist())
    train_keys, held_keys = S.row_keys(split.train).tolist(), S.row_keys(split.heldout).tolist()
    assert len(set(train_keys)) == len(train_keys) and len(set(held_keys)) == len(held_keys)  # distinct rows
    assert set(train_keys).isdisjoint(held_keys)  # no held-out row repeats a training row
    assert split.n_distinct == len(set(hand)) == len(set(train_keys)) + len(set(held_keys))
    assert split.n_heldout_duplicates > 0  # the chat prefix is shared by the held-out problem
    assert split.to_frame()["distinct_rows"].iloc[0] == split.n_distinct
    split.plot()
    # the earlier rule (by generation, every row) still drops held-out copies of training rows
    old = S.training_rows(d, heldout=0.34, seed=0, heldout_by="generation", dedupe=False)
    assert old.n_train == int((~held_of(d, old)).sum()) and set(S.row_keys(old.heldout).tolist()).isdisjoint(
        S.row_keys(old.train).tolist())
    # completion rows only
    comp = S.training_rows(d, rows="completion", heldout=0.34, seed=0)
    assert comp.train.in_completion.all() and comp.heldout.in_completion.all()
    assert comp.n_kind == int(d.in_completion.sum()) and comp.n_distinct < comp.n_kind  # problem 0's "5" twice
    # the same on disk, shard by shard
    S.write_difference_store(tmp_path / "s", S.iter_differences(tiny64, batch, vecs, [2], labels=labels, positions="all",
                                                                problems=problems, batch_size=2),
                             labels=labels, sample_tokens=S.sample_token_rows(batch))
    disk = S.training_rows(S.DiffActivationStore(tmp_path / "s")[2], heldout=0.34, seed=0)
    assert disk.summary() == split.summary()
    assert torch.equal(disk.train.load().delta, split.train.delta) and len(disk.heldout) == split.n_heldout
    with pytest.raises(SteerInterpError, match="too few"):
        S.training_rows(d.select(problems[d.sample] == 0), heldout=0.5)
    with pytest.raises(SteerInterpError, match="rows="):
        S.training_rows(d, rows="prompt")


def held_of(d, split):
    """Rows of the generations a split held out."""
    held = set(split.heldout.sample.tolist())
    return torch.tensor([s in held for s in d.sample.tolist()])


def test_suggest_d_sae_rule_and_auto_dictionary():
    assert S.suggest_d_sae(5000, 576, k=16) == 800  # 5000 * 16 / 100
    assert S.suggest_d_sae(200_000, 3584, k=32) == 8 * 3584  # capped at 8 x d_in
    assert S.suggest_d_sae(10, 64, k=8) == 16  # at least 2k
    assert S.suggest_d_sae(1000, 64, k=4, min_firings=10, multiple=1) == 400
    with pytest.raises(SteerInterpError, match="positive"):
        S.suggest_d_sae(0, 64)
    acts = _planted(n=1000)
    dsae = S.train_diff_sae(acts, d_sae="auto", k=4, batch_size=200, training_tokens=2_000)
    assert dsae.sae.cfg.d_sae == S.suggest_d_sae(dsae.data["train_rows"], 16, k=4)
    with pytest.raises(SteerInterpError, match="d_sae="):
        S.train_diff_sae(acts, d_sae="big", batch_size=200)


def test_passes_set_the_training_length():
    acts = _planted(n=1000)
    dsae = S.train_diff_sae(acts, d_sae=16, k=4, batch_size=200, passes=3)
    n = 3 * dsae.data["train_rows"]
    assert n <= dsae.training_tokens < n + 200  # whole batches of 200
    assert S.train_diff_sae(acts, d_sae=16, k=4, batch_size=200, passes=3, training_tokens=400).training_tokens == 400
    with pytest.raises(SteerInterpError, match="passes=0"):
        S.train_diff_sae(acts, d_sae=16, k=4, batch_size=200, passes=0)


# --- causal ablation of features in the steered run -----------------------------------------------------

def _perfect_sae(d, hook="blocks.1.hook_resid_post"):
    """A ReLU SAE that reconstructs any input exactly: features [relu(x), relu(-x)], decoder [I; -I]."""
    eye = torch.eye(d, dtype=torch.float64)
    return _relu_sae(d, 2 * d, w_enc=torch.cat([eye, -eye], 1), w_dec=torch.cat([eye, -eye], 0), hook=hook)


def _final_logprobs(model, batch, vecs, hook=None):
    with torch.no_grad(), A.batch.steering_context(model, vecs, batch):
        with (model.hooks(fwd_hooks=[hook]) if hook else contextlib.nullcontext()):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
    return torch.log_softmax(logits.double(), -1)


def test_ablating_features_in_the_steered_run(tiny64, batch64):
    model = tiny64
    d = model.cfg.d_model
    vecs = si.SteeringSet.from_tensors(model, {0: _vec(model, 5)})
    sae = _perfect_sae(d)
    g = torch.Generator().manual_seed(1)
    ranked = torch.randperm(2 * d, generator=g).tolist()
    res = S.ablate_features(model, batch64, sae, ranked, steering=vecs, ks=[1, 7, 2 * d], difference=True)
    df = res.to_frame().set_index("variant")
    # every feature of an exact SAE: the steering's difference at the hook is gone, so the run is the base run
    assert df.loc[f"top-{2 * d}", "effect_lost"] == pytest.approx(1.0, abs=1e-9)
    assert df.loc[f"top-{2 * d}", "logprob"] == pytest.approx(res.logprob_base, abs=1e-9)
    assert df.loc["steered", "effect_lost"] == 0 and df.loc["base", "effect_lost"] == 1.0
    # top-7 by hand: h_steered - sum of the 7 features' activations times their decoder rows, at every position
    with torch.no_grad():
        _, base = model.run_with_cache(batch64.tokens, attention_mask=batch64.attention_mask)
        with vecs.applied(model):
            _, steer = model.run_with_cache(batch64.tokens, attention_mask=batch64.attention_mask)
    name = "blocks.1.hook_resid_post"
    delta = steer[name] - base[name]
    feats = torch.cat([delta.clamp(min=0), (-delta).clamp(min=0)], -1)
    w_dec = torch.cat([torch.eye(d), -torch.eye(d)], 0).double()
    removed = feats[..., ranked[:7]] @ w_dec[ranked[:7]]
    expected = _final_logprobs(model, batch64, vecs, (name, lambda act, hook: act - removed))
    ls, lb = _final_logprobs(model, batch64, vecs), _final_logprobs(model, batch64, None)
    sel = batch64.predicting_mask
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)[sel].mean()  # noqa: E731
    assert res.kl_steered_base == pytest.approx(float(kl(ls, lb)), rel=1e-9)
    assert df.loc["top-7", "kl_from_steered"] == pytest.approx(float(kl(ls, expected)), rel=1e-9)
    assert 0 < df.loc["top-7", "effect_lost"] < 1
    nxt = batch64.tokens.roll(-1, 1)[sel]
    assert df.loc["top-7", "logprob"] == pytest.approx(float(expected[sel].gather(-1, nxt[:, None]).mean()), rel=1e-9)
    assert df.loc["steered", "logprob"] == pytest.approx(float(ls[sel].gather(-1, nxt[:, None]).mean()), rel=1e-9)
    # ablating only at completion positions, by hand too
    only = S.ablate_features(model, batch64, sae, ranked, steering=vecs, ks=[7], difference=True, ablate_at="completion")
    masked = _final_logprobs(model, batch64, vecs, (name, lambda act, hook: act - removed * sel[..., None]))
    assert only.kl_from_steered[0] == pytest.approx(float(kl(ls, masked)), rel=1e-9)
    # a feature that never fires changes nothing
    zero = si.SteeringSet.from_tensors(model, {0: torch.zeros(d, dtype=torch.float64)})
    silent = S.ablate_features(model, batch64, sae, [0], steering=zero, difference=True)
    assert silent.kl_from_steered[0] == 0.0
    res.plot()
    with pytest.raises(SteerInterpError, match="ks must"):
        S.ablate_features(model, batch64, sae, ranked[:3], steering=vecs, ks=[4])
    with pytest.raises(SteerInterpError, match="steering="):
        S.ablate_features(model, batch64, sae, ranked, steering=None)


def test_decoding_with_ablated_features(tiny64):
    from steerinterp.tasks import arithmetic_task

    model = tiny64
    d = model.cfg.d_model
    task = arithmetic_task("add1")
    problems = task.test[:3]
    vecs = si.SteeringSet.from_tensors(model, {0: _vec(model, 5, 4.0)})
    sae = _perfect_sae(d)
    ranked = list(range(2 * d))
    res = S.ablation_accuracy(model, task, sae, ranked, steering=vecs, ks=[3, 2 * d], difference=True, problems=problems,
                              max_new_tokens=5)
    texts = res.evaluation.details().groupby("variant")["completion"].apply(list)
    assert texts[f"top-{2 * d}"] == texts["base"]  # an exact SAE with every feature ablated decodes as the base model
    assert texts["steered"] != texts["base"]
    # greedy decoding under an ablation = the argmax of the teacher-forced ablated forward, token by token
    out = si.generate(model, task.prompts(model, problems), steering=vecs, max_new_tokens=5, temperature=0.0,
                      engine=S.FeatureAblationEngine(model, sae, ranked[:3], difference=True))
    forced = A.as_batch(out)
    with torch.no_grad():
        _, base = model.run_with_cache(forced.tokens, attention_mask=forced.attention_mask)
    name = "blocks.1.hook_resid_post"
    hook = S.ablation.ablation_hook(sae, ranked[:3], base[name])
    lp = _final_logprobs(model, forced, vecs, (name, hook))
    for r in range(len(problems)):
        gen = forced.completion_mask[r].nonzero().flatten()
        assert lp[r, gen - 1].argmax(-1).tolist() == forced.tokens[r, gen].tolist()
    assert set(res.to_frame()["variant"]) == {"base", "steered", "top-3", f"top-{2 * d}"}
    res.plot()
