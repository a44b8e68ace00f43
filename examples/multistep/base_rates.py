"""Base accuracy of the model on each multi-step arithmetic level, to choose the level RL trains on.

PAPER_NOTES section 4.1 needs a task where the opening and the process matter (the first-token and
process-word claims). The issue's criterion: base accuracy at temperature 1 between about 10% and 60%, with
128-256 new tokens. Writes results/base_rates.json (greedy and one sampled completion per problem, seed 0).

    python examples/multistep/base_rates.py                      # all levels, 64 problems, 256 tokens (~25 min)
    python examples/multistep/base_rates.py --levels add3 --n 32
    python examples/multistep/base_rates.py --levels add3 --merge  # replace add3's rows, keep the others
"""

from __future__ import annotations

import json
from pathlib import Path

import steerinterp as si
from steerinterp.app.examples import example_parser, start_example
from steerinterp.tasks import multistep_task
from steerinterp.tasks.multistep import LEVELS

HERE = Path(__file__).parent


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    ap.add_argument("--n", type=int, default=64, help="test problems per level (the first n of n_test=128)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of other levels already in base_rates.json (same token budget and n)")
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model
    rows = []
    for level in args.levels:
        task = multistep_task(level, n_test=128, seed=0)
        problems = list(task.test[: args.n])
        prompts = task.prompts(model, problems)
        for decoding, temperature in (("greedy", 0.0), ("sampled T=1 (seed 0)", 1.0)):
            gen = si.generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=temperature, seed=0)
            correct = sum(task.is_correct(text, p) for text, p in zip(gen.texts, problems))
            lengths = gen.completion_lengths.float()
            rows.append({"level": level, "decoding": decoding, "n_problems": len(problems),
                         "accuracy": correct / len(problems), "correct": correct,
                         "mean_completion_tokens": round(lengths.mean().item(), 1),
                         "share_at_256_cap": (lengths >= args.max_new_tokens).float().mean().item()})
            print(level, decoding, f"{correct}/{len(problems)}", flush=True)
    result = {"model": args.model or "embedded (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised)",
              "max_new_tokens": args.max_new_tokens, "n_test": 128, "split_seed": 0,
              "problems": f"the first {args.n} test problems of multistep_task(level, n_test=128, seed=0)",
              "system_prompt": "MULTISTEP_SYSTEM_PROMPT", "rows": rows}
    path = out / "base_rates.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        if old["max_new_tokens"] != args.max_new_tokens or old["problems"] != result["problems"]:
            raise SystemExit(f"--merge: {path} was measured with another token budget or problem count")
        kept = [r for r in old["rows"] if r["level"] not in args.levels]
        order = list(LEVELS)
        result["rows"] = sorted(kept + rows, key=lambda r: order.index(r["level"]))  # stable: greedy first
    path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
