"""Composition over all pairs of the single-layer protocol vectors, per training seed (issue 18; [SV] Fig 13).

For each training seed whose single-layer runs (``../single_layer_sweep/train.py``: layers 0, 5, 10, 14, 20, 25,
28, 29, equal budgets) are all finished, every pair i < j of that seed's vectors is inserted without joint
training, and every single layer alone, and evaluated on every held-out add1 problem (greedy by default, or
sampled avg@k); the base model and the all-layer set (``rl_arithmetic/results/vectors/add1-seed0``, the reference
of R) are evaluated beside them. Writes ``results/seeds/pairs_MODE.csv``, one row per (training seed, variant,
sampling seed, problem), so that ``scripts/render_tables.py`` can give R_ij = (acc_ij - max(acc_i, acc_j)) /
(acc_all - max(acc_i, acc_j)) with a bootstrap interval over problems and seeds.

    python examples/composition/seeds.py                    # 28 pairs + 8 singles per seed, greedy
    python examples/composition/seeds.py --mode sampled     # avg@4
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, single_layer_seeds, start_example
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"
ALL_LAYERS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"
LAYERS = "0,5,10,14,20,25,28,29"


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the single-layer runs (layerL-seedS directories)")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--all-layers", default=str(ALL_LAYERS), help="the all-layer SteeringSet R is normalised by")
    ap.add_argument("--mode", default="greedy", choices=["greedy", "sampled"])
    ap.add_argument("--samples", type=int, default=4)
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    by_seed = single_layer_seeds(args.runs, layers)
    complete = sorted(by_seed)
    task = load_task("arithmetic:add1")
    all_layers = si.SteeringSet.load(args.all_layers, model=model)
    frames = []
    for seed in complete:
        singles = {layer: si.SteeringSet.load(by_seed[seed][layer].vectors_path(), model=model) for layer in layers}
        res = A.compose_pairs(model, task, singles, all_layers, mode=args.mode, samples=args.samples)
        frames.append(res.per_problem.assign(train_seed=seed))
        print(f"seed {seed}: base {res.base_accuracy:.1%}, all layers {res.all_layer_accuracy:.1%}", flush=True)
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    rows = pd.concat(frames, ignore_index=True).rename(columns={"seed": "sample_seed"})
    rows["correct"] = rows["correct"].astype(int)
    rows.to_csv(out / f"pairs_{args.mode}.csv", index=False)
    (out / f"pairs_{args.mode}.json").write_text(json.dumps({
        "task": "arithmetic:add1", "layers": layers, "training_seeds": complete, "mode": args.mode,
        "samples": args.samples if args.mode == "sampled" else 0,
        "all_layers": repo_relative(args.all_layers), "runs": repo_relative(args.runs)}, indent=1))


def repo_relative(path) -> str:
    """A path as the results file records it: relative to the repository when inside it."""
    root, p = HERE.parents[1], Path(path).resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)


if __name__ == "__main__":
    main()
