"""RL-train one steering vector per layer on synthetic arithmetic (embedded model), then evaluate.

Reproduces the papers' central effect on a CPU: RLOO on steering vectors alone (all weights frozen)
raises held-out accuracy. Writes per-seed metrics, the vectors, and a results table.

    python examples/rl_arithmetic/run.py --level add1 --seeds 0 1 --steps 40
    python examples/rl_arithmetic/run.py --level add2 --seeds 0 --steps 40
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.models import dtype_choice
from steerinterp.rl import TrainConfig, Trainer
from steerinterp.tasks import arithmetic_task
from steerinterp.tasks.evaluation import evaluate


def main():
    ap = example_parser(__doc__, Path(__file__).parent)
    ap.add_argument("--level", default="add1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--split", default="disjoint", choices=["disjoint", "shared"],
                    help="shared = the prototype's protocol: test problems drawn from the training problems")
    ap.add_argument("--problem-sampling", default="epochs", choices=["epochs", "learnability"],
                    help="learnability = replay half of each step's prompts from problems with mixed rewards")
    ap.add_argument("--parametrisation", default="vector", choices=["vector", "adaptive", "full"],
                    help="full = the papers' full fine-tuning baseline (same RL loop on the weights)")
    ap.add_argument("--warmup-ratio", type=float, default=None,
                    help="share of steps with linear LR warmup (default: TrainConfig's 0.03; 0 = the prototype's)")
    ap.add_argument("--skip-base", action="store_true", help="do not re-evaluate the base model")
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--runs", default="runs/rl_arithmetic", help="training output (checkpoints, vectors)")
    ap.add_argument("--resume", action="store_true")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    task = arithmetic_task(args.level, split=args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.level + ("" if args.split == "disjoint" else f"-{args.split}")
    tag += "" if args.parametrisation == "vector" else f"-{args.parametrisation}"
    tag += "" if args.problem_sampling == "epochs" else f"-{args.problem_sampling}"
    tag += "" if args.warmup_ratio is None else f"-warmup{args.warmup_ratio:g}"
    dtype = dtype_choice(model)
    tag += "" if dtype.dtype == torch.float32 else f"-{dtype.name}"  # a bfloat16 run never overwrites float32 results
    summary = {"level": args.level, "task": repr(task), "steps": args.steps, "lr": args.lr,
               "parametrisation": args.parametrisation, "split": args.split,
               "problem_sampling": args.problem_sampling, "warmup_ratio": args.warmup_ratio,
               "dtype": dtype.name, "dtype_reason": dtype.reason, "seeds": {}}
    rows = []  # every held-out completion (variant, mode, sample seed, problem), for intervals over problems
    if not args.skip_base:
        t = time.time()
        base_eval = evaluate(model, task, {"base": None}, samples=args.eval_samples)
        base = base_eval.to_frame()
        summary["base"] = base.to_dict("records")[0]
        rows += [{**r, "training_seed": None} for r in base_eval.rows]
        print(base.to_string(index=False), f"({time.time() - t:.0f} s)", flush=True)
    for k, seed in enumerate(args.seeds):
        if args.parametrisation == "full" and k:
            model = si.load_model()  # full fine-tuning trains the weights in place: each seed starts from the base
        cfg = TrainConfig(steps=args.steps, lr=args.lr, layers=args.layers, seed=seed, parametrisation=args.parametrisation,
                          problem_sampling=args.problem_sampling,
                          **({} if args.warmup_ratio is None else {"warmup_ratio": args.warmup_ratio}))
        run_dir = Path(args.runs) / f"{tag}-seed{seed}"
        result = Trainer(model, task, cfg, run_dir).train(resume=args.resume)
        df = result.to_frame()
        variant = {"steered": result.steering.detached()} if result.steering is not None else {"fine-tuned": None}
        ev_result = evaluate(model, task, variant, samples=args.eval_samples)
        rows += [{**r, "training_seed": seed} for r in ev_result.rows]
        write_csv(pd.DataFrame(rows).astype({"seed": "Int64", "training_seed": "Int64"}), out / f"{tag}-heldout.csv")
        ev = ev_result.to_frame()
        row = ev.to_dict("records")[0]
        row.update({
            "sec_sampling_per_step": float(df["seconds_sampling"].mean()),
            "sec_gradient_per_step": float(df["seconds_gradient"].mean()),
            "train_acc_first5": float(df["accuracy"].head(5).mean()),
            "train_acc_last5": float(df["accuracy"].tail(5).mean()),
            "first_step_acc_50": int(df.index[df["accuracy"] >= 0.5][0]) if (df["accuracy"] >= 0.5).any() else None,
            "first_step_acc_85": int(df.index[df["accuracy"] >= 0.85][0]) if (df["accuracy"] >= 0.85).any() else None,
            "completion_len_first": float(df["completion_len"].iloc[0]),
            "completion_len_last": float(df["completion_len"].iloc[-1]),
            "vector_norm_mean": float(df["vector_norm_mean"].iloc[-1]) if "vector_norm_mean" in df else None,
            "example": df["example"].iloc[-1],
        })
        summary["seeds"][seed] = row
        write_csv(df.drop(columns=["example"]), out / f"{tag}-seed{seed}-metrics.csv")
        print(json.dumps(row, indent=1), flush=True)
        (out / f"{tag}-summary.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
