import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import steerinterp as si
from steerinterp.errors import SteerInterpError
from steerinterp.rl import TrainConfig, Trainer
from steerinterp.tasks import Problem, Task

PROMPTS = ["hello there", "what is this", "a b c", "tell me", "the cat", "one two", "xyz", "good day"]


class FirstTokenTask(Task):
    """Correct when the first generated token is one of ``good``: a task a tiny random model can learn."""

    def __init__(self, good: set[str]):
        super().__init__(name="first-token", train=[Problem(p, "0", id=p) for p in PROMPTS],
                         test=[Problem(p, "0", id=p) for p in PROMPTS[:4]], verifier="last_number")
        self.good = good

    def prompts(self, model, problems):
        return [p.question for p in problems]

    def is_correct(self, completion, problem):
        return completion[:1] in self.good

    def reward(self, completion, problem):
        return 1.0 if self.is_correct(completion, problem) else -1.0


def _good_set(model) -> set[str]:
    out = si.generate(model, PROMPTS * 8, max_new_tokens=1, seed=123)
    counts = {}
    for t in out.texts:
        counts[t[:1]] = counts.get(t[:1], 0) + 1
    good, mass = set(), 0
    for ch, c in sorted(counts.items(), key=lambda kv: -kv[1])[2:]:  # skip the most likely ones
        good.add(ch)
        mass += c / len(out.texts)
        if mass >= 0.2:
            break
    return good


def _cfg(**kw):
    base = dict(steps=4, lr=0.05, group_size=4, prompts_per_step=4, max_new_tokens=4, seed=0, warmup_ratio=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_end_to_end_learns_and_saves(tiny, tmp_path):
    task = FirstTokenTask(_good_set(tiny))
    cfg = _cfg(steps=25, lr=0.1, group_size=8, prompts_per_step=8, max_new_tokens=2)
    result = Trainer(tiny, task, cfg, tmp_path / "run", progress=False).train()
    df = result.to_frame()
    assert len(df) == 25
    assert df["accuracy"].tail(5).mean() > df["accuracy"].head(5).mean() + 0.25
    assert df["vector_norm_mean"].iloc[-1] > 0
    loaded = si.SteeringSet.load(tmp_path / "run" / "final", model=tiny)
    for a, b in zip(loaded, result.steering):
        assert torch.equal(a.vector, b.vector.detach())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25
    m = json.loads(lines[-1])
    for key in ("reward_mean", "accuracy", "adv_mean", "adv_std", "vector_norms", "grad_norm", "tokens",
                "completion_len", "seconds_sampling", "seconds_gradient"):
        assert key in m
    assert all(p.grad is None for p in tiny.parameters())


@pytest.mark.parametrize("sampling", ["epochs", "learnability"])
def test_resume_after_interruption_gives_the_same_vectors(tiny, tmp_path, monkeypatch, sampling):
    task = FirstTokenTask(_good_set(tiny))
    cfg = functools.partial(_cfg, problem_sampling=sampling)
    full = Trainer(tiny, task, cfg(steps=5), tmp_path / "full", progress=False).train()
    if sampling == "learnability":  # the run did replay problems, so the sampler's state mattered
        assert sum(m["replayed"] for m in full.metrics) > 0

    calls = {"n": 0}
    real = FirstTokenTask.reward

    def flaky(self, completion, problem):  # dies in the middle of step 3 (after 2 checkpoints)
        calls["n"] += 1
        if calls["n"] == 2 * 16 + 5:
            raise KeyboardInterrupt
        return real(self, completion, problem)

    monkeypatch.setattr(FirstTokenTask, "reward", flaky)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny, task, cfg(steps=5), tmp_path / "cut", progress=False).train()
    monkeypatch.setattr(FirstTokenTask, "reward", real)
    with pytest.raises(SteerInterpError, match="already holds a run"):
        Trainer(tiny, task, cfg(steps=5), tmp_path / "cut", progress=False).train()
    resumed = Trainer(tiny, task, cfg(steps=5), tmp_path / "cut", progress=False).train(resume=True)
    for a, b in zip(full.steering, resumed.steering):
        assert torch.equal(a.vector, b.vector)
    assert [m["reward_mean"] for m in full.metrics] == [m["reward_mean"] for m in resumed.metrics]
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 5
    with pytest.raises(SteerInterpError, match="cannot resume: lr"):
        Trainer(tiny, task, cfg(steps=6, lr=0.5), tmp_path / "cut", progress=False).train(resume=True)


