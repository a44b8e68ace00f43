"""Checkpoints and run directories that survive faults: no pickle, a digest checked on load, always one
complete checkpoint (kills at random moments), stale temporaries cleaned, one writer per run, and resume
refusing another verifier, other data or another model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import steerinterp as si
from steerinterp.app.cli import main
from steerinterp.errors import SteerInterpError
from steerinterp.rl.checkpoint import load_checkpoint, save_checkpoint
from steerinterp.run_dir import RunDir

TINY = ["--model", "tiny", "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "3"]


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "R"
    assert main(["train", *TINY, "--steps", "3", "--out", str(out)]) == 0
    return RunDir(out)


def test_checkpoints_hold_no_pickle_and_a_planted_one_is_never_loaded(run, monkeypatch):
    files = sorted(p.name for p in run.checkpoint_dir.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".bin"))]
    assert {"state.json", "tensors.safetensors", "manifest.json", "current.json"} <= set(files)

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    state = load_checkpoint(run.checkpoint_dir)
    assert state["step"] == 3 and isinstance(state["rng"]["python"], tuple) and state["optimizer"]["state"]
    # a crafted pickle of the old format: refused, not run
    (run.checkpoint_dir / "state.pt").write_bytes(b"cos\nsystem\n(S'touch /tmp/steerinterp-pwned'\ntR.")
    with pytest.raises(SteerInterpError, match="pickles are never loaded"):
        load_checkpoint(run.checkpoint_dir)
    assert main(["train", "--out", str(run.path), "--resume", "--steps", "4"]) == 2
    assert not os.path.exists("/tmp/steerinterp-pwned")


def test_state_round_trips_exactly(tmp_path):
    import random

    import numpy as np

    state = {"step": 7, "x": (1, 2.5, None), "d": {3: 0.1, 4: float("nan")}, "t": torch.arange(5.0),
             "np": np.random.get_state(), "py": random.getstate(), "nested": [{"k": torch.ones(2, dtype=torch.int64)}]}
    save_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path)
    assert back["x"] == (1, 2.5, None) and back["d"][3] == 0.1 and back["d"][4] != back["d"][4]
    assert torch.equal(back["t"], state["t"]) and back["py"] == state["py"]
    assert back["np"][0] == state["np"][0] and (back["np"][1] == state["np"][1]).all() and back["np"][2:] == state["np"][2:]
    assert torch.equal(back["nested"][0]["k"], state["nested"][0]["k"])


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(run):
    steps = sorted(p.name for p in run.checkpoint_dir.glob("step-*"))
    assert steps == ["step-000002", "step-000003"]  # the current one and the one before
    blob = run.checkpoint_dir / "step-000003" / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="resuming from step-000002.*checksum mismatch"):
        assert load_checkpoint(run.checkpoint_dir)["step"] == 2
    (run.checkpoint_dir / "step-000002" / "state.json").write_text("{}")
    with pytest.raises(SteerInterpError, match="no readable checkpoint"):
        load_checkpoint(run.checkpoint_dir)


def test_a_new_checkpoint_counts_only_once_the_pointer_moves(run, tmp_path):
    state = load_checkpoint(run.checkpoint_dir)
    pointer = (run.checkpoint_dir / "current.json").read_text()
    save_checkpoint(run.checkpoint_dir, {**state, "step": 4})
    (run.checkpoint_dir / "current.json").write_text(pointer)  # as if killed before the pointer was replaced
    assert load_checkpoint(run.checkpoint_dir)["step"] == 3
    (run.checkpoint_dir / "current.json").unlink()  # pointer lost: the newest complete one, with a warning
    with pytest.warns(UserWarning, match="no valid current.json"):
        assert load_checkpoint(run.checkpoint_dir)["step"] == 4


def test_stale_temporaries_are_removed_and_never_block_a_save(run):
    stale = run.checkpoint_dir / ".tmp-step-000004-abc"
    stale.mkdir()
    (stale / "state.json").write_text("half")
    (run.checkpoint_dir / ".current.json.xyz").write_text("half")
    (run.checkpoint_dir / f".checkpoint.old.{os.getpid()}").mkdir()  # the 0.1 swap's leftover name: harmless now
    save_checkpoint(run.checkpoint_dir, {**load_checkpoint(run.checkpoint_dir), "step": 4})
    assert not stale.exists() and not (run.checkpoint_dir / ".current.json.xyz").exists()
    assert load_checkpoint(run.checkpoint_dir)["step"] == 4


def test_kills_at_random_moments_always_leave_a_complete_checkpoint(tmp_path):
    out = tmp_path / "K"
    cmd = [sys.executable, "-m", "steerinterp", "train", *TINY, "--steps", "6", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = False
    for delay in (6.0, 7.5, 9.0):
        proc = subprocess.Popen(cmd + (["--resume"] if started else []), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        started = True
        if (out / "checkpoint").exists() and any((out / "checkpoint").glob("step-*")):
            state = load_checkpoint(out / "checkpoint")
            assert state is not None and state["step"] >= 1
    assert subprocess.run(cmd + ["--resume"], env=env, capture_output=True, timeout=600).returncode == 0
    assert [m["step"] for m in RunDir(out).metrics()] == list(range(6))


def test_one_writer_per_run_directory(run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from steerinterp.run_dir import RunDir\n"
                               f"with RunDir({str(run.path)!r}).writing():\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", "--out", str(run.path), "--resume", "--steps", "4"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another run" in err[0] and str(holder.pid) in err[0]
    finally:
        holder.kill()
        holder.wait()
    with run.writing(), pytest.raises(SteerInterpError, match="being written by another run"), run.writing():
        pass
    assert main(["train", "--out", str(run.path), "--resume", "--steps", "4"]) == 0  # the lock went with its owner


@pytest.mark.parametrize("change, setting", [
    (["--verifier", "boxed"], "verifier"),
    (["--model", "tiny-other"], "model"),
    (["--model", "tiny-wide"], "model"),
    (["--task", "data"], "task"),
])
def test_resume_refuses_another_verifier_data_or_model(tmp_path, capsys, change, setting):
    data = tmp_path / "train.jsonl"
    rows = [{"question": f"What is {a} + {a}?", "answer": f"{a}\n#### {2 * a}"} for a in range(1, 9)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = f"gsm8k:{data}" if setting == "task" else "arithmetic:add1"
    out = str(tmp_path / "R")
    common = ["--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "3", "--out", out]
    assert main(["train", "--model", "tiny", "--task", task, "--verifier", "last_number", "--steps", "1", *common]) == 0
    capsys.readouterr()
    if setting == "task":  # same file name, other content
        data.write_text("".join(json.dumps({**r, "answer": r["answer"] + "0"}) + "\n" for r in rows))
        change = []
    if change[:1] == ["--model"]:
        cfg = si.TinyConfig(seed=1) if change[1] == "tiny-other" else si.TinyConfig(d_model=96, n_heads=4)
        from steerinterp.models import tiny_checkpoint

        change = ["--model", str(tiny_checkpoint(cfg))]
        capsys.readouterr()
    assert main(["train", *change, "--steps", "2", "--resume", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0], err
