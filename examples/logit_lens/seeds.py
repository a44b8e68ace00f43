"""The language test of the vectors' logit lens over independently trained seeds (issue 18's protocol; claim 11).

``run.py`` reads one shipped all-layer set. This script reads the all-layer sets that
``../single_layer_sweep/train.py`` trained for every training seed (``runs/all-seedS``: equal budgets, 20 steps) and,
per seed and lens (``raw``: ``W_U`` applied to the vector; ``norm``: through the final norm), writes the non-English
share of each layer's top-k boosted and suppressed tokens, with its hypergeometric p-value against the vocabulary's
rate and Benjamini-Hochberg q-values across layers (``results/seeds/language_MODE-seedS.csv``). U+FFFD byte fragments
are excluded, as in ``run.py``. No generation: a few seconds per seed.

    python examples/logit_lens/seeds.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, finished_runs, start_example, write_csv
from steerinterp.errors import SteerInterpError

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the sweep's runs (all-seedS directories)")
    ap.add_argument("--k", type=int, default=50)
    ex = start_example(ap)
    args, model = ex.args, ex.model
    sets = {seed: run for arm, seed, run in finished_runs(args.runs) if arm == "all"}
    if not sets:
        raise SteerInterpError(f"no finished all-layer run (all-seedS) under {args.runs}; run "
                               "examples/single_layer_sweep/train.py first")
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    for seed, run in sorted(sets.items()):
        vecs = si.SteeringSet.load(run.vectors_path(), model=model)
        for mode in ("raw", "norm"):
            lang = A.language_shares(A.vector_logit_lens(model, vecs, mode=mode, k=args.k))
            frame = lang.to_frame().drop(columns="scripts").assign(train_seed=seed)
            write_csv(frame, out / f"language_{mode}-seed{seed}.csv")
            sup = frame[frame.direction == "suppressed"]
            print(f"seed {seed} [{mode}]: suppressed top-{args.k} non-English share mean "
                  f"{sup.non_english_share.mean():.1%} (vocabulary {lang.base_rate:.1%}); layers significant after "
                  f"Benjamini-Hochberg: suppressed {list(sup[sup.significant].layer)}, boosted "
                  f"{list(frame[(frame.direction == 'boosted') & frame.significant].layer)}", flush=True)
    (out / "info.json").write_text(json.dumps({
        "vectors": {str(seed): os.path.relpath(run.vectors_path(), HERE.parent) for seed, run in sets.items()},
        "k": args.k, "fragments": "excluded", "correction": "Benjamini-Hochberg across layers, per direction and seed",
        "dtype": str(model.cfg.dtype).removeprefix("torch."), "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
