"""Precision: what dtype="auto" picks, that it is recorded, and that bfloat16 runs train, sample and analyse
with float32 vectors and readouts close to the float64 model's.

conftest pins STEERINTERP_DTYPE=float32 for the rest of the suite; these tests pass dtypes explicitly or
give ``automatic_dtype`` its inputs.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.errors import ModelLoadError, SteerInterpError
from steerinterp.generation.hf_mirror import MirrorUnsupported, build_hf_mirror, check_mirror
from steerinterp.models import ZOO, automatic_dtype, dtype_choice, resolve_dtype, zoo_checkpoint
from steerinterp.models.precision import DTYPE_ENV, cpu_flags, cpu_name, float32_arithmetic, parse_dtype
from steerinterp.types import model_spec

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX2 = frozenset({"avx2", "fma"})


# ---- the automatic choice ------------------------------------------------------------------------------
def test_auto_is_bfloat16_only_where_the_cpu_multiplies_it_natively():
    amx = automatic_dtype("cpu", flags=AMX, environ={})
    assert amx.dtype == torch.bfloat16 and "amx_bf16" in amx.reason and "avx512_bf16" in amx.reason
    assert automatic_dtype("cpu", flags=frozenset({"avx512_bf16"}), environ={}).dtype == torch.bfloat16
    plain = automatic_dtype("cpu", flags=AVX2, environ={})
    assert plain.dtype == torch.float32 and "neither" in plain.reason


def test_environment_overrides_auto_but_not_an_explicit_dtype(monkeypatch):
    assert automatic_dtype("cpu", flags=AMX, environ={DTYPE_ENV: "float32"}).dtype == torch.float32
    assert automatic_dtype("cpu", flags=AVX2, environ={DTYPE_ENV: "bf16"}).dtype == torch.bfloat16
    assert automatic_dtype("cpu", flags=AVX2, environ={DTYPE_ENV: "auto"}).dtype == torch.float32
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    assert resolve_dtype("auto", "cpu").dtype == torch.bfloat16
    assert resolve_dtype(None, "cpu").dtype == torch.bfloat16
    explicit = resolve_dtype(torch.float64, "cpu")
    assert explicit.dtype == torch.float64 and explicit.reason == "asked for"
    monkeypatch.setenv(DTYPE_ENV, "int8")
    with pytest.raises(ModelLoadError, match=f"{DTYPE_ENV}='int8'.*floating-point"):
        resolve_dtype("auto", "cpu")


def test_dtype_names_and_one_line_errors():
    assert parse_dtype("torch.bfloat16") is torch.bfloat16 and parse_dtype("BF16") is torch.bfloat16
    assert parse_dtype("fp32") is torch.float32 and parse_dtype("auto") == "auto"
    for bad in ("int8", "long", "nonsense"):
        with pytest.raises(ModelLoadError, match="use one of auto, float32, bfloat16"):
            parse_dtype(bad)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nvmx flags\t: ept\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n"
                 "bugs\t: none\n")
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= cpu_flags(str(f)) and "ept" not in cpu_flags(str(f))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert cpu_name(str(f)) == "AMD EPYC" and cpu_name(str(tmp_path / "missing"))  # a fallback name, never empty


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda():
    assert automatic_dtype("cuda", environ={}).dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported()
                                                         else torch.float32)


# ---- loading records the resolved dtype ----------------------------------------------------------------
def test_load_model_auto_resolves_and_records(monkeypatch):
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    m = si.load_model("tiny", device="cpu")  # dtype="auto" is the default
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert model_spec(m).dtype == "bfloat16"  # what a run directory records: never "auto"
    assert dtype_choice(m).reason == f"{DTYPE_ENV}=bfloat16"
    again = si.load_model_from_spec(model_spec(m), device="cpu")
    assert next(again.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="not a floating-point torch dtype"):
        si.load_model("tiny", device="cpu", dtype="int8")


@pytest.fixture(scope="module")
def tiny_bf16():
    return si.load_model("tiny", device="cpu", dtype=torch.bfloat16)


# ---- sampling: the sampler's log-probs -----------------------------------------------------------------
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampler_logprobs_equal_the_teacher_forced_ones_in_float32(tiny, temperature, top_p):
    """``GenerationOutput.logprobs`` is log softmax(logits / T) of each generated token (T = 1 when greedy),
    before the nucleus cut: recomputed here by the teacher-forced pass."""
    out = si.generate(tiny, ["hello there", "a"], max_new_tokens=6, temperature=temperature, top_p=top_p, seed=[1, 2])
    lp = si.teacher_forced_logprobs(tiny, out.tokens, out.completion_mask, attention_mask=out.attention_mask,
                                    temperature=temperature or 1.0)
    assert out.logprobs.dtype == torch.float32
    assert torch.all(out.logprobs[~out.completion_mask] == 0)
    assert torch.all(out.logprobs[out.completion_mask] <= 0)
    assert (out.logprobs - lp.float()).abs().max() < 1e-4


def test_bfloat16_sampler_and_trainer_log_probs_differ_by_rounding_only(tiny_bf16):
    vecs = si.SteeringSet.zeros(tiny_bf16, "all")
    with torch.no_grad():
        for v in vecs:
            v.vector.normal_(0, 0.3, generator=torch.Generator().manual_seed(v.layer))
    out = si.generate(tiny_bf16, ["hello there", "a b c"] * 2, steering=vecs, max_new_tokens=8, seed=[0, 1, 2, 3])
    with torch.no_grad():
        lp = si.teacher_forced_logprobs(tiny_bf16, out.tokens, out.completion_mask, vecs,
                                        attention_mask=out.attention_mask)
    gap = (out.logprobs - lp.float())[out.completion_mask].abs()
    assert 0 < gap.mean() < 0.05 and gap.max() < 0.2  # bfloat16 rounding, not a different model
    lp = si.teacher_forced_logprobs(tiny_bf16, out.tokens, out.completion_mask, vecs, attention_mask=out.attention_mask,
                                    prompt_length=out.prompt_length)
    lp.sum().backward()  # gradients reach the float32 vectors through the bfloat16 model
    grads = [v.vector.grad for v in vecs]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


# ---- float32 arithmetic on half-precision weights; the fast engine in bfloat16 ----------------------------
def test_float32_arithmetic_computes_every_operation_in_float32():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g).bfloat16(), torch.randn(7, 3, generator=g).bfloat16()
    with float32_arithmetic():
        prod = a @ b
        back = prod.to(torch.bfloat16)
        made = torch.zeros(2, dtype=torch.bfloat16)
    assert prod.dtype == back.dtype == made.dtype == torch.float32
    assert torch.equal(prod, a.float() @ b.float())  # the same float32 product, bit for bit
    assert (a @ b).dtype == torch.bfloat16  # nothing leaks out of the context


def test_float32_arithmetic_forward_is_the_bfloat16_weights_function(tiny_bf16):
    # oracle: a float64 model holding exactly the bfloat16 model's values (weights and buffers)
    oracle = si.load_model("tiny", device="cpu", dtype=torch.float64)
    oracle.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in tiny_bf16.state_dict().items()})
    ids = torch.randint(0, oracle.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = oracle(ids)
        rounded = tiny_bf16(ids).double()
        with float32_arithmetic():
            upcast = tiny_bf16(ids)
    assert upcast.dtype == torch.float32
    assert (upcast.double() - exact).abs().max() < 1e-4  # float32 rounding only
    assert (rounded - exact).abs().max() > 1e-3  # what bfloat16 arithmetic adds


@pytest.mark.parametrize("name", list(ZOO))
def test_the_fast_engine_runs_in_bfloat16_for_every_architecture(name):
    model = si.load_model(zoo_checkpoint(name), device="cpu", dtype=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = si.generate(model, ["hello there", "ab"], max_new_tokens=4, temperature=0)
    assert out.engine == "hf", [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mistake", ["layers swapped", "query heads permuted"])
def test_a_structurally_wrong_mirror_fails_the_self_check(dtype, mistake):
    model = si.load_model("tiny", device="cpu", dtype=dtype)
    hf = build_hf_mirror(model).hf
    layers = hf.model.layers
    if mistake == "layers swapped":
        layers[0], layers[1] = layers[1], layers[0]
    else:
        q = layers[0].self_attn.q_proj
        heads = model.cfg.n_heads
        weight = q.weight.detach().clone().view(heads, -1, model.cfg.d_model).roll(1, dims=0)
        q.weight = torch.nn.Parameter(weight.reshape(q.weight.shape), requires_grad=False)
    with pytest.raises(MirrorUnsupported, match="HF mirror (disagrees|is less accurate)"):
        check_mirror(model, hf)


# ---- RL in bfloat16 --------------------------------------------------------------------------------------
def test_bfloat16_training_keeps_vectors_and_optimizer_state_in_float32(tiny_bf16, tmp_path):
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.run_dir import RunDir
    from steerinterp.tasks import load_task

    cfg = TrainConfig(steps=2, max_new_tokens=6, prompts_per_step=2, group_size=4, lr=0.05)
    trainer = Trainer(tiny_bf16, load_task("arithmetic:add1"), cfg, RunDir(tmp_path / "run"))
    result = trainer.train()
    params = result.steering.parameters()
    assert {p.dtype for p in params} == {torch.float32}
    states = [s for s in trainer.optimizer.state.values()]
    assert states and all(t.dtype == torch.float32 for s in states for t in s.values() if t.dim() > 0)
    for row in result.metrics:
        assert 0 < row["logprob_gap"] < 0.05 and abs(row["sampler_trainer_kl"]) < 0.05
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["model"]["dtype"] == "bfloat16" and record["dtype_reason"] == "asked for"
    # resuming in another dtype is refused, naming both dtypes and the flag that fixes it
    before = (tmp_path / "run" / "run.json").read_text()
    with pytest.raises(SteerInterpError, match=r"trained in bfloat16 and this model is float32; load it with "
                                               r"dtype='bfloat16' \(--dtype bfloat16\)"):
        Trainer(si.load_model("tiny", device="cpu", dtype=torch.float32), load_task("arithmetic:add1"),
                TrainConfig(steps=3, max_new_tokens=6, prompts_per_step=2, group_size=4, lr=0.05),
                RunDir(tmp_path / "run")).train(resume=True)
    assert (tmp_path / "run" / "run.json").read_text() == before  # nothing lost


def test_float32_training_logs_a_rounding_sized_gap(tiny):
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.tasks import load_task

    result = Trainer(tiny, load_task("arithmetic:add1"),
                     TrainConfig(steps=1, max_new_tokens=6, prompts_per_step=2, group_size=4)).train()
    assert result.metrics[0]["logprob_gap"] < 1e-5 and result.metrics[0]["logprob_gap_max"] < 1e-4


# ---- analyses in bfloat16: float readouts close to the float64 model's ---------------------------------
def _vectors(model):
    g = torch.Generator().manual_seed(0)
    return si.SteeringSet.from_tensors(model, {i: torch.randn(model.cfg.d_model, generator=g)
                                               for i in range(model.cfg.n_layers)})


def _analyse(name, model, batch, vecs, pen):
    if name == "token_shift":
        return A.token_shift(model, batch, vecs)
    if name == "residual_logit_lens":
        return A.residual_logit_lens(model, batch, vecs, positions="completion")
    if name == "persistence":
        return A.persistence(model, batch, vecs, observed_layers=[1, 2])
    if name == "block_patching":
        return A.block_patching(model, batch, pen)
    if name == "attention_diff":
        return A.attention_diff(model, batch, vecs)
    return A.logit_attribution(model, batch, 5, against=6, positions="completion", steering=vecs)


@pytest.mark.parametrize("name", ["token_shift", "residual_logit_lens", "persistence", "block_patching",
                                  "attention_diff", "logit_attribution"])
def test_bfloat16_analyses_match_float64_to_bfloat16_rounding(tiny64, tiny_bf16, name):
    results = {}
    for model in (tiny64, tiny_bf16):
        vecs = _vectors(model)
        batch = A.teacher_forcing_batch(model, ["hello there", "a b"], [" yes it is", " no"])
        pen = vecs.subset([model.cfg.n_layers - 2])
        results[model.cfg.dtype] = _analyse(name, model, batch, vecs, pen).to_frame()
    exact, rounded = results[torch.float64], results[torch.bfloat16]
    cols = {"token_shift": ["dst_dp", "src_dp", "kl"], "residual_logit_lens": ["kl"],
            "persistence": ["diff_vector", "mean_diff_vector"], "block_patching": ["effect_lost", "retained"],
            "attention_diff": ["tv", "js"], "logit_attribution": ["mean"]}[name]
    assert len(exact) == len(rounded)
    for c in cols:
        assert rounded[c].dtype.kind == "f"
        err = (exact[c].astype(float) - rounded[c].astype(float)).abs().max()
        assert err < 0.02 * max(1.0, float(exact[c].abs().max())), (c, err)
