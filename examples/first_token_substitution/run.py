"""First-token substitution by a last-layer steering vector, and the papers' prefix control.

PAPER_NOTES section 4.4 and claims 7-8. A single vector at the last block (layer 29), RL-trained on
add1 (``steerinterp train --task arithmetic:add1 --layers 29 --lr 0.3 --steps 30``; a copy ships in
results/), is compared with the unsteered model on completions sampled from the steered model:
per-position distribution shifts, position 0 (the first generated token) against later ones. Then the
prefix control: start the base model's answer with the token the vector favours at position 0 (here the
problem's first operand) and with "To" (the papers' token), and measure how much of the vector's accuracy
gain that recovers.

``--task`` runs the same analysis on another task, e.g. the multi-step level whose vectors
``../multistep/train.py`` trains (``--task multistep:word_addsub --vectors ... --out ...``): the completion length
is then the task's (256 tokens), and the prefixes are the papers' "To" and "Step" and the token the vector
favours most at position 0 (the first operand is an arithmetic-only control).

    python examples/first_token_substitution/run.py
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

import steerinterp as si
from steerinterp import analysis as A
from steerinterp.app.examples import add_task_arguments, example_parser, example_task, start_example, write_csv
from steerinterp.app.figures import write_figure

HERE = Path(__file__).parent
VECTOR = HERE / "results" / "vector-layer29"


def first_operand(problem) -> str:
    """'What is 3 + 7?' -> '3'."""
    return problem.question.split("What is ")[1].split(" ")[0]


def single_token(model, text: str) -> bool:
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def main():
    ap = example_parser(__doc__, HERE)
    ap.add_argument("--vectors", default=str(VECTOR))
    ap.add_argument("--problems", type=int, default=41, help="training problems to sample completions for")
    ap.add_argument("--samples", type=int, default=4, help="sampled evaluations (avg@k) for the prefix control")
    add_task_arguments(ap)
    ap.add_argument("--heldout", type=int, default=None, help="only the first N held-out problems (a quick look)")
    ap.add_argument("--prefix-control", action=argparse.BooleanOptionalAction, default=True,
                    help="run the prefix control on the held-out problems (--no-prefix-control: the token shift only)")
    ap.add_argument("--all-completions", action="store_true",
                    help="analyse every sampled completion, not only those that end with EOS (the papers')")
    ex = start_example(ap)
    args, out, model = ex.args, ex.out, ex.model

    vec = si.SteeringSet.load(args.vectors, model=model)
    task, new_tokens = example_task(args)
    problems = list(task.train)[: args.problems]
    rollouts = si.generate(model, task.prompts(model, problems), steering=vec, max_new_tokens=new_tokens,
                           temperature=1.0, seed=0)
    # the papers keep completions that end with EOS
    keep = torch.arange(len(rollouts.texts)) if args.all_completions else rollouts.finished.nonzero()[:, 0]
    batch = A.as_batch(rollouts).rows(keep)

    papers = ["To"] if single_token(model, "To") else []  # a vocabulary without a one-token "To" tracks none
    shift = A.token_shift(model, batch, vec, track=papers)
    pos0 = shift.to_frame()[shift.to_frame()["pos"] == 0]
    top_token = pos0["dst"].value_counts().index[0]
    shift = A.token_shift(model, batch, vec, track=papers + [top_token] if top_token not in papers else papers)
    write_csv(shift.to_frame(), out / "token_shift.csv")
    summary = shift.summary()
    write_csv(summary, out / "token_shift_summary.csv")
    write_csv(shift.by_token("dst", top=10), out / "boosted_tokens.csv")
    write_csv(shift.by_token("transition", top=10), out / "transitions.csv")
    write_figure(shift.plot("positions"), out / "max_dp_by_position.html")
    write_figure(shift.plot("tokens", key="dst"), out / "max_dp_by_token.html")
    write_figure(shift.plot("tracked"), out / "tracked_tokens.html")
    print(f"{len(batch)} finished completions; most boosted token at pos 0: {top_token!r}")
    print(summary.to_string(index=False))

    lens = A.vector_logit_lens(model, vec, mode="norm", k=10)
    print("logit lens (through the final norm) of the vector, boosted:",
          [lens.vocab[i] for i in lens.top(model.cfg.n_layers - 1)])

    if not args.prefix_control:
        return
    # The papers' control prefixes every answer with the token the vector favours ("To"). On add1 the vector
    # favours the problem's first operand (answers become "a + b = c"), so that is the matching prefix there; on
    # other tasks the papers' "Step" and the token the vector favours most at position 0 stand beside "To".
    controls = {}
    if args.task.startswith("arithmetic"):
        prefixes = [("To", "To"), ("first operand", first_operand)]
    else:
        top = top_token.strip()
        prefixes = [("To", "To"), ("Step", "Step")] + ([(f"top token {top}", top)] if single_token(model, top) and top
                                                       and top not in ("To", "Step") else [])
    for label, prefix in prefixes:
        ctrl = A.prefix_control(model, task, vec, prefix=prefix, label=label, samples=args.samples,
                                max_new_tokens=new_tokens, problems=list(task.test)[: args.heldout])
        frame = ctrl.to_frame()
        tag = re.sub(r"\W+", "_", label).strip("_")
        write_csv(frame, out / f"prefix_control_{tag}.csv")
        write_figure(ctrl.plot(), out / f"prefix_control_{tag}.html")
        controls[label] = {"recovered_greedy": ctrl.recovered("greedy"), "recovered_sampled": ctrl.recovered("sampled"),
                           "p_first_base": ctrl.p_first_base, "p_first_steered": ctrl.p_first_steered,
                           "table": frame.to_dict("records")}
        print(f"prefix {label!r}: p(first token) base {ctrl.p_first_base:.3f} -> steered {ctrl.p_first_steered:.3f}; "
              f"gain recovered: greedy {ctrl.recovered('greedy'):.0%}, sampled {ctrl.recovered('sampled'):.0%}")
        print(frame.drop(columns=[c for c in frame.columns if c.endswith("std")]).to_string(index=False))
    (out / "prefix_control.json").write_text(json.dumps(controls, indent=2, default=float))


if __name__ == "__main__":
    main()