def test_checkpoints_from_before_problem_sampling_still_resume(tiny, tmp_path):
    """A checkpoint whose config predates a setting resumes when the run keeps that setting's default."""
    from steerinterp.rl.checkpoint import load_checkpoint, save_checkpoint

    task = FirstTokenTask(_good_set(tiny))
    Trainer(tiny, task, _cfg(steps=3), tmp_path / "old", progress=False).train(resume=False)
    state = load_checkpoint(si.RunDir(tmp_path / "old").checkpoint_dir)
    for key in ("problem_sampling", "replay_fraction"):
        del state["config"][key]
    del state["accuracy"]
    save_checkpoint(si.RunDir(tmp_path / "old").checkpoint_dir, state)
    resumed = Trainer(tiny, task, _cfg(steps=4), tmp_path / "old", progress=False).train(resume=True)
    assert len(resumed.metrics) == 4
    with pytest.raises(SteerInterpError, match="cannot resume: problem_sampling was 'epochs'"):
        Trainer(tiny, task, _cfg(steps=5, problem_sampling="learnability"), tmp_path / "old",
                progress=False).train(resume=True)


def test_adaptive_parametrisation_starts_at_zero_effect_and_trains(tiny, tmp_path):
    from steerinterp.steering.adaptive import AdaptiveSteering

    task = FirstTokenTask(_good_set(tiny))
    ad = AdaptiveSteering.init(tiny, [1, 3])
    toks = torch.tensor([[72, 101, 108, 108]])
    with torch.no_grad(), ad.applied(tiny):
        assert torch.equal(tiny(toks), tiny(toks))  # b = 0: no effect
    result = Trainer(tiny, task, _cfg(parametrisation="adaptive", layers=[1, 3], lr=0.05), tmp_path / "ad",
                     progress=False).train()
    assert all(result.steering.b[k].abs().sum() > 0 for k in (1, 3))
    # the fast engine's down_proj hook and the TransformerLens hooks agree
    a = si.generate(tiny, PROMPTS, steering=result.steering, max_new_tokens=6, temperature=0, engine="hf")
    b = si.generate(tiny, PROMPTS, steering=result.steering, max_new_tokens=6, temperature=0, engine="hooked")
    assert a.completion_tokens == b.completion_tokens
    loaded = AdaptiveSteering.load(tmp_path / "ad" / "final" / "adaptive.safetensors", model=tiny)
    assert torch.equal(loaded.b[3], result.steering.b[3].detach())


def test_adaptive_fixed_read_control_trains_b_only_and_resumes(tiny, tmp_path):
    from steerinterp.steering.adaptive import AdaptiveSteering

    task = FirstTokenTask(_good_set(tiny))
    cfg = _cfg(parametrisation="adaptive_fixed_read", layers=[1, 3], lr=0.05, steps=2)
    trainer = Trainer(tiny, task, cfg, tmp_path / "ctl", progress=False)
    assert set(trainer.params) == {"b.1", "b.3"}
    result = trainer.train()
    init = AdaptiveSteering.init(tiny, [1, 3], seed=cfg.seed)
    assert all(torch.equal(result.steering.a[k], init.a[k].detach()) for k in (1, 3))  # a never moved
    assert all(result.steering.b[k].abs().sum() > 0 for k in (1, 3))
    resumed = Trainer(tiny, task, _cfg(parametrisation="adaptive_fixed_read", layers=[1, 3], lr=0.05, steps=3),
                      tmp_path / "ctl", progress=False).train(resume=True)
    assert len(resumed.metrics) == 3 and torch.equal(resumed.steering.a[3], init.a[3].detach())
    trainable = AdaptiveSteering.init(tiny, [1])
    with pytest.raises(SteerInterpError, match="keeps a fixed"):
        Trainer(tiny, task, _cfg(parametrisation="adaptive_fixed_read", layers=[1]), steering=trainable)


