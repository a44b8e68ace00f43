"""The analyses of a trained run, saved next to it, and the HTML report built from what was saved.

``analyze_vectors(model, vecs, task)`` runs, on the embedded model or any other, the second paper's
main analyses of an all-layer steering set (PAPER_NOTES section 4):

* ``logit_lens``: the last-layer vector read through the unembedding (4.3);
* ``first_token``: the last-layer vector alone, distribution shift at the first generated token vs later (4.4);
* ``persistence``: Diff-Diff / Diff-Vector heatmaps of each vector's effect on later layers (4.2);
* ``path_patching``: which last-block paths carry the penultimate vector's effect to the logits (4.5);
* ``attention``: how much the penultimate vector moves the last block's attention (4.5);
* ``diffsae``: a DiffSAE on a middle layer's steering-induced differences, features of correct vs
  incorrect generations (4.6).

Each returns its usual result object. ``save_analysis`` writes them into a run's ``analysis/``
(through ``RunDir``: CSV tables, plotly figures as JSON, one-line findings); ``build_report(run)`` turns
a run directory (record, metrics, evaluation, analysis) into the self-contained HTML page, without the
model, so ``steerinterp report`` can rebuild it anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from steerinterp.app.report import Section, render_report
from steerinterp.errors import SteerInterpError
from steerinterp.run_dir import RunDir

ANALYSES = ("logit_lens", "first_token", "persistence", "path_patching", "attention", "diffsae")
TITLES = {
    "logit_lens": "Logit lens of the last-layer vector",
    "first_token": "First-token substitution (last-layer vector alone)",
    "persistence": "Persistence through later layers",
    "path_patching": "Path patching: how the penultimate vector reaches the logits",
    "attention": "Attention change in the last block (penultimate vector)",
    "diffsae": "DiffSAE: features of correct vs incorrect generations",
}
MAX_ROWS = 30


@dataclass
class Finding:
    """One analysis: its tables, figures and a one-line summary of what it shows."""

    name: str
    note: str
    tables: dict = field(default_factory=dict)  # name -> DataFrame
    figures: list = field(default_factory=list)
    result: object = None
    seconds: float = 0.0


@dataclass
class RunAnalysis:
    findings: dict[str, Finding]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"analysis": f.name, "finding": f.note, "seconds": round(f.seconds, 1)}
                             for f in self.findings.values()])

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def _rollouts(model, vecs, task, n: int, seed: int):
    from steerinterp.generation import generate

    problems = list(task.test)[:n]
    return generate(model, task.prompts(model, problems), steering=vecs, max_new_tokens=32, temperature=1.0, seed=seed)


def _logit_lens(model, vecs, last, **_):
    from steerinterp.analysis import vector_logit_lens

    lens = vector_logit_lens(model, vecs.subset([last]), mode="raw", k=15)
    frame = lens.to_frame(k=15)
    up = list(frame[frame.direction == "boosted"].token[:8])
    down = list(frame[frame.direction == "suppressed"].token[:8])
    return Finding("logit_lens", f"layer {last}: boosts {up}; suppresses {down}", {"tokens": frame},
                   [lens.plot("top", k=15)], lens)


def _first_token(model, vecs, last, rollouts, **_):
    from steerinterp.analysis import token_shift

    ts = token_shift(model, rollouts, vecs.subset([last]))
    summ = ts.summary()
    first, later = (summ[summ.position == p].iloc[0] for p in ("pos 0", "pos > 0"))
    note = (f"mean KL(steered || base) at the first generated token {first['kl_mean']:.3g} vs "
            f"{later['kl_mean']:.3g} later ({first['n']} and {later['n']} positions)")
    return Finding("first_token", note, {"summary": summ, "transitions": ts.by_token("transition", top=15)},
                   [ts.plot("positions")], ts)


def _persistence(model, vecs, last, rollouts, quick, **_):
    from steerinterp.analysis import persistence

    layers = vecs.layers if not quick else sorted(set(vecs.layers[::4]) | {vecs.layers[-2], last})
    res = persistence(model, rollouts, vecs.subset(layers))
    df = res.to_frame()
    nxt = df[df.observed_layer == df.steered_layer + 1]
    far = df[(df.observed_layer == df.observed_layer.max()) & (df.steered_layer < df.observed_layer)]
    note = (f"Diff-Diff one layer later {nxt.diff_diff.mean():.2f}, at the last layer {far.diff_diff.mean():.2f}; "
            f"Diff-Vector one layer later {nxt.diff_vector.mean():.2f}")
    return Finding("persistence", note, {"matrices": df}, [res.plot()], res)


def _path_patching(model, vecs, last, rollouts, **_):
    from steerinterp.analysis import Node, completion_logprob_metric, path_patch

    pen = vecs.subset([last - 1])
    senders = [Node.head(last, h) for h in range(model.cfg.n_heads)] + [Node.mlp(last), Node.resid(last - 1)]
    res = path_patch(model, rollouts, senders, [Node.logits()], completion_logprob_metric(), new_steering=pen)
    df = res.to_frame()
    heads = df.iloc[: model.cfg.n_heads]
    note = (f"share of the penultimate vector's effect on log p(completion) carried by: all heads summed "
            f"{heads.normalised.sum():.2f} (largest head {heads.normalised.abs().max():.2f}), the MLP "
            f"{df.normalised.iloc[-2]:.2f}, the residual (direct) path {df.normalised.iloc[-1]:.2f}")
    return Finding("path_patching", note, {"paths": df}, [res.plot()], res)


def _attention(model, vecs, last, rollouts, **_):
    from steerinterp.analysis import attention_diff

    res = attention_diff(model, rollouts, vecs.subset([last - 1]), layers=[last])
    df = res.to_frame()
    col = "tv" if "tv" in df.columns else df.columns[-1]
    note = f"total-variation change of the last block's attention: mean {df[col].mean():.3g}, max {df[col].max():.3g}"
    return Finding("attention", note, {"heads": df}, [res.plot()], res)


def _diffsae(model, vecs, task, quick, seed, **_):
    from steerinterp import sae as S

    layer = model.cfg.n_layers // 2
    problems = list(task.train)[: 32 if quick else 81]
    gens = S.sample_labelled(model, task, vecs, problems=problems, samples_per_problem=2 if quick else 4, seed=seed)
    d = S.collect_differences(model, gens, vecs, [layer], positions="all", batch_size=16)[f"blocks.{layer}.hook_resid_post"]
    if not bool(d.delta.any()):
        return Finding("diffsae", f"layer {layer}: steering leaves the residual stream unchanged here (every "
                                  f"difference is zero over {len(d)} tokens); no DiffSAE to train")
    dsae = S.train_diff_sae(d, k=16, batch_size=512, training_tokens=(10 if quick else 20) * len(d), seed=seed)
    tables = {"quality": dsae.to_frame()}
    figures = []
    q = dsae.heldout_quality
    note = (f"layer {layer}: {len(gens)} generations ({gens.accuracy:.0%} correct), {len(d)} tokens; held-out FVU "
            f"{q.fvu:.2f}, L0 {q.l0:.0f}, {q.dead}/{q.d_sae} latents dead")
    if gens.correct.all() or not gens.correct.any():
        note += "; every generation had the same label, so no correct-vs-incorrect comparison"
    else:
        freq = S.feature_frequencies(dsae, d, strata=gens.problem_index)  # tested within problems
        top = freq.top(1)[0]
        tables["features"] = freq.to_frame(k=15)
        tables["contexts"] = S.top_contexts(model, dsae, d, freq.top(3), k=3, window=5).to_frame()
        figures.append(freq.plot())
        note += (f"; top feature {top} fires in {freq.freq_correct[top]:.0%} of correct vs {freq.freq_incorrect[top]:.0%} "
                 f"of incorrect generations (q = {freq.q_value[top]:.2g}); {int((freq.q_value < 0.05).sum())} features "
                 "with q < 0.05 (Cochran-Mantel-Haenszel within problems)")
    figures.insert(0, dsae.plot())
    return Finding("diffsae", note, tables, figures, dsae)


_RUNNERS = {"logit_lens": _logit_lens, "first_token": _first_token, "persistence": _persistence,
            "path_patching": _path_patching, "attention": _attention, "diffsae": _diffsae}


def analyze_vectors(model, vecs, task, *, quick: bool = False, seed: int = 0, only=None, progress: bool = False) -> RunAnalysis:
    """Run the analyses (all, or those named in ``only``) of an all-layer steering set on ``task``."""
    names = list(ANALYSES if only is None else only)
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise SteerInterpError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}")
    last = model.cfg.n_layers - 1
    missing = [x for x in (last, last - 1) if x not in vecs.layers]
    if missing:
        raise SteerInterpError(f"these analyses need vectors at the last two layers ({last - 1}, {last}); the set has "
                               f"{vecs.layers}. Train with layers=\"all\" (or include those layers)")
    rollouts = _rollouts(model, vecs, task, 8 if quick else 16, seed)
    findings = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(names, desc="analyses")
    for name in names:
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        f = _RUNNERS[name](model=model, vecs=vecs, task=task, last=last, rollouts=rollouts, quick=quick, seed=seed)
        f.seconds = time.perf_counter() - t0
        findings[name] = f
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return RunAnalysis(findings)


def save_analysis(analysis: RunAnalysis, run) -> Path:
    """Write each finding's tables and figures into the run's ``analysis/`` (``run``: a RunDir or its path)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    return run.write_analysis({name: {"note": f.note, "seconds": f.seconds, "tables": f.tables, "figures": f.figures}
                               for name, f in analysis.findings.items()})


