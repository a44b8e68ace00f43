"""Ctrl-C at any moment leaves no hook behind: steering contexts, attach/remove, generation with both engines,
teacher-forced log-probs and the analyses.

Two stress tests. ``_stress``: another thread sends Ctrl-C at random moments, many times (as a user would).
``_every_entry``: deterministic and stronger: Ctrl-C is delivered on entry to every function the operation
calls in steerinterp, TransformerLens's hook code, torch's hook handles and contextlib (function entry is where
CPython delivers a pending signal), one run per entry. Only the operation's own top-level calls (user code)
are spared: a Ctrl-C on entry to ``handle.remove()`` written by the user happens before steerinterp runs.
"""

import _thread
import random
import sys
import threading
import time

import pytest
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.generation.engines import _MIRRORS, PACK_AFTER_STEPS, HFEngine
from steerinterp.generation.packed_linear import packing_unavailable_here
from steerinterp.steering import leftover_hooks

PROMPTS = ["hello there", "what is this"]


@pytest.fixture(scope="module")
def setup():
    model = si.load_model("tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    vecs = si.SteeringSet.from_tensors(model, {i: 2 * torch.randn(model.cfg.d_model, generator=g) for i in range(4)})
    rollouts = si.generate(model, PROMPTS, steering=vecs, max_new_tokens=6, seed=0)
    baseline = si.generate(model, PROMPTS, max_new_tokens=6, temperature=0).texts
    return model, vecs, rollouts, baseline


def _leftovers(model):
    found = leftover_hooks(model)
    if model.context_level != 0:
        found.append(f"context_level={model.context_level}")
    mirror = _MIRRORS.get(model)
    if mirror is not None:
        found += [f"mirror:{n}" for n, m in mirror.hf.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        found += [f"packed:{n}" for n, m in mirror.hf.named_modules() if getattr(m, "packed", None) is not None]
    return found


def _interrupted(op, delay: float) -> bool:
    """Run ``op`` while another thread sends Ctrl-C after ``delay`` seconds; True when it landed in op."""
    fired = threading.Event()

    def fire():
        time.sleep(delay)
        _thread.interrupt_main()
        fired.set()

    t = threading.Thread(target=fire)
    landed = False
    try:
        t.start()
        op()
        fired.wait()
        for _ in range(10_000):  # the signal is delivered between bytecodes: give it room to land here
            pass
    except KeyboardInterrupt:
        landed = not fired.is_set() or True
    t.join()
    return landed


WATCH = ("/steerinterp/", "transformer_lens/hook_points.py", "torch/utils/hooks.py", "contextlib.py")


def _run_interrupting_entry(op, k: int) -> int:
    """Run ``op``, delivering Ctrl-C on entry to the k-th watched function call; returns the number of entries."""
    count = [0]
    top = op.__code__

    def tracer(frame, event, arg):
        if frame.f_back is not None and frame.f_back.f_code is top:
            return None  # the operation's own calls: user code
        if any(w in frame.f_code.co_filename for w in WATCH):
            count[0] += 1
            if count[0] == k:
                _thread.interrupt_main()
        return None

    sys.settrace(tracer)
    try:
        op()
        for _ in range(1000):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return count[0]


def _every_entry(model, op, max_runs: int = 150):
    n = _run_interrupting_entry(op, -1)
    points = sorted({1 + round(i * (n - 1) / max(1, max_runs - 1)) for i in range(min(n, max_runs))})
    bad = []
    for k in points:
        _run_interrupting_entry(op, k)
        left = _leftovers(model)
        if left:
            bad.append((k, left[:3]))
            model.reset_hooks(including_permanent=True)
            model.context_level = 0
    assert len(points) > 10
    return bad


def _stress(model, op, n: int, seed: int = 0):
    t0 = time.perf_counter()
    op()
    duration = time.perf_counter() - t0
    rng = random.Random(seed)
    bad = []
    for i in range(n):
        _interrupted(op, rng.uniform(0, 1.2 * duration))
        left = _leftovers(model)
        if left:
            bad.append((i, left[:3]))
            model.reset_hooks(including_permanent=True)
            model.context_level = 0
    return bad


def test_applied_and_attach_survive_interrupts(setup):
    model, vecs, _, _ = setup

    def applied_loop():
        for _ in range(20):
            with vecs.applied(model):
                pass

    def attach_loop():
        for _ in range(20):
            vecs.attach(model).remove()

    assert _stress(model, applied_loop, 200) == []
    assert _stress(model, attach_loop, 100, seed=1) == []

    def applied_once():
        with vecs.applied(model):
            model(torch.tensor([[1, 2, 3]]))

    def attach_remove():
        handle = vecs.attach(model)
        handle.remove()

    assert _every_entry(model, applied_once, max_runs=400) == []
    assert _every_entry(model, attach_remove, max_runs=400) == []


@pytest.mark.parametrize("engine", ["hooked", "hf"])
def test_generation_survives_interrupts(setup, engine):
    model, vecs, _, baseline = setup
    def op():
        si.generate(model, PROMPTS, steering=vecs, max_new_tokens=6, engine=engine, temperature=0)

    assert _stress(model, op, 150 if engine == "hf" else 100) == []
    assert _every_entry(model, op) == []
    assert si.generate(model, PROMPTS, max_new_tokens=6, temperature=0).texts == baseline  # unsteered after all


@pytest.mark.skipif(packing_unavailable_here(), reason="no oneDNN bfloat16 linear in this torch build")
def test_packed_generation_survives_interrupts():
    """bfloat16 on a CPU: the fast engine packs its weights after PACK_AFTER_STEPS decode steps; a Ctrl-C at any
    moment (before, during or after the packing) leaves neither a hook nor a packed weight behind."""
    model = si.load_model("tiny", device="cpu", dtype=torch.bfloat16)
    vecs = si.SteeringSet.from_tensors(model, {1: torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))})
    engine = HFEngine(model)

    def op():
        si.generate(model, PROMPTS, steering=vecs, max_new_tokens=PACK_AFTER_STEPS + 3, engine=engine, seed=0,
                    stop_at_eos=False)

    op()
    assert engine.packed_layers > 0 and _leftovers(model) == []
    assert _stress(model, op, 40) == []
    assert _every_entry(model, op, max_runs=120) == []


