"""Single-layer vectors under issue 18's protocol: 8 layers x 3 seeds, equal budgets, resumable run directories.

The sweep in ``run.py`` trained one seed per layer with unequal budgets (10-30 steps). These runs give every
layer the same budget (``--steps``, default 20 RLOO steps of 8 prompts x 8 samples on add1) for seeds 0, 1, 2,
with the per-layer learning rates of ``run.py`` (PAPER_NOTES 3.3: larger late). They serve three analyses:
the sweep itself, composition over all pairs of these layers (``../composition``), and Diff-Vector against
independently trained single-layer vectors (``../persistence``). Beside them, per seed, an all-layer set with the
same budget (``results/runs/all-seedS``, lr 3e-3 as in ``rl_arithmetic``), the equal-budget reference that the
"all layers beat any single layer" comparisons need (``--no-all-layers`` skips it). Each run lives in
``results/runs/ARM-seedS`` and resumes exactly: stop at any time and run the same command again.

    python examples/single_layer_sweep/train.py                     # 24 + 3 runs (~25-40 s a step on 1 thread)
    python examples/single_layer_sweep/train.py --layers 29 --seeds 0
"""

from __future__ import annotations

from pathlib import Path

from run import lr_for  # the sweep's per-layer learning rates (run.py beside this file)

from steerinterp.app.examples import example_parser, start_example, train_resumably
from steerinterp.rl import TrainConfig
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
LAYERS = "0,5,10,14,20,25,28,29"
ALL_LAYERS_LR = 3e-3  # rl_arithmetic's all-layer recipe


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20, help="RLOO steps for every layer (equal budgets)")
    ap.add_argument("--no-all-layers", action="store_true", help="skip the equal-budget all-layer arm")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    runs = {ex.out / "runs" / f"layer{layer}-seed{seed}": TrainConfig(
        steps=args.steps, layers=[layer], lr=lr_for(layer, model.cfg.n_layers), seed=seed)
        for seed in args.seeds for layer in layers}
    if not args.no_all_layers:  # after the single layers, so a protocol started before this arm keeps its order
        runs |= {ex.out / "runs" / f"all-seed{seed}": TrainConfig(steps=args.steps, layers="all", lr=ALL_LAYERS_LR,
                                                                    seed=seed) for seed in args.seeds}
    train_resumably(model, load_task("arithmetic:add1"), runs)


if __name__ == "__main__":
    main()