def test_full_fine_tuning_baseline_updates_named_weights(tmp_path):
    model = si.load_model("tiny", device="cpu")
    task = FirstTokenTask(_good_set(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model, task, _cfg(parametrisation="full", full_params=["blocks.3.mlp"], lr=1e-3, steps=2),
                     tmp_path / "ft", progress=False).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("blocks.3.mlp") for n in changed)
    assert result.steering is None and (tmp_path / "ft" / "final" / "weights.safetensors").is_file()
    with pytest.raises(SteerInterpError, match="no parameter name contains"):
        Trainer(model, task, _cfg(parametrisation="full", full_params=["nope"]))
    # structurally-zero TransformerLens biases (b_Q, _b_K, _b_V, b_in, ...) are not "the model's weights"
    from steerinterp.rl import select_full_params

    names = select_full_params(model, None)
    assert names and not [n for n in names if n.rsplit(".", 1)[-1].lstrip("_").startswith("b_")]
    # the run's weights load back onto a fresh base model
    from steerinterp.errors import ModelLoadError
    from steerinterp.models import load_finetuned

    tuned = load_finetuned(tmp_path / "ft" / "final", "tiny", device="cpu")
    for n, p in tuned.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n
    with pytest.raises(ModelLoadError, match="no fine-tuned weights"):
        load_finetuned(tmp_path, "tiny")
    with pytest.raises(ModelLoadError, match="lacks|is \\("):
        load_finetuned(tmp_path / "ft" / "final", "tiny", tiny=si.TinyConfig(n_layers=3))


def test_bad_configs(tiny):
    task = FirstTokenTask({"a"})
    with pytest.raises(SteerInterpError, match="group_size"):
        Trainer(tiny, task, _cfg(group_size=1))
    with pytest.raises(SteerInterpError, match="parametrisation"):
        Trainer(tiny, task, _cfg(parametrisation="lora"))
    with pytest.raises(SteerInterpError, match="problem_sampling='hard'"):
        Trainer(tiny, task, _cfg(problem_sampling="hard"))
    with pytest.raises(SteerInterpError, match="out of range"):
        Trainer(tiny, task, _cfg(layers=[7]))


