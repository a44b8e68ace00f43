"""The single-layer protocol runs of ``train.py`` read for intervals over problems and training seeds (issue 18).

For every finished run ``results/runs/layerL-seedS``: its steps, learning rate, final vector norm and training
accuracy (first and last 5 steps), then greedy and sampled (T = 1, avg@``--samples``) correctness on every
held-out add1 problem. Once, beside them: the base model and two format-only baselines, so a gain can be told
apart from a format fix (issue 18): the base model with the answer format forced (the assistant's reply starts
"a + b =") and the base model with a 4x longer token budget (128 new tokens instead of 32). Writes
``results/seeds/{runs,heldout}.csv`` (one row per variant, training seed, decoding, sampling seed and problem,
with a flag for problems whose commuted twin is a training problem), and the equal-budget all-layer runs
(``runs/all-seedS``) into ``results/seeds/all_layers.csv`` (``--arms all`` evaluates only those);
``scripts/render_tables.py`` turns them into the README's tables. Unfinished runs are skipped, so it can be run
while ``train.py`` continues.

    python examples/single_layer_sweep/seeds.py          # ~1 min per run on 1 thread
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp.app.examples import example_parser, finished_runs, start_example, write_csv
from steerinterp.tasks import commuted_twin_in_training, evaluate, load_task

HERE = Path(__file__).parent
FORMAT_PREFIX = "a + b ="
LONG_BUDGET = 128


def forced_answer_prefix(problem) -> str:
    """The assistant's reply begins with the sum written out, e.g. "3 + 4 =" (answer_formats.py's first format)."""
    a, b = problem.question.removeprefix("What is ").rstrip("?").split(" + ")
    return f"{a} + {b} ="


def outcomes(ev, **labels) -> list[dict]:
    return [{**labels, "mode": r.mode, "sample_seed": -1 if pd.isna(r.seed) else int(r.seed), "problem": r.problem,
             "correct": int(r.correct), "n_tokens": int(r.n_tokens)} for r in ev.details().itertuples()]


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=None, help="where train.py's runs are (default: OUT/runs)")
    ap.add_argument("--samples", type=int, default=4, help="sampled completions per problem (avg@k)")
    ap.add_argument("--arms", nargs="+", choices=["single", "all"], default=["single", "all"],
                    help="single: the single layers and the baselines (heldout.csv, runs.csv); all: the equal-budget "
                         "all-layer runs (all_layers.csv); each file is written only when its arm is asked for")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    task = load_task("arithmetic:add1")
    finished = finished_runs(Path(args.runs) if args.runs else ex.out / "runs")
    runs = [(arm, seed, run) for arm, seed, run in finished if arm.startswith("layer")]
    if not runs:
        raise SystemExit("no finished runs; run examples/single_layer_sweep/train.py first")
    kw = {"samples": args.samples, "seed": 0}
    twins = commuted_twin_in_training(task)
    if "all" in args.arms:
        all_rows = []
        for arm, seed, run in finished:
            if arm == "all":
                vectors = si.SteeringSet.load(run.vectors_path(), model=model)
                all_rows += outcomes(evaluate(model, task, {arm: vectors}, **kw), variant="all layers", layer=-1,
                                     train_seed=seed, steps=len(run.metrics()))
        if all_rows:
            frame = pd.DataFrame(all_rows)
            frame["twin_in_training"] = frame["problem"].map(twins).astype(int)
            write_csv(frame, out / "all_layers.csv")
    if "single" not in args.arms:
        return
    rows = outcomes(evaluate(model, task, {"base": None}, **kw), variant="base", layer=-1, train_seed=-1)
    forced = task.with_assistant_prefix(forced_answer_prefix, FORMAT_PREFIX)
    rows += outcomes(evaluate(model, forced, {"base": None}, **kw), variant="base, answer format forced", layer=-1,
                     train_seed=-1)
    rows += outcomes(evaluate(model, task, {"base": None}, max_new_tokens=LONG_BUDGET, **kw),
                     variant=f"base, {LONG_BUDGET} new tokens", layer=-1, train_seed=-1)
    run_rows = []
    for arm, seed, run in runs:
        layer = int(arm.removeprefix("layer"))
        vectors = si.SteeringSet.load(run.vectors_path(), model=model)
        metrics = pd.DataFrame(run.metrics())
        config = run.record().config
        run_rows.append({"layer": layer, "seed": seed, "steps": len(metrics), "lr": config["lr"],
                         "norm": float(vectors[layer].vector.norm()),
                         "train_acc_first5": float(metrics["accuracy"].head(5).mean()),
                         "train_acc_last5": float(metrics["accuracy"].tail(5).mean())})
        rows += outcomes(evaluate(model, task, {arm: vectors}, **kw), variant="single layer", layer=layer,
                         train_seed=seed)
        print(f"{arm} seed {seed}: {len(metrics)} steps, norm {run_rows[-1]['norm']:.1f}", flush=True)
    heldout = pd.DataFrame(rows)
    heldout["twin_in_training"] = heldout["problem"].map(twins).astype(int)
    write_csv(heldout, out / "heldout.csv")
    write_csv(pd.DataFrame(run_rows), out / "runs.csv")
    (out / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "held_out": len(task.test), "samples": args.samples, "sampling_seeds": "0..k-1",
        "max_new_tokens": 32, "format_prefix": FORMAT_PREFIX, "long_budget": LONG_BUDGET,
        "runs": [f"{arm}-seed{seed}" for arm, seed, _ in runs]}, indent=1))


if __name__ == "__main__":
    main()