def test_teacher_forced_logprobs_survive_interrupts(setup):
    model, vecs, rollouts, _ = setup
    def op():
        si.teacher_forced_logprobs(model, rollouts.tokens, rollouts.completion_mask, vecs,
                                   attention_mask=rollouts.attention_mask)

    assert _stress(model, op, 60) == []
    assert _every_entry(model, op) == []


@pytest.mark.parametrize("name", ["token_shift", "persistence", "residual_lens", "block_patching", "path_patch",
                                  "attention_diff", "routes"])
def test_analyses_survive_interrupts(setup, name):
    model, vecs, rollouts, _ = setup
    last = model.cfg.n_layers - 1
    ops = {
        "token_shift": lambda: A.token_shift(model, rollouts, vecs.subset([last])),
        "persistence": lambda: A.persistence(model, rollouts, vecs),
        "residual_lens": lambda: A.residual_logit_lens(model, rollouts, vecs),
        "block_patching": lambda: A.block_patching(model, rollouts, vecs.subset([last - 1])),
        "path_patch": lambda: A.path_patch(model, rollouts, [A.Node.head(last, 0), A.Node.mlp(last)], [A.Node.logits()],
                                           A.completion_logprob_metric(), new_steering=vecs.subset([last - 1])),
        "attention_diff": lambda: A.attention_diff(model, rollouts, vecs.subset([last - 1]), layers=[last]),
        "routes": lambda: A.route_attribution(model, rollouts, vecs.subset([last - 1]), tokens=["a"]),
    }
    op = ops[name]

    def run():
        op()

    assert _stress(model, run, 40) == []
    assert _every_entry(model, run, max_runs=100) == []
