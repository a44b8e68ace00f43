"""Every table and quoted result number in the examples' READMEs and the docs is rendered from the examples'
results/ files by scripts/render_tables.py; these tests fail when a page disagrees with its results (no model,
no torch: they read CSV / JSON / safetensors only)."""

import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
R = runpy.run_path(str(ROOT / "scripts" / "render_tables.py"))


def test_pages_match_their_results():
    problems = R["check"]()
    assert not problems, "\n".join(problems) + "\nrun: python scripts/render_tables.py"


def test_every_example_readme_is_covered():
    rendered, _, errors = R["render_all"]()
    assert not errors
    covered = {p.relative_to(ROOT).as_posix() for p in rendered}
    with_results = {p.parent.relative_to(ROOT).as_posix() + "/README.md" for p in (ROOT / "examples").glob("*/results")}
    assert with_results <= covered, f"READMEs without generated numbers: {sorted(with_results - covered)}"


def test_a_typed_number_is_caught():
    page = ROOT / "examples" / "first_token_substitution" / "README.md"
    text = page.read_text()
    assert "<!-- v: ft.norm -->67.2<!-- /v -->" in text
    tampered = text.replace("<!-- v: ft.norm -->67.2<!-- /v -->", "<!-- v: ft.norm -->~40<!-- /v -->")
    assert R["render_text"](tampered) == text
    table_row = "| last-layer vector | 80.0% |"
    assert table_row in text
    assert R["render_text"](text.replace(table_row, "| last-layer vector | 85.0% |")) == text


def test_unknown_or_unclosed_markers_fail():
    with pytest.raises(KeyError):
        R["render_text"]("x <!-- v: no.such.value -->1<!-- /v -->")
    with pytest.raises(KeyError):
        R["render_text"]("<!-- table: no.such.table -->\n<!-- /table -->\n")
    with pytest.raises(ValueError):
        R["render_text"]("x <!-- v: ft.norm -->67.2")
    # quoted in code, a marker is left alone
    assert R["render_text"]("`<!-- v: KEY -->` and `<!-- /v -->`") == "`<!-- v: KEY -->` and `<!-- /v -->`"


def test_indented_table_keeps_its_indent():
    out = R["render_text"]("  <!-- table: first_token_substitution.prefix -->\n  <!-- /table -->\n")
    body = out.splitlines()[1:-1]
    assert body and all(line.startswith("  |") for line in body)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    x = np.r_[np.ones(36), np.zeros(4)]
    lo, hi = R["boot_ci"](x)
    assert (lo, hi) == R["boot_ci"](x)
    assert lo < x.mean() < hi and 0.75 < lo and hi <= 1.0


def test_rounding_is_half_up_on_the_decimal_value():
    assert R["pct"](0.9125) == "91.3%"
    assert R["pct"](0.18749999999999997) == "18.8%"
    assert R["f"](-0.0001) == "0.00"


def test_stored_correctness_agrees_with_the_verifier():
    """Results files that keep completions were scored by the verifier of their day; a verifier fix must be
    carried into them (scripts/rescore_results.py), or the tables rendered from them are silently stale."""
    S = runpy.run_path(str(ROOT / "scripts" / "rescore_results.py"))
    assert not S["undeclared"](), "declare these results files in SCORED"
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)
    stale = [str(d) for rel, task in S["SCORED"].items() for d in S["disagreements"](rel, task)]
    assert not stale, "\n".join(stale) + "\nrun: python scripts/rescore_results.py && python scripts/render_tables.py"


def test_rescoring_catches_a_stale_flag(tmp_path):
    S = runpy.run_path(str(ROOT / "scripts" / "rescore_results.py"))
    rel = "rl_arithmetic/results/add1-answer-formats.csv"
    fields, rows = S["read"](rel)
    truth = [r["correct"] for r in rows[:3]]
    rows = [dict(r) for r in rows[:3]]
    rows[1]["correct"] = str(rows[1]["correct"] != "True")  # flip one flag
    (tmp_path / "rl_arithmetic" / "results").mkdir(parents=True)
    import csv

    with open(tmp_path / rel, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    main = S["main"]
    main.__globals__.update(EX=tmp_path, SCORED={rel: "arithmetic:add1"})  # the script's namespace, this copy only
    assert main(["--check"]) == 1
    assert main([]) == 0 and main(["--check"]) == 0
    assert [r["correct"] for r in S["read"](rel)[1]] == truth  # rewritten to the verifier's flags
