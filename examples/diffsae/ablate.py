"""Causal ablation of DiffSAE features inside the steered run (issue 18; [SV] section 8, PAPER_NOTES 4.6).

Do the features that mark correct or incorrect generations carry the steering effect? ``run.py`` trains the
DiffSAEs; this script takes the one at ``--layer`` (``results/saes/layerN``), re-samples run.py's labelled
steered generations (same seed, so the same completions), ranks the features by their firing-frequency
difference between correct and incorrect generations, and removes from the steered run, at that layer, the
top-k features tied to correct generations (difference > 0), the top-k tied to incorrect ones (difference < 0),
and k random live features (a control), for each k of ``--ks``:

* teacher-forced on the steered generations: KL(steered || ablated) / KL(steered || base), the share of the
  steering effect the features carry (``sae.ablate_features``);
* decoding on the held-out problems, greedy and sampled: accuracy (``sae.ablation_accuracy``), one row per
  completion in ``add1-layerN-ablation.csv`` for intervals.

    python examples/diffsae/ablate.py            # ~15 min on 1 thread
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp import sae as S
from steerinterp.app.examples import add_task_arguments, example_parser, example_task, start_example, write_csv

HERE = Path(__file__).parent
VECTORS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def chosen_features(freqs, k: int, seed: int = 0) -> dict[str, list[int]]:
    """Up to k features per kind: tied to correct (difference > 0), to incorrect (< 0), and random live ones
    (firing in at least one generation, none of the other two lists; seeded)."""
    diff = freqs.difference
    correct = [f for f in freqs.top(k, toward="correct") if diff[f] > 0]
    incorrect = [f for f in freqs.top(k, toward="incorrect") if diff[f] < 0]
    live = torch.nonzero((freqs.freq_correct + freqs.freq_incorrect) > 0).flatten().tolist()
    pool = [f for f in live if f not in set(correct) | set(incorrect)]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"correct": correct, "incorrect": incorrect, "random live": [pool[i] for i in order[:k]]}


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--vectors", default=str(VECTORS))
    ap.add_argument("--layer", type=int, default=29)
    ap.add_argument("--saes", default=str(HERE / "results" / "saes"))
    ap.add_argument("--samples", type=int, default=8, help="completions per problem (as run.py)")
    ap.add_argument("--ks", default="1,3,10")
    ap.add_argument("--tag", default="add1", help="prefix of the results files (e.g. multistep for --task multistep:...)")
    add_task_arguments(ap)
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model
    ks = [int(x) for x in args.ks.split(",")]
    vecs = si.SteeringSet.load(args.vectors, model=model)
    task, new_tokens = example_task(args)
    dsae = S.load_diff_sae(Path(args.saes) / f"layer{args.layer}")
    gens = S.sample_labelled(model, task, vecs, problems=list(task.train) + list(task.test),
                             samples_per_problem=args.samples, seed=0, max_new_tokens=new_tokens)
    diffs = S.collect_differences(model, gens, vecs, [args.layer], positions="completion", batch_size=16)
    freqs = S.feature_frequencies(dsae, diffs[f"blocks.{args.layer}.hook_resid_post"])
    chosen = chosen_features(freqs, max(ks))
    kl_rows, outcomes = [], []
    for kind, features in chosen.items():
        kinds_ks = [k for k in ks if k <= len(features)]
        if not kinds_ks:
            continue
        tf = S.ablate_features(model, gens.output, dsae, features, steering=vecs, ks=kinds_ks)
        kl_rows.append(tf.to_frame().assign(kind=kind))
        acc = S.ablation_accuracy(model, task, dsae, features, steering=vecs, ks=kinds_ks, samples=2,
                                  max_new_tokens=new_tokens)
        outcomes.append(acc.evaluation.details().drop(columns="completion").assign(kind=kind))
        print(f"{kind} {features}: effect lost " + ", ".join(f"top-{k} {v:.3f}" for k, v in zip(kinds_ks, tf.effect_lost))
              + "; greedy " + ", ".join(f"{v} {acc.accuracy(v):.1%}" for v in ["steered"] + [f"top-{k}" for k in kinds_ks]),
              flush=True)
    write_csv(pd.concat(kl_rows, ignore_index=True), out / f"{args.tag}-layer{args.layer}-ablation-kl.csv")
    write_csv(pd.concat(outcomes, ignore_index=True), out / f"{args.tag}-layer{args.layer}-ablation.csv")
    (out / f"{args.tag}-layer{args.layer}-ablation.json").write_text(json.dumps({
        "layer": args.layer, "ks": ks, "features": chosen, "generations": len(gens), "accuracy": gens.accuracy,
        "n_correct_features": int((freqs.difference > 0).sum()), "n_incorrect_features": int((freqs.difference < 0).sum()),
        "decoding": "held-out problems, greedy and 2 sampled completions (seeds 0, 1)"}, indent=1))


if __name__ == "__main__":
    main()
