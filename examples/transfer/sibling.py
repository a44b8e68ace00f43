"""Transfer between the base model and a sibling that has not solved add1, both directions (issue 18; PAPER_NOTES 4.7).

``run.py``'s sibling, the model fully RL-fine-tuned on add1, already solves add1, so its own vectors have little
to add and a transfer ratio has no room. Here the sibling is the embedded model fully RL-fine-tuned on another
level (``--sibling-task``, default two-digit subtraction), which changes every weight but is not trained on
add1. Then, for each training seed, the same add1 vector training (all layers, ``--steps`` RLOO steps, lr 3e-3:
equal budgets) runs on the base model and on the sibling, and each set is evaluated on both models, greedy and
sampled, on every held-out add1 problem. All training runs are resumable run directories under
``results/sibling/``; each seed's transfer outcomes go to ``results/sibling/transfer-seedS.csv`` and all of them
to ``results/sibling/transfer.csv`` (one row per seed, recipient, donor, decoding and problem) for intervals in
``scripts/render_tables.py``. Separate processes may take separate seeds.

    python examples/transfer/sibling.py                       # fine-tune (~10 steps), then 2 x 40-step vector runs
    python examples/transfer/sibling.py --seeds 0 1 2         # the protocol's three seeds (re-run to resume)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, train_resumably, write_csv
from steerinterp.models import load_finetuned, load_model
from steerinterp.rl import TrainConfig
from steerinterp.run_dir import RunDir
from steerinterp.tasks import commuted_twin_in_training, load_task

HERE = Path(__file__).parent


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--sibling-task", default="arithmetic:sub2", help="what the sibling is fully fine-tuned on")
    ap.add_argument("--sibling-steps", type=int, default=10, help="full RL fine-tuning steps (lr --sibling-lr)")
    ap.add_argument("--sibling-lr", type=float, default=1e-5)
    ap.add_argument("--steps", type=int, default=40, help="add1 vector training steps on each model (equal budgets)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--samples", type=int, default=4, help="sampled completions per problem (avg@k)")
    ex = start_example(ap)
    args, base = ex.args, ex.model
    root = ex.out / "sibling"
    tag = args.sibling_task.replace(":", "-")
    finetune = root / f"finetune-{tag}"
    # the sibling: a second copy of the model, its weights trained in place on the other level (a finished run is
    # left as it is), then loaded from the run's final weights
    copy = load_model(args.model, dtype=args.dtype)
    train_resumably(copy, load_task(args.sibling_task), {finetune: TrainConfig(
        steps=args.sibling_steps, parametrisation="full", lr=args.sibling_lr, seed=0)})
    del copy
    sibling = load_finetuned(RunDir(finetune).final_dir, base=args.model, dtype=args.dtype)
    models = {"base": base, "sibling": sibling}
    task = load_task("arithmetic:add1")
    twins = commuted_twin_in_training(task)
    for seed in args.seeds:
        # seed by seed (train on both models, then evaluate), each seed's outcomes in their own file: separate
        # processes can take separate seeds, and a re-run skips what is done
        out = root / f"transfer-seed{seed}.csv"
        runs = {name: root / f"vectors-{name}-seed{seed}" for name in models}
        for name, model in models.items():
            train_resumably(model, task, {runs[name]: TrainConfig(steps=args.steps, lr=3e-3, seed=seed)})
        if out.exists():
            continue
        vectors = {name: si.SteeringSet.load(RunDir(runs[name]).vectors_path(), model=model)
                   for name, model in models.items()}
        frames = []
        for mode in ("greedy", "sampled"):
            grid = A.transfer_grid(models, vectors, task, mode=mode, samples=args.samples)
            frames.append(grid.per_problem.assign(train_seed=seed, mode=mode))
            print(f"seed {seed} {mode}:\n{grid.accuracy.round(3).to_string()}", flush=True)
        rows = pd.concat(frames, ignore_index=True).rename(columns={"seed": "sample_seed"})
        rows["correct"] = rows["correct"].astype(int)
        rows["twin_in_training"] = rows["problem"].map(twins).astype(int)
        write_csv(rows, out)
    done = sorted(root.glob("transfer-seed*.csv"))
    write_csv(pd.concat([pd.read_csv(f) for f in done], ignore_index=True), root / "transfer.csv")
    distance = A.weight_change(base, sibling)  # how far apart the two family members are
    (root / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "sibling": f"full RL fine-tuning on {args.sibling_task}, {args.sibling_steps} steps, "
        f"lr {args.sibling_lr}", "vector_steps": args.steps, "samples": args.samples,
        "training_seeds": sorted(int(f.stem.rpartition("seed")[2]) for f in done),
        "sibling_relative_weight_change": distance.relative,
        "sibling_parameters_changed": [len(distance.changed), len(distance.names)]}, indent=1))


if __name__ == "__main__":
    main()