DIST_SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
import steerinterp as si
from steerinterp.rl import TrainConfig, Trainer
sys.path.insert(0, {tests!r})
from test_trainer import FirstTokenTask, _cfg
model = si.load_model("tiny", device="cpu")
task = FirstTokenTask({good!r})
res = Trainer(model, task, _cfg(steps=3), {out!r}, progress=False).train()
"""


@pytest.mark.timeout(600)
def test_two_gloo_processes_match_one(tiny, tmp_path):
    good = _good_set(tiny)
    single = Trainer(tiny, FirstTokenTask(good), _cfg(steps=3), tmp_path / "one", progress=False).train()
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT.format(tests=str(Path(__file__).parent), good=good, out=str(tmp_path / "two")))
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = si.SteeringSet.load(tmp_path / "two" / "final")
    for a, b in zip(single.steering, two):
        assert torch.allclose(a.vector.detach(), b.vector, atol=1e-5), (a.vector - b.vector).abs().max()
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["accuracy"] for m in m1] == [m["accuracy"] for m in m2]


def _hf_logits_with_vectors(hf, vectors, tokens, attention_mask):
    """Logits of a transformers Llama with ``vectors[l]`` added to the output of decoder layer l."""

    def adder(v):
        return lambda module, args, o: (o[0] + v,) + tuple(o[1:]) if isinstance(o, tuple) else o + v

    handles = [layer.register_forward_hook(adder(v)) for layer, v in zip(hf.model.layers, vectors)]
    try:
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return hf(input_ids=tokens, attention_mask=attention_mask, position_ids=positions).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("budget", [None, "1"], ids=["one-pass", "row-by-row"])
def test_trainer_steps_equal_a_plain_pytorch_rloo_on_the_hf_model(tiny64, monkeypatch, budget):
    """Oracle: the MODELS.md section 11 prototype written out by hand on the transformers model (forward hooks
    adding one vector after each decoder layer, full forward, RLOO, token-normalised REINFORCE, clip, AdamW with
    decoupled weight decay, linear warmup) gives the trainer's gradients and vectors, step after step, on the
    trainer's own samples; also when a gradient memory budget of 1 byte makes it run the 64 rows one at a time."""
    import steerinterp.rl.trainer as trainer_module
    from steerinterp.models import TinyConfig, tiny_hf_model

    if budget is not None:
        monkeypatch.setenv("STEERINTERP_GRADIENT_BUDGET", budget)

    captured = []
    real_generate = trainer_module.generate
    monkeypatch.setattr(trainer_module, "generate", lambda *a, **k: captured.append(real_generate(*a, **k)) or captured[-1])
    task = FirstTokenTask(_good_set(tiny64))
    cfg = _cfg(steps=3, lr=0.05, group_size=8, prompts_per_step=8, max_new_tokens=4, max_grad_norm=0.05,
               weight_decay=0.01, warmup_ratio=0.5, seed=1)  # warmup over 2 steps: lr 0, lr / 2, then lr;
    # seed 1: its samples vary in reward within groups at 2 or more of the 3 steps (checked at the end)
    trainer = Trainer(tiny64, task, cfg, None, progress=False)
    hf, _ = tiny_hf_model(TinyConfig())
    hf = hf.double().requires_grad_(False)
    n_layers, G = tiny64.cfg.n_layers, cfg.group_size
    vectors = torch.zeros(n_layers, tiny64.cfg.d_model, dtype=torch.float64)
    m, v = torch.zeros_like(vectors), torch.zeros_like(vectors)
    beta1, beta2 = cfg.betas
    clipped = with_signal = 0
    for t in range(1, cfg.steps + 1):
        assert trainer.step()["micro_batch_used"] == (64 if budget is None else 1)
        out = captured[-1]
        rewards = torch.tensor([task.reward(text, None) for text in out.texts], dtype=torch.float64).view(-1, G)
        adv = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)).flatten()
        leaf = vectors.clone().requires_grad_(True)
        logits = _hf_logits_with_vectors(hf, leaf, out.tokens, out.attention_mask)
        logp = logits[:, :-1].log_softmax(-1).gather(-1, out.tokens[:, 1:, None])[..., 0]
        mask = out.completion_mask[:, 1:].double()
        loss = -(adv[:, None] * logp * mask).sum() / mask.sum()
        (grad,) = torch.autograd.grad(loss, leaf)
        norm = grad.norm()
        with_signal += bool(norm > 0)
        clipped += bool(norm > cfg.max_grad_norm)
        grad = grad * min(1.0, cfg.max_grad_norm / (float(norm) + 1e-6))
        got = torch.stack([vec.vector.grad for vec in trainer.steering])
        # float64 on both sides; TransformerLens and transformers build their rotary tables in float32 (logits
        # agree to ~5e-7), so the comparison is relative to the gradient's size
        assert (got - grad).norm() <= 1e-5 * grad.norm(), float((got - grad).norm() / grad.norm())
        lr = cfg.lr * min(1.0, (t - 1) / 2)
        vectors = vectors * (1 - lr * cfg.weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        vectors = vectors - lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + 1e-8)
        got = torch.stack([vec.vector.detach() for vec in trainer.steering])
        assert (got - vectors).norm() <= 1e-5 * vectors.norm(), float((got - vectors).norm())
    assert with_signal >= 2 and clipped >= 1  # rewards varied within groups, and the clip took effect


