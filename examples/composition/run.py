"""Combining independently trained single-layer vectors (PAPER_NOTES section 4.8, [SV] Fig 13).

Single-layer vectors RL-trained on add1 (``steerinterp train --task arithmetic:add1 --layers L``; copies
ship in results/vectors/) are inserted in pairs without any joint training; each pair's held-out
accuracy is normalised against the better of its two single layers and all-layer steering:
R_ij = (acc_ij - max(acc_i, acc_j)) / (acc_all - max(acc_i, acc_j)).

    python examples/composition/run.py
"""

from __future__ import annotations

from pathlib import Path

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.app.figures import write_figure
from steerinterp.tasks import arithmetic_task

HERE = Path(__file__).parent
ALL_LAYERS = HERE.parent / "rl_arithmetic" / "results" / "vectors" / "add1-seed0"


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--singles", nargs="+", default=sorted(str(p) for p in (HERE / "results" / "vectors").glob("layer*")),
                    help="directories of saved single-layer SteeringSets")
    ap.add_argument("--all-layers", default=str(ALL_LAYERS))
    ap.add_argument("--mode", default="greedy", choices=["greedy", "sampled"])
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    singles = {}
    for path in args.singles:
        s = si.SteeringSet.load(path, model=model)
        if len(s) != 1:
            raise SystemExit(f"{path} holds {len(s)} vectors; give single-layer sets")
        singles[s.layers[0]] = s
    task = arithmetic_task("add1")
    res = A.compose_pairs(model, task, singles, si.SteeringSet.load(args.all_layers, model=model), mode=args.mode)
    write_csv(res.to_frame(), out / f"pairs_{args.mode}.csv")
    write_figure(res.plot(), out / f"pairs_{args.mode}.html")
    print(f"base {res.base_accuracy:.1%}, all layers {res.all_layer_accuracy:.1%}")
    print(res.to_frame().to_string(index=False))


if __name__ == "__main__":
    main()
