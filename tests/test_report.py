"""The run analyses, the self-contained HTML report, `steerinterp analyze` / `report`, and the report in a
real headless Chromium (Debian's), offline: every figure renders, no console errors, no network."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import steerinterp as si
from steerinterp.app.cli import main as cli_main
from steerinterp.app.pipeline import ANALYSES, analyze_vectors, build_report, save_analysis
from steerinterp.app.report import Section, render_report
from steerinterp.errors import SteerInterpError
from steerinterp.tasks import arithmetic_task

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def _chromium_page():
    """A page of Debian's headless Chromium, offline (Playwright drives it; no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    """A run directory as `steerinterp demo` of version 0.1 left it (vectors/, a run.json without a record format),
    with analyses of random all-layer vectors on the tiny model: old runs stay readable."""
    g = torch.Generator().manual_seed(0)
    vecs = si.SteeringSet.from_tensors(tiny, {layer: torch.randn(tiny.cfg.d_model, generator=g)
                                              for layer in range(tiny.cfg.n_layers)})
    run = tmp_path_factory.mktemp("run")
    vecs.save(run / "vectors", model=tiny)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "accuracy": i / 4, "reward_mean": i / 2 - 1}) + "\n"
                                               for i in range(4)))
    (run / "summary.txt").write_text("a summary line\n")
    (run / "run.json").write_text(json.dumps({"model": "tiny", "task_spec": "arithmetic:add1"}))
    analysis = analyze_vectors(tiny, vecs, arithmetic_task("add1"), quick=True)
    save_analysis(analysis, run)
    (run / "report.html").write_text(build_report(run))
    return run, analysis


def test_every_analysis_runs_and_is_saved(run_dir):
    run, analysis = run_dir
    assert list(analysis.findings) == list(ANALYSES)
    index = json.loads((run / "analysis" / "index.json").read_text())
    for name in ANALYSES:
        f = analysis.findings[name]
        assert f.note and f.figures and f.tables, name
        assert index[name]["figures"] and all((run / "analysis" / x).exists() for x in index[name]["figures"])
    assert "path_patching" in analysis.to_frame()["analysis"].tolist()


def test_report_is_self_contained(run_dir):
    run, analysis = run_dir
    page = (run / "report.html").read_text()
    n_figures = 1 + sum(len(f.figures) for f in analysis.findings.values())  # + the training curve
    assert page.count('<div class="figure"') == n_figures
    assert "<script src=" not in page and '<link ' not in page and "Plotly.newPlot" in page  # plotly.js inlined
    assert "cdn.plot.ly" not in page.split("</head>", 1)[1]
    assert "a summary line" in page and "task: arithmetic:add1" in page
    for title in ("Training", "Logit lens", "DiffSAE"):
        assert title in page


def test_render_report_escapes_text_and_script_endings():
    import pandas as pd
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["</script><b>"], y=[1]))
    page = render_report("t <x>", [Section("s & t", ["<i>no</i>"], [pd.DataFrame({"a": ["<b>"]})], [fig])])
    assert "&lt;i&gt;no&lt;/i&gt;" in page and "t &lt;x&gt;" in page
    body = page.split("</head>", 1)[1]
    assert body.count("</script>") == 2  # the figure's JSON and the drawing script; the label's is escaped


def test_cli_report_and_analyze(run_dir, tmp_path, capsys):
    run, _ = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    assert cli_main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text().count('<div class="figure"') > 5
    assert cli_main(["analyze", str(copy), "--model", "tiny", "--quick", "--only", "logit_lens,attention"]) == 0
    assert set(json.loads((copy / "analysis" / "index.json").read_text())) == {"logit_lens", "attention"}
    assert cli_main(["analyze", str(tmp_path), "--model", "tiny"]) == 2
    assert "holds no run record" in capsys.readouterr().err
    (copy / "vectors").rename(tmp_path / "elsewhere")
    assert cli_main(["analyze", str(copy), "--model", "tiny"]) == 2
    assert "no steering vectors" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2


def test_demo_writes_the_run_and_its_report(tiny, tmp_path):
    from steerinterp.app.demo import run_demo, write_demo

    run = si.RunDir(tmp_path / "demo")
    result = run_demo(model=tiny, steps=1, samples=1, quick=True, analyses=["logit_lens", "first_token"], run=run)
    paths = write_demo(result, run, model=tiny)
    for name in ("final", "checkpoint", "metrics.jsonl", "evaluation.csv", "summary.txt", "run.json", "analysis",
                 "report.html"):
        assert (tmp_path / "demo" / name).exists(), name
    record = run.record()
    assert record.kind == "demo" and record.task == "arithmetic:add1" and record.model.name == "tiny"
    assert paths[-1] == tmp_path / "demo" / "report.html"
    assert "logit_lens:" in result.summary() and "first_token:" in result.summary()
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count('<div class="figure"') == 2 + 1 + 1  # training, evaluation, one figure per analysis
    bare = run_demo(model=tiny, steps=1, samples=1, quick=True, analyses=())
    assert bare.analysis is None and "analyses:" not in bare.summary()
    write_demo(bare, si.RunDir(tmp_path / "bare"), model=tiny)  # trained without a run directory
    assert si.RunDir(tmp_path / "bare").record().model.name == "tiny"
    with pytest.raises(SteerInterpError, match="already holds a run"):
        run_demo(model=tiny, steps=1, samples=1, quick=True, analyses=(), run=run)


def test_analyses_need_the_last_two_layers(tiny):
    vecs = si.SteeringSet.from_tensors(tiny, {0: torch.ones(tiny.cfg.d_model)})
    with pytest.raises(SteerInterpError, match="last two layers"):
        analyze_vectors(tiny, vecs, arithmetic_task("add1"))
    with pytest.raises(SteerInterpError, match="unknown analysis 'nope'"):
        analyze_vectors(tiny, vecs, arithmetic_task("add1"), only=["nope"])


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium_offline(run_dir):
    run, analysis = run_dir
    n_figures = 1 + sum(len(f.figures) for f in analysis.findings.values())
    with _chromium_page() as page:
        problems, requests = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(Path(run / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        rendered = page.evaluate("Array.from(document.querySelectorAll('div.figure')).map("
                                 "d => d.classList.contains('js-plotly-plot') && d.querySelectorAll('.main-svg').length > 0"
                                 " && (d.data || []).length > 0)")
        tables = page.evaluate("document.querySelectorAll('table.dataframe').length")
    assert rendered == [True] * n_figures
    assert tables >= len(ANALYSES)
    assert problems == []
    assert all(u.startswith("file:") for u in requests), requests


PLANTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b onmouseover="x()">'


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A run directory whose every text field the report reads carries markup that would run script."""
    import pandas as pd
    import plotly.graph_objects as go

    run = si.RunDir(tmp_path_factory.mktemp("planted"))
    run.write_record(si.run_dir.RunRecord(kind="demo", model=si.ModelSpec(name=PLANTED), task=PLANTED, task_name=PLANTED,
                                          verifier=PLANTED, config={"steps": PLANTED}))
    run.write_summary(PLANTED)
    run.write_metrics([{"step": i, "accuracy": 0.5, "reward_mean": 0.0, "example": PLANTED} for i in range(3)])
    run.write_evaluation(pd.DataFrame({"variant": [PLANTED, "base"], "mode": [PLANTED, "greedy"], "problem": [PLANTED, "p"],
                                       "correct": [True, False], "completion": [PLANTED, PLANTED]}))
    fig = go.Figure(go.Bar(x=[PLANTED], y=[1], name=PLANTED, text=[PLANTED], hovertext=[PLANTED]))
    fig.update_layout(title=PLANTED, xaxis_title=PLANTED)
    run.write_analysis({PLANTED: {"note": PLANTED, "seconds": 0.0, "tables": {"t": pd.DataFrame({PLANTED: [PLANTED]})},
                                  "figures": [fig]}})
    run.write_report(build_report(run, title=PLANTED))
    return run


def test_planted_markup_is_escaped_in_the_page(planted_run):
    body = planted_run.report_path.read_text().split("</head>", 1)[1]
    assert "<script>window.__pwned" not in body and "<img src=x" not in body and "<b onmouseover" not in body


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_no_script_from_the_data_runs_in_chromium(planted_run):
    with _chromium_page() as page:
        dialogs, requests = [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(planted_run.report_path.resolve().as_uri())
        page.wait_for_load_state("load")
        for el in page.query_selector_all("svg text, td, th, p, pre, h1, h2"):  # hover everything the data wrote
            with contextlib.suppress(Exception):
                el.hover(timeout=200)
        pwned = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
        drawn = page.evaluate("document.querySelectorAll('div.figure .main-svg').length")
    assert pwned is None and dialogs == []
    assert drawn >= 2  # the figures were drawn (the planted text is shown as text)
    assert all(u.startswith("file:") for u in requests), requests
