"""All-layer steering vectors RL-trained on the multi-step task (issue 18), 3 seeds, resumable run directories.

The level is ``word_addsub`` ("Tom has 7 apples, gets 5 more and gives 3 away ..."), the closest of the measured
levels to the papers' criterion of a base accuracy between about 10% and 60% at temperature 1: 7.8% [3.4, 17.0]
(``results/base_rates.json``, README). With 8 samples per prompt that still gives a mixed-reward group about
half the time (1 - 0.922^8). The recipe is rl_arithmetic's (all layers, lr 3e-3, 8 prompts x 8 samples, RLOO,
T = 1) with the task's 256 new tokens; the gradient pass then runs 8 rows at a time (``gradient_rows``). Each run
lives in ``results/runs/all-seedS`` and resumes exactly, in the dtype it started in: stop at any time and run the
same command again (with ``--dtype bfloat16`` where ``auto`` picks float32). One step takes about 3 minutes on one
thread of a 2-core AVX512-BF16 CPU in bfloat16 (7-8 in float32), so 40 steps are about 2 hours per seed: split
the seeds across processes (``--seeds 1``; each holds about 9 GB) and sessions.

    python examples/multistep/train.py                  # seeds 0, 1, 2 in turn
    python examples/multistep/train.py --seeds 1        # one seed (a second process)
"""

from __future__ import annotations

from pathlib import Path

from steerinterp.app.examples import example_parser, start_example, train_resumably
from steerinterp.rl import TrainConfig
from steerinterp.tasks import load_task

HERE = Path(__file__).parent


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--level", default="word_addsub")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3, help="rl_arithmetic's all-layer learning rate")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ex = start_example(ap)
    args, model = ex.args, ex.model
    runs = {ex.out / "runs" / f"all-seed{seed}": TrainConfig(steps=args.steps, layers="all", lr=args.lr, seed=seed,
                                                              max_new_tokens=args.max_new_tokens)
            for seed in args.seeds}
    train_resumably(model, load_task(f"multistep:{args.level}"), runs)


if __name__ == "__main__":
    main()