def test_prototype_reference_script_trains_on_the_tiny_model():
    """examples/rl_arithmetic/prototype_reference.py (the plain-PyTorch baseline) keeps working."""
    import runpy

    from steerinterp.models import TinyConfig, tiny_hf_model

    script = Path(__file__).parents[1] / "examples" / "rl_arithmetic" / "prototype_reference.py"
    train_prototype = runpy.run_path(str(script))["train_prototype"]
    hf, tok = tiny_hf_model(TinyConfig())
    hf.requires_grad_(False)
    tok.padding_side = "left"
    seen = []
    vectors, df = train_prototype(hf, tok, [(1, 2), (3, 4), (5, 6)], seed=0, steps=2, lr=0.05, n_prompts=2, group=4,
                                  max_new_tokens=3, on_step=seen.append)
    assert vectors.shape == (hf.config.num_hidden_layers, hf.config.hidden_size)
    assert len(df) == 2 and len(seen) == 2 and (df["completion_len"] > 0).all()
    assert all(p.grad is None for p in hf.parameters())
    assert all(len(layer._forward_hooks) == 0 for layer in hf.model.layers)


def test_each_sample_is_verified_once(tiny, monkeypatch):
    from steerinterp.tasks import arithmetic_task

    task = arithmetic_task("add1")
    calls = {"score": 0, "reward": 0, "is_correct": 0}
    real_score = type(task).score

    def counting(name):
        def fn(self, *a, **k):
            calls[name] += 1
            return real_score(self, *a, **k) if name == "score" else pytest.fail(f"{name} called by the trainer")
        return fn

    for name in calls:
        monkeypatch.setattr(type(task), name, counting(name))
    Trainer(tiny, task, _cfg(steps=1, group_size=2, prompts_per_step=3), progress=False).train()
    assert calls == {"score": 6, "reward": 0, "is_correct": 0}


def test_a_finished_run_is_recognised_without_its_write_lock(tiny, tmp_path):
    """train_resumably leaves a finished run alone even while another process holds its lock (parallel protocol
    scripts share a finished fine-tuning run); an unfinished, extended or different run is not 'finished'."""
    from steerinterp.app.examples import train_resumably
    from steerinterp.run_dir import RunDir

    task = FirstTokenTask(_good_set(tiny))
    path = tmp_path / "R"
    assert not Trainer(tiny, task, _cfg(steps=2), path, progress=False).is_finished()  # nothing there yet
    Trainer(tiny, task, _cfg(steps=2), path, progress=False).train(stop_after=1)
    assert not Trainer(tiny, task, _cfg(steps=2), path, progress=False).is_finished()  # 1 of 2 steps
    Trainer(tiny, task, _cfg(steps=2), path, progress=False).train(resume=True)
    assert Trainer(tiny, task, _cfg(steps=2), path, progress=False).is_finished()
    assert Trainer(tiny, task, _cfg(steps=2, micro_batch=1), path, progress=False).is_finished()  # may change
    assert not Trainer(tiny, task, _cfg(steps=3), path, progress=False).is_finished()  # extended: train on
    assert not Trainer(tiny, task, _cfg(steps=2, seed=5), path, progress=False).is_finished()
    before = (path / "metrics.jsonl").read_text()
    with RunDir(path).writing():  # another writer holds the lock
        train_resumably(tiny, task, {path: _cfg(steps=2)}, progress=False)
        with pytest.raises(SteerInterpError, match="being written by another run"):
            train_resumably(tiny, task, {path: _cfg(steps=3)}, progress=False)
    assert (path / "metrics.jsonl").read_text() == before
