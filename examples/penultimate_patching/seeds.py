"""The penultimate-layer patching over independently trained seeds (issue 18's protocol; claim 9).

``run.py`` patches one shipped layer-28 vector. This script takes the penultimate-layer vectors that
``../single_layer_sweep/train.py`` trained for every training seed (equal budgets; one vector per seed) and, per
seed: samples one completion per training problem from the steered model (T = 1, seed = the training seed), runs
``block_patching`` at the first generated token and over the completion (the papers' ``effect_lost`` =
KL(steered || patched) / KL(steered || base), and ``retained``), and decodes the held-out problems greedily under
the references, Skip-Attn, Skip-Layer, every Skip-Head and the two attention paths, keeping one row per problem so
accuracies get intervals over problems and seeds. Each seed's results are written as it finishes
(``results/seeds/effect_lost-seedS.csv``, ``patched_accuracy-seedS.csv``); a re-run does the missing seeds only.

    python examples/penultimate_patching/seeds.py           # ~15 min per seed on 1 thread
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, single_layer_seeds, start_example, write_csv
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"
#: the patches decoded through generation: references, the block, each head, the attention paths
ACCURACY_PATCHES = ("no_patch", "base", "skip_attn", "skip_layer", "skip_head[", "skip_attn->")


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the single-layer runs (layerL-seedS directories)")
    ap.add_argument("--problems", type=int, default=41, help="training problems to sample completions for")
    ap.add_argument("--heldout", type=int, default=None, help="only the first N held-out problems (accuracy)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layer = model.cfg.n_layers - 2
    by_seed = single_layer_seeds(args.runs, [layer])
    task = load_task("arithmetic:add1")
    heldout = list(task.test)[: args.heldout]
    prompts = task.prompts(model, list(task.train)[: args.problems])
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    patches = A.standard_patches(model)
    decoded = [p for p in patches if p.name.startswith(ACCURACY_PATCHES) and not (p.name.startswith("skip_head[")
                                                                                  and "->" in p.name)]
    for seed, runs in by_seed.items():
        lost_file, acc_file = out / f"effect_lost-seed{seed}.csv", out / f"patched_accuracy-seed{seed}.csv"
        if lost_file.exists() and acc_file.exists():
            continue
        vec = si.SteeringSet.load(runs[layer].vectors_path(), model=model)
        rollouts = si.generate(model, prompts, steering=vec, max_new_tokens=args.max_new_tokens, temperature=1.0,
                               seed=seed)
        frames = []
        for positions in ("first", "completion"):
            res = A.block_patching(model, rollouts, vec, patches, positions=positions)
            frames.append(res.to_frame().assign(positions=positions, n_positions=res.n_positions,
                                                kl_steered_base=res.kl_steered_base, train_seed=seed))
        dtype = str(model.cfg.dtype).removeprefix("torch.")
        lost = pd.concat(frames, ignore_index=True).assign(dtype=dtype)
        acc = A.patched_accuracy(model, task, vec, decoded, problems=heldout, max_new_tokens=args.max_new_tokens)
        rows = acc.evaluation.details().rename(columns={"variant": "patch"}).assign(train_seed=seed, dtype=dtype)
        rows["correct"] = rows["correct"].astype(int)
        write_csv(lost, lost_file)
        write_csv(rows, acc_file)
        skip = lost.set_index(["positions", "patch"])["effect_lost"]
        print(f"seed {seed}: effect lost by Skip-Layer {skip['first', 'skip_layer']:.2f} (first token), "
              f"{skip['completion', 'skip_layer']:.2f} (completion); greedy steered "
              f"{acc.accuracy('no_patch'):.1%}, Skip-Layer {acc.accuracy('skip_layer'):.1%}, "
              f"base {acc.accuracy('base'):.1%}", flush=True)
    (out / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "layer": layer, "training_seeds": sorted(by_seed), "problems": args.problems,
        "heldout": len(heldout), "max_new_tokens": args.max_new_tokens,
        "torch": torch.__version__,
        "rollouts": "one completion per training problem, T = 1, seed = the training seed",
        "accuracy": "greedy, one row per held-out problem and patch"}, indent=1))


if __name__ == "__main__":
    main()
