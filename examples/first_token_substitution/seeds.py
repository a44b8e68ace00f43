"""First-token substitution and the prefix control over independently trained seeds (issue 18's protocol; claims 7-8).

``run.py`` analyses one shipped layer-29 vector. This script takes the last-layer vectors that
``../single_layer_sweep/train.py`` trained for every training seed (equal budgets; one vector per seed) and, per
seed: samples one completion per training problem from the steered model (T = 1, seed = the training seed; the
papers keep those that end with EOS), teacher-forces them with and without the vector (``token_shift``: one row per
completion position, so position 0 can be compared with later ones completion by completion), and evaluates the
steered model on the held-out problems. The prefix control's arms that do not involve a vector (the base model,
and the base model with "To" or with the problem's first operand written at the start of its answer) are
evaluated once (``results/seeds/heldout-base.csv``). Every evaluation keeps one row per problem and sampling seed
(``heldout-seedS.csv``, ``token_shift-seedS.csv``, ``first_token_probs.csv``), so the share of the gain a prefix
recovers gets an interval over problems and training seeds; a re-run does the missing seeds only.

    python examples/first_token_substitution/seeds.py        # ~5 min per seed on 1 thread
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import example_parser, single_layer_seeds, start_example, write_csv
from steerinterp.tasks import load_task
from steerinterp.tasks.evaluation import evaluate

HERE = Path(__file__).parent
SWEEP_RUNS = HERE.parent / "single_layer_sweep" / "results" / "runs"


def first_operand(problem) -> str:
    """'What is 3 + 7?' -> '3'."""
    return problem.question.split("What is ")[1].split(" ")[0]


def first_token_ids(model, texts: list[str]) -> list[int]:
    return [model.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in texts]


def main():
    ap = example_parser(__doc__, HERE, threads=1)
    ap.add_argument("--runs", default=str(SWEEP_RUNS), help="the single-layer runs (layerL-seedS directories)")
    ap.add_argument("--problems", type=int, default=41, help="training problems to sample completions for")
    ap.add_argument("--heldout", type=int, default=None, help="only the first N held-out problems")
    ap.add_argument("--samples", type=int, default=4, help="sampled evaluations per problem (avg@k)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--all-completions", action="store_true",
                    help="analyse every sampled completion, not only those that end with EOS (the papers')")
    ex = start_example(ap)
    args, model = ex.args, ex.model
    layer = model.cfg.n_layers - 1
    by_seed = single_layer_seeds(args.runs, [layer])
    task = load_task("arithmetic:add1")
    heldout = list(task.test)[: args.heldout]
    prompts = task.prompts(model, list(task.train)[: args.problems])
    held_prompts = task.prompts(model, heldout)
    out = ex.out / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    dtype = str(model.cfg.dtype).removeprefix("torch.")
    kw = dict(problems=heldout, samples=args.samples, max_new_tokens=args.max_new_tokens)
    operand_ids = first_token_ids(model, [first_operand(p) for p in heldout])
    to_ids = first_token_ids(model, ["To"] * len(heldout))

    def rows(result, train_seed: int):
        d = result.details().rename(columns={"seed": "sample_seed"}).assign(train_seed=train_seed, dtype=dtype)
        d["correct"] = d["correct"].astype(int)
        return d.drop(columns=["completion"], errors="ignore")

    base_file = out / "heldout-base.csv"
    if not base_file.exists():  # the arms without a vector, once for every seed
        res = evaluate(model, task, {"base": None}, **kw)
        for label, prefix in (("base + first operand", first_operand), ("base + To", "To")):
            res.rows += evaluate(model, task.with_assistant_prefix(prefix, label), {label: None}, **kw).rows
        write_csv(rows(res, -1), base_file)
    firsts = []
    for seed, runs in by_seed.items():
        shift_file, held_file = out / f"token_shift-seed{seed}.csv", out / f"heldout-seed{seed}.csv"
        if shift_file.exists() and held_file.exists():
            continue
        vec = si.SteeringSet.load(runs[layer].vectors_path(), model=model)
        rollouts = si.generate(model, prompts, steering=vec, max_new_tokens=args.max_new_tokens, temperature=1.0,
                               seed=seed)
        keep = torch.arange(len(rollouts.texts)) if args.all_completions else rollouts.finished.nonzero()[:, 0]
        batch = A.as_batch(rollouts).rows(keep)  # the papers keep the completions that end with EOS
        shift = A.token_shift(model, batch, vec, track=["To"])
        frame = shift.to_frame().assign(train_seed=seed, dtype=dtype)
        res = evaluate(model, task, {"steered": vec}, **kw)
        firsts += [{"train_seed": seed, "token": name, "p_first_base": A.first_token_prob(model, held_prompts, ids),
                    "p_first_steered": A.first_token_prob(model, held_prompts, ids, vec)}
                   for name, ids in (("first operand", operand_ids), ("To", to_ids))]
        write_csv(frame, shift_file)
        write_csv(rows(res, seed), held_file)
        first = frame[frame["pos"] == 0]["kl"].mean() / frame[frame["pos"] > 0]["kl"].mean()
        print(f"seed {seed}: {len(batch)} finished completions, mean KL at position 0 / later {first:.1f}; "
              f"held-out steered greedy {res.accuracy('steered'):.1%}", flush=True)
    first_file = out / "first_token_probs.csv"
    if firsts:
        old = pd.read_csv(first_file) if first_file.exists() else pd.DataFrame()
        write_csv(pd.concat([old, pd.DataFrame(firsts)], ignore_index=True), first_file)
    (out / "info.json").write_text(json.dumps({
        "task": "arithmetic:add1", "layer": layer, "training_seeds": sorted(by_seed), "problems": args.problems,
        "heldout": len(heldout), "samples": args.samples, "max_new_tokens": args.max_new_tokens,
        "torch": torch.__version__,
        "rollouts": "one completion per training problem, T = 1, seed = the training seed; "
                    + ("all kept" if args.all_completions else "EOS-ended ones kept"),
        "prefixes": "written at the start of the base model's answer; evaluated once (no vector involved)"},
        indent=1))


if __name__ == "__main__":
    main()
