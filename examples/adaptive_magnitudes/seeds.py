"""The adaptive adapters of ``train.py`` over seeds, against their frozen-read control (PAPER_NOTES section 4.9).

For every finished run under ``results/runs/ARM-seedS`` (``train.py``): how far the read vector moved from its
seeded initialisation (cos(a, a_init) per layer; 1.0 by construction for the control), |b| per layer, the
training accuracy of the first and last 5 steps, greedy accuracy on every held-out add1 problem (with the base
model's, for paired intervals), and the magnitude per chat segment on one sampled completion (temperature 1)
of every held-out problem, a row per problem (``analysis.adaptive_magnitudes``), so that intervals can resample
problems and seeds. Writes ``results/seeds/{runs,heldout,by_segment}.csv``; the README's
tables are rendered from them by ``scripts/render_tables.py`` (intervals over problems and seeds there).

    python examples/adaptive_magnitudes/seeds.py          # ~1 min per run
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, finished_runs, start_example, write_csv
from steerinterp.steering.adaptive import AdaptiveSteering
from steerinterp.tasks import commuted_twin_in_training, evaluate, load_task

HERE = Path(__file__).parent


def read_init_cosines(model, trained: AdaptiveSteering, seed: int) -> dict[int, float]:
    init = AdaptiveSteering.init(model, trained.layers, seed=seed)
    return {k: float(torch.nn.functional.cosine_similarity(trained.a[k].detach().double(),
                                                           init.a[k].detach().double(), dim=0))
            for k in trained.layers}


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--runs", default=None, help="where train.py's runs are (default: OUT/runs)")
    ap.add_argument("--problems", type=int, default=None,
                    help="held-out problems whose sampled completions are read (default: all of them)")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    task = load_task("arithmetic:add1")
    where = Path(args.runs) if args.runs else ex.out / "runs"
    runs = finished_runs(where)
    if not runs:
        raise SystemExit(f"no finished runs under {where}; run examples/adaptive_magnitudes/train.py first")
    run_rows, heldout, segments = [], [], []
    twin_in_train = commuted_twin_in_training(task)
    base = evaluate(model, task, {"base": None}, samples=0).details()
    heldout += [{"arm": "base", "seed": -1, "problem": r.problem, "correct": int(r.correct),
                 "twin_in_training": int(twin_in_train[r.problem])} for r in base.itertuples() if r.mode == "greedy"]
    for arm, seed, run in runs:
        ad = AdaptiveSteering.load(run.final_dir / "adaptive.safetensors", model=model)
        metrics = pd.DataFrame(run.metrics())
        cos = read_init_cosines(model, ad, seed)
        for layer in ad.layers:
            run_rows.append({"arm": arm, "seed": seed, "layer": layer, "steps": len(metrics),
                             "cos_a_init": cos[layer], "b_norm": float(ad.b[layer].detach().norm()),
                             "train_acc_first5": float(metrics["accuracy"].head(5).mean()),
                             "train_acc_last5": float(metrics["accuracy"].tail(5).mean())})
        ev = evaluate(model, task, {arm: ad}, samples=0).details()
        heldout += [{"arm": arm, "seed": seed, "problem": r.problem, "correct": int(r.correct),
                     "twin_in_training": int(twin_in_train[r.problem])} for r in ev.itertuples() if r.mode == "greedy"]
        problems = list(task.test)[: args.problems]
        rollouts = si.generate(model, task.prompts(model, problems), steering=ad, max_new_tokens=32, temperature=1.0,
                               seed=seed)
        by_segment = A.adaptive_magnitudes(model, rollouts, ad).by_segment(per_sample=True)
        for (sample, layer), row in by_segment.iterrows():
            segments += [{"arm": arm, "seed": seed, "layer": layer, "problem": problems[sample].id, "segment": seg,
                          "mean_abs_normalised": float(v)} for seg, v in row.items() if pd.notna(v)]
        print(f"{arm} seed {seed}: {len(metrics)} steps; cos(a, a_init) "
              + ", ".join(f"L{k} {c:.3f}" for k, c in cos.items()), flush=True)
    write_csv(pd.DataFrame(run_rows), out / "runs.csv")
    write_csv(pd.DataFrame(heldout), out / "heldout.csv")
    write_csv(pd.DataFrame(segments), out / "by_segment.csv")
    (out / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "held_out": len(task.test), "segment_problems": len(list(task.test)[: args.problems]),
        "segment_rollouts": "one sampled completion per problem, temperature 1, seed = the run's seed",
        "runs": [f"{arm}-seed{seed}" for arm, seed, _ in runs]}, indent=1))


if __name__ == "__main__":
    main()
