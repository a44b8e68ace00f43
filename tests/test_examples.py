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
