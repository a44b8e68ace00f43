"""Persistence as the papers define it (issue 18; PAPER_NOTES 4.2): independently trained single-layer vectors.

For each training seed whose single-layer runs (``../single_layer_sweep/train.py``: layers 0, 5, 10, 14, 20, 25,
28, 29, equal budgets) are all finished, and for each of those layers l: sample one completion per held-out add1
problem with s_l alone in the model (T = 1), teacher-force it with and without s_l, and compare the propagated
shift delta_{l -> l'}(t) with the *independently trained* vector s_{l'} of every later layer that has one
(Diff-Vector), and with its own token mean (Diff-Diff), over completion positions; the prompt's positions are
reported separately. ``run.py`` is the earlier variant (one all-layer set, one set of rollouts) and stays.
Writes ``results/independent/persistence.csv`` (cells per seed), ``per_sample.csv`` (one row per seed, cell
and completion: what intervals resample) and ``persistence-seed0.html``.

    python examples/persistence/independent.py              # ~3 min per seed on 1 thread
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.analysis.composition import combine
from steerinterp.app.examples import example_parser, single_layer_seeds, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"
LAYERS = "0,5,10,14,20,25,28,29"


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the single-layer runs (layerL-seedS directories)")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--problems", type=int, default=None, help="held-out problems (default: all)")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    by_seed = single_layer_seeds(args.runs, layers)
    complete = sorted(by_seed)
    task = load_task("arithmetic:add1")
    problems = list(task.test)[: args.problems]
    prompts = task.prompts(model, problems)
    out = ex.out / "independent"
    out.mkdir(parents=True, exist_ok=True)
    cells, samples = [], []
    for seed in complete:
        singles = {layer: si.SteeringSet.load(by_seed[seed][layer].vectors_path(), model=model) for layer in layers}
        every = combine(*singles.values())  # the comparison vectors s_l' (one per layer, each trained alone)
        rows = []
        for vectors in singles.values():
            rollouts = si.generate(model, prompts, steering=vectors, max_new_tokens=32, temperature=1.0, seed=seed)
            rows.append(A.persistence(model, rollouts, vectors, compare_with=every))
        res = A.PersistenceResult.stack(rows)
        cells.append(res.to_frame(include_prompt=True).assign(train_seed=seed))
        samples.append(res.per_sample_frame().assign(train_seed=seed))
        if seed == complete[0]:
            write_figure(res.plot(), out / f"persistence-seed{seed}.html")
        later = res.to_frame().query("observed_layer > steered_layer")
        print(f"seed {seed}: Diff-Vector mean {later.diff_vector.mean():.3f}, Diff-Diff mean "
              f"{later.diff_diff.mean():.3f} over the later-layer cells", flush=True)
    write_csv(pd.concat(cells, ignore_index=True), out / "persistence.csv")
    write_csv(pd.concat(samples, ignore_index=True), out / "per_sample.csv")
    (out / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "layers": layers, "training_seeds": complete, "problems": len(problems),
        "rollouts": "one completion per problem and steered layer, T = 1, seed = the training seed, 32 new tokens",
        "positions": "completion (prompt rows separately, positions = prompt)"}, indent=1))


if __name__ == "__main__":
    main()
