"""The main job, ``steerinterp demo``: RL-train steering vectors on the embedded model and compare.

1. Load the embedded SmolLM2-135M-Instruct (frozen).
2. Evaluate it on held-out single-digit addition (greedy and sampled at T=1).
3. Train one steering vector per layer with RLOO (the papers' recipe), weights frozen.
4. Evaluate again with the vectors and collect example completions before / after.
5. Analyse the vectors (``pipeline.analyze_vectors``: logit lens, first-token substitution,
   persistence, path patching, attention diff, DiffSAE) and build the HTML report.

``quick`` trains 8 steps instead of 40 and runs reduced analyses (minutes instead of tens of minutes on 2 CPU
cores; ``benchmarks/demo_time.py`` times both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from steerinterp.models.loading import dtype_choice
from steerinterp.run_dir import RunDir, RunRecord
from steerinterp.types import model_spec

DEMO_TASK = "arithmetic:add1"


@dataclass
class DemoResult:
    model_name: str
    task: str
    steps: int
    evaluation: object  # EvalResult
    training: object  # TrainResult
    examples: list[dict] = field(default_factory=list)
    analysis: object = None  # RunAnalysis
    precision: str = ""  # the model's dtype and why (models.dtype_choice)

    def summary(self) -> str:
        df = self.evaluation.to_frame()
        tr = self.training.to_frame()
        lines = [
            f"steerinterp demo: {self.model_name}, {self.task}, {self.steps} RLOO steps on steering vectors "
            f"(all weights frozen); {self.precision}",
            "",
            df.to_string(index=False, float_format=lambda x: f"{x:.3f}"),
            "",
            f"training accuracy: {tr['accuracy'].head(3).mean():.2f} (first 3 steps) -> "
            f"{tr['accuracy'].tail(3).mean():.2f} (last 3); completion length {tr['completion_len'].iloc[0]:.1f} -> "
            f"{tr['completion_len'].iloc[-1]:.1f} tokens; per step {tr['seconds_sampling'].mean():.1f} s sampling + "
            f"{tr['seconds_gradient'].mean():.1f} s gradient",
            "",
            "examples (greedy):",
        ]
        for e in self.examples:
            lines.append(f"  {e['question']}  (answer {e['answer']})")
            lines.append(f"    base:    {e['base']!r}")
            lines.append(f"    steered: {e['steered']!r}")
        if self.analysis is not None:
            lines += ["", "analyses:"]
            lines += [f"  {f.name}: {f.note}" for f in self.analysis.findings.values()]
        return "\n".join(lines)


def run_demo(*, quick: bool = False, steps: int | None = None, model=None, progress: bool = False,
             samples: int | None = None, analyses=None, run: RunDir | None = None, resume: bool = False,
             overwrite: bool = False) -> DemoResult:
    """Train, evaluate and analyse; ``analyses``: names to run (``pipeline.ANALYSES``), ``()`` for none.

    With ``run``, training checkpoints there (``resume=True`` continues an interrupted demo; a directory
    holding another run is refused unless ``overwrite=True``); ``write_demo`` then adds the rest.
    """
    import steerinterp as si
    from steerinterp.rl import TrainConfig, Trainer
    from steerinterp.tasks import evaluate, load_task

    model = model or si.load_model()
    task = load_task(DEMO_TASK)
    steps = steps if steps is not None else (8 if quick else 40)
    samples = samples if samples is not None else (2 if quick else 4)
    result = Trainer(model, task, TrainConfig(steps=steps), run, progress=progress).train(resume=resume,
                                                                                         overwrite=overwrite)
    vecs = result.steering.detached()
    ev = evaluate(model, task, {"base": None, "steered": vecs}, samples=samples, progress=progress)
    details = ev.details()
    greedy = details[details["mode"] == "greedy"]
    examples = []
    for p in list(task.test)[:4]:
        rows = greedy[greedy["problem"] == p.id].set_index("variant")["completion"]
        examples.append({"question": p.question, "answer": p.answer, "base": rows["base"], "steered": rows["steered"]})
    analysis = None
    if analyses is None or len(analyses):
        from steerinterp.app.pipeline import analyze_vectors

        analysis = analyze_vectors(model, vecs, task, quick=quick, only=analyses, progress=progress)
    choice = dtype_choice(model)
    return DemoResult(getattr(model.cfg, "model_name", "model"), task.name, steps, ev, result, examples, analysis,
                      precision=f"{choice.name} ({choice.reason})")


def write_demo(result: DemoResult, run: RunDir, model=None) -> list[Path]:
    """Write the evaluation table, summary, analyses and ``report.html`` into ``run``, and the vectors when
    training did not already put them there (a demo trained without a run directory)."""
    from steerinterp.app.pipeline import build_report, save_analysis

    paths = []
    if run.vectors_path() is None:  # trained without this run directory
        paths.append(result.training.steering.save(run.final_dir, model=model, info={"task": result.task}))
        run.write_metrics(result.training.metrics)
        record = RunRecord(kind="demo", model=model_spec(model) if model is not None else None, task=DEMO_TASK,
                           task_name=result.task, config={"steps": result.steps},
                           dtype_reason=dtype_choice(model).reason if model is not None else None)
    else:
        paths.append(run.vectors_path())
        record = run.record()
        record.kind = "demo"
    paths.append(run.write_record(record))
    paths.append(run.write_evaluation(result.evaluation.details()))
    paths.append(run.write_summary(result.summary()))
    if result.analysis is not None:
        paths.append(save_analysis(result.analysis, run))
    paths.append(run.write_report(build_report(run, title="steerinterp demo")))
    return paths


__all__ = ["DEMO_TASK", "DemoResult", "run_demo", "write_demo"]