def report_sections(run) -> list[Section]:
    """Sections of a run's report from its files (what exists is shown); ``run``: a RunDir or its path."""
    import plotly.graph_objects as go

    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.path.is_dir():
        raise SteerInterpError(f"{run.path} is not a run directory; give the output directory of a demo or train run")
    sections = []
    summary = run.summary()
    if summary is not None:
        sections.append(Section("Summary", code=summary))
    rows = run.metrics()
    if rows:
        import pandas as pd

        m = pd.DataFrame(rows)
        fig = go.Figure()
        for col in ("accuracy", "reward_mean"):
            if col in m:
                fig.add_trace(go.Scatter(x=m["step"], y=m[col], name=col, mode="lines+markers"))
        fig.update_layout(title="RL training (RLOO): per-step training accuracy and mean reward", xaxis_title="step")
        keep = [c for c in ("step", "accuracy", "reward_mean", "completion_len", "grad_norm", "seconds_sampling",
                            "seconds_gradient") if c in m]
        sections.append(Section("Training", [f"{len(m)} steps; full per-step metrics in {RunDir.METRICS}."],
                                [m[keep].tail(MAX_ROWS)], [fig]))
    d = run.evaluation()
    if d is not None and {"variant", "mode", "correct"} <= set(d.columns):
        table = d.groupby(["variant", "mode"], as_index=False)["correct"].mean().rename(columns={"correct": "accuracy"})
        fig = go.Figure([go.Bar(x=g["mode"], y=g["accuracy"], name=v) for v, g in table.groupby("variant")])
        fig.update_layout(title="held-out accuracy", barmode="group", yaxis_range=[0, 1])
        sections.append(Section("Evaluation", [f"{d['problem'].nunique() if 'problem' in d else len(d)} held-out problems."],
                                [table], [fig]))
    for name, entry in run.analysis_index().items():
        tables = [run.analysis_table(t).head(MAX_ROWS) for t in entry["tables"].values()]
        figures = [run.analysis_figure(f) for f in entry["figures"]]
        paras = [entry["note"], f"Tables (first {MAX_ROWS} rows) from {RunDir.ANALYSIS}/: "
                                f"{', '.join(entry['tables'].values())}; {entry['seconds']:.0f} s."]
        sections.append(Section(TITLES.get(name, name), paras, tables, figures))
    if not sections:
        raise SteerInterpError(f"{run.path} holds nothing to report (no summary, metrics, evaluation or analyses)")
    return sections


def build_report(run, *, title: str = "steerinterp run report") -> str:
    """The HTML page of a run directory (``render_report`` of ``report_sections``)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    subtitle = ""
    if run.holds_run():
        rec = run.record()
        parts = [f"task: {rec.task or rec.task_name}"]
        if rec.model is not None:
            parts.insert(0, f"model: {rec.model.describe()}")
        if rec.config.get("steps") is not None:
            parts.append(f"steps: {rec.config['steps']}")
        parts += [f"seed: {rec.seed}", f"steerinterp {rec.library_version}"]
        subtitle = ", ".join(parts)
    return render_report(title, report_sections(run), subtitle=subtitle)
