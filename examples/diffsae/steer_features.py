"""Steering with DiffSAE features (run after run.py, which saves the SAEs under results/saes/).

A feature's decoder direction becomes a SteeringVector at its *typical contribution*: the mean activation
where it fires on the held-out problems' differences times the decoder row's norm (the last layer's own
trained vector has norm ~1, far below the ~300 of the accumulated difference there, so the papers' "norm of
that layer's vector" would do nothing here). Variants on the held-out add1 problems:

* base + the feature with the largest positive attribution to log p(answer) (from run.py);
* the trained vectors - the feature most tied to incorrect generations (from run.py's frequencies);
* the trained vectors + the top-attributed feature.

    python examples/diffsae/steer_features.py [--layer 29] [--multiplier 1]
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp import analysis as A
from steerinterp import sae as S
from steerinterp.app.examples import add_task_arguments, example_parser, example_task, start_example, write_csv
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent
VECTORS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def typical_norm(dsae, diffs, feature: int) -> float:
    """Mean activation of ``feature`` where it fires, times its decoder row's norm."""
    acts = S.features.encode_rows(dsae, diffs.delta)[:, feature]
    fired = acts[acts > 0]
    if len(fired) == 0:
        return 0.0
    return float(fired.mean() * dsae.sae.W_dec[feature].detach().norm())


def feature_variants(model, task, vecs, dsae, *, attributed: int, incorrect: int, multiplier: float = 1.0,
                     max_new_tokens: int = 32):
    """{name: steering} for the evaluation, and the norms used."""
    problems = list(task.test)
    rollouts = si.generate(model, task.prompts(model, problems), steering=vecs, max_new_tokens=max_new_tokens,
                           temperature=1.0, seed=1)
    diffs = S.collect_differences(model, rollouts, vecs, [dsae.hook_name], positions="all")[dsae.hook_name]
    norms = {f: multiplier * typical_norm(dsae, diffs, f) for f in {attributed, incorrect}}
    plus = S.feature_vector(dsae, attributed, norm=norms[attributed])
    minus = S.feature_vector(dsae, incorrect, norm=norms[incorrect], scale=-1.0)
    variants = {"base": None, f"base + feature {attributed}": si.SteeringSet([plus]), "vectors": vecs,
                f"vectors - feature {incorrect}": A.combine(vecs, minus),   # summed where they share a hook
                f"vectors + feature {attributed}": A.combine(vecs, plus)}
    return variants, norms


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--vectors", default=str(VECTORS))
    ap.add_argument("--tag", default="add1", help="prefix of run.py's results files (e.g. multistep)")
    add_task_arguments(ap)
    ap.add_argument("--layer", type=int, default=29)
    ap.add_argument("--multiplier", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=2)
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model
    vecs = si.SteeringSet.load(args.vectors, model=model)
    task, new_tokens = example_task(args)
    dsae = S.load_diff_sae(out / "saes" / f"layer{args.layer}")
    attribution = pd.read_csv(out / f"{args.tag}-layer{args.layer}-attribution.csv").dropna(subset=["feature"])
    attributed = int(attribution.sort_values("attribution").feature.iloc[-1])
    freq = pd.read_csv(out / f"{args.tag}-layer{args.layer}-frequencies.csv")
    incorrect = int(freq.sort_values("difference").feature.iloc[0])
    variants, norms = feature_variants(model, task, vecs, dsae, attributed=attributed, incorrect=incorrect,
                                       multiplier=args.multiplier, max_new_tokens=new_tokens)
    ev = evaluate(model, task, variants, samples=args.samples, max_new_tokens=new_tokens)
    table = ev.to_frame()
    table["feature_norms"] = json.dumps({str(k): round(v, 2) for k, v in norms.items()})
    write_csv(table, out / f"{args.tag}-layer{args.layer}-feature-steering.csv")
    print(f"typical contribution norms: {norms}")
    print(table.drop(columns="feature_norms").to_string(index=False))


if __name__ == "__main__":
    main()
