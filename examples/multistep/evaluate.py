"""Held-out evaluation of the multi-step vectors (issue 18): base model and each finished training seed.

Every held-out problem of the level (128, none with a twin in training), greedy and ``--samples`` sampled
completions at T = 1, ``--max-new-tokens`` tokens (the task's 256), for the base model and for the all-layer set
of every finished run ``results/runs/all-seedS`` (``train.py``). Each variant's rows go to
``results/heldout/VARIANT.csv`` (one row per decoding, sampling seed and problem: correct, tokens, whether the
completion hit the token cap, its first word and the completion itself, for the first-token and process-word
analyses), written atomically, with the settings and each variant's dtype in ``results/heldout/info.json``; a
re-run evaluates only the variants that have no file yet, so finished seeds can be added as they come (with the
same settings: another --problems, --samples or --max-new-tokens is refused).

    python examples/multistep/evaluate.py                 # base + every finished seed (~25 min per variant, 1 thread)
    python examples/multistep/evaluate.py --problems 16   # a quick look
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

import steerinterp as si
from steerinterp.app.examples import example_parser, finished_runs, start_example, write_csv
from steerinterp.tasks import load_task
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent


def first_word(text: str) -> str:
    """The completion's first word, without surrounding punctuation ('' for an empty completion)."""
    m = re.search(r"[A-Za-z0-9]+", text)
    return m.group(0) if m else ""


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--level", default="word_addsub")
    ap.add_argument("--samples", type=int, default=2, help="sampled completions per problem (avg@k)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--problems", type=int, default=None, help="only the first N held-out problems")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    task = load_task(f"multistep:{args.level}")
    problems = list(task.test[: args.problems])
    variants = {"base": None} | {f"{arm}-seed{seed}": run.vectors_path()
                                 for arm, seed, run in finished_runs(ex.out / "runs") if arm == "all"}
    out = ex.out / "heldout"
    out.mkdir(parents=True, exist_ok=True)
    settings = {"task": task.name, "level": args.level, "problems": len(problems), "samples": args.samples,
                "max_new_tokens": args.max_new_tokens}
    info_path = out / "info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else settings | {"variants": {}}
    clash = {k: (info[k], v) for k, v in settings.items() if info[k] != v}
    if clash:
        raise SystemExit(f"error: {out} holds variants evaluated with other settings {clash} (file, now); "
                         f"pass the same settings or another --out")
    for name, path in variants.items():
        target = out / f"{name}.csv"
        if target.exists():
            continue
        steering = None if path is None else si.SteeringSet.load(path, model=model)
        d = evaluate(model, task, {name: steering}, problems=problems, samples=args.samples,
                     max_new_tokens=args.max_new_tokens).details()
        d = d.rename(columns={"seed": "sample_seed"}).assign(
            train_seed=-1 if path is None else int(name.rpartition("-seed")[2]),
            at_cap=lambda x: x["n_tokens"] >= args.max_new_tokens,
            first_word=lambda x: x["completion"].map(first_word))
        d["correct"] = d["correct"].astype(int)
        write_csv(d, target)
        info["variants"][name] = {"dtype": str(model.cfg.dtype).removeprefix("torch."), "torch": torch.__version__,
                                  "steering": None if path is None else str(Path(path).relative_to(ex.out))}
        info_path.write_text(json.dumps(info, indent=1))
        print(f"{name}: greedy {d[d['mode'] == 'greedy'].correct.mean():.1%}, "
              f"sampled {d[d['mode'] == 'sampled'].correct.mean():.1%}", flush=True)

if __name__ == "__main__":
    main()
