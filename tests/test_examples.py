"""Every example script imports and parses its flags on the current layout (their full runs take minutes on the
embedded model; tests/test_notebooks.py runs the notebooks end to end)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/*.py"))


def test_every_example_folder_has_a_script():
    assert len(SCRIPTS) >= 12


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_script_starts(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_adaptive_protocol_trains_resumably_and_reads_the_runs(tmp_path):
    """examples/adaptive_magnitudes: train.py (both arms, resumable) then seeds.py on the tiny model."""
    common = ["--model", "tiny", "--threads", "1", "--out", str(tmp_path)]
    train = [sys.executable, "examples/adaptive_magnitudes/train.py", *common, "--layers", "1,3", "--seeds", "0"]
    for steps in ("1", "2"):  # the second call resumes both runs for one more step
        proc = subprocess.run([*train, "--steps", steps], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for arm in ("adaptive", "adaptive_fixed_read"):
        lines = (tmp_path / "runs" / f"{arm}-seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2
    proc = subprocess.run([sys.executable, "examples/adaptive_magnitudes/seeds.py", *common], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pandas as pd

    runs = pd.read_csv(tmp_path / "seeds" / "runs.csv")
    assert set(runs.arm) == {"adaptive", "adaptive_fixed_read"} and set(runs.layer) == {1, 3}
    assert (runs[runs.arm == "adaptive_fixed_read"].cos_a_init > 1 - 1e-9).all()  # the control's a never moves
    assert (runs.steps == 2).all()
    heldout = pd.read_csv(tmp_path / "seeds" / "heldout.csv")
    assert set(heldout.arm) == {"base", "adaptive", "adaptive_fixed_read"}
    # add1's fixed split: 19 of its 40 held-out problems have their commuted twin among the training problems
    assert heldout[heldout.arm == "base"].twin_in_training.sum() == 19
    segments = pd.read_csv(tmp_path / "seeds" / "by_segment.csv")
    n_test = heldout[heldout.arm == "base"].problem.nunique()
    assert segments.groupby(["arm", "layer", "segment"]).problem.nunique().eq(n_test).all()  # a row per problem
