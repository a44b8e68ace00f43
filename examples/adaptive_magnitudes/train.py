"""Train the adaptive adapters this example analyses: 3 seeds, and the frozen-read control, equal budgets.

Issue 18's protocol for the adaptive claim (PAPER_NOTES section 4.9): the rank-1 token-wise adapter at layers
10, 20 and 28 on add1, 40 RLOO steps (8 prompts x 8 samples, 32 new tokens, lr 3e-3, the trainer's defaults
otherwise) for seeds 0, 1, 2, and beside each the control ``adaptive_fixed_read`` (the read vector ``a`` frozen
at the same seeded initialisation, only ``b`` trained), so that where the magnitude goes can be told apart
from where the random initialisation already pointed it. Each run is a run directory under
``results/runs/ARM-seedS`` that resumes exactly: stop at any time and run the same command again.

    python examples/adaptive_magnitudes/train.py                      # all six runs, in order (~3 h, 1 thread)
    python examples/adaptive_magnitudes/train.py --arms adaptive --seeds 0
"""

from __future__ import annotations

from pathlib import Path

from steerinterp.app.examples import example_parser, start_example, train_resumably
from steerinterp.rl import TrainConfig
from steerinterp.tasks import load_task

HERE = Path(__file__).parent
ARMS = ("adaptive", "adaptive_fixed_read")
LAYERS = "10,20,28"


def run_path(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / f"{arm}-seed{seed}"


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", default=LAYERS)
    ex = start_example(ap)
    args = ex.args
    train_resumably(ex.model, load_task("arithmetic:add1"), {
        run_path(ex.out, arm, seed): TrainConfig(steps=args.steps, layers=args.layers, parametrisation=arm, lr=args.lr,
                                                 seed=seed)
        for seed in args.seeds for arm in args.arms})


if __name__ == "__main__":
    main()
