"""Single-layer vectors under issue 18's protocol: 8 layers x 3 seeds, equal budgets, resumable run directories.

The sweep in ``run.py`` trained one seed per layer with unequal budgets (10-30 steps). These runs give every
layer the same budget (``--steps``, default 20 RLOO steps of 8 prompts x 8 samples on add1) for seeds 0, 1, 2,
with the per-layer learning rates of ``run.py`` (PAPER_NOTES 3.3: larger late). They serve three analyses:
the sweep itself, composition over all pairs of these layers (``../composition``), and Diff-Vector against
independently trained single-layer vectors (``../persistence``). Each run lives in
``results/runs/layerL-seedS`` and resumes exactly: stop at any time and run the same command again.

    python examples/single_layer_sweep/train.py                     # 24 runs (~25 s a step on 1 thread: ~3.5 h)
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


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20, help="RLOO steps for every layer (equal budgets)")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layers = [int(x) for x in args.layers.split(",")]
    train_resumably(model, load_task("arithmetic:add1"), {
        ex.out / "runs" / f"layer{layer}-seed{seed}": TrainConfig(
            steps=args.steps, layers=[layer], lr=lr_for(layer, model.cfg.n_layers), seed=seed)
        for seed in args.seeds for layer in layers})


if __name__ == "__main__":
    main()
