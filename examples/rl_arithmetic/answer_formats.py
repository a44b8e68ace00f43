"""Which single-digit sums does the embedded model get wrong whatever the answer format, with and without
the RL-trained vectors? Forces the assistant's answer to start with a format ("8 + 1 =", "1 + 8 =",
"8 plus 1 equals", ...) and reads the number the model writes next (greedy), on all 81 add1 problems.

It explains the ceiling of both splits: the sums the vectors miss are arithmetic facts, not formatting
failures (with the vectors, 2 + 7 and 7 + 2 are wrong in every format; 3 + 9 and 8 + 1 only come out right
with the operands swapped, an order the policy never writes).

    python examples/rl_arithmetic/answer_formats.py --vectors examples/rl_arithmetic/results/vectors/add1-seed0
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import steerinterp as si
from steerinterp.app.examples import example_parser, start_example, write_csv
from steerinterp.tasks import arithmetic_task
from steerinterp.tasks.evaluation import evaluate


def operands(problem) -> tuple[str, str]:
    a, b = problem.question.removeprefix("What is ").rstrip("?").split(" + ")
    return a, b


FORMATS = {
    "a + b =": lambda p: "{} + {} =".format(*operands(p)),
    "b + a =": lambda p: "{1} + {0} =".format(*operands(p)),
    "a plus b equals": lambda p: "{} plus {} equals".format(*operands(p)),
    "The sum of a and b is": lambda p: "The sum of {} and {} is".format(*operands(p)),
    "The answer is": lambda p: "The answer is",
}


def main():
    ap = example_parser(__doc__, Path(__file__).parent)
    ap.add_argument("--vectors", default=str(Path(__file__).parent / "results" / "vectors" / "add1-seed0"))
    ex = start_example(ap)
    args, model = ex.args, ex.model
    vecs = si.SteeringSet.load(args.vectors, model=model)
    held_out = {p.id for p in arithmetic_task("add1").test}  # the disjoint split's 40 test problems
    everything = list(arithmetic_task("add1", split="shared").train)  # all 81
    frames = []
    for label, prefix in FORMATS.items():
        task = arithmetic_task("add1").with_assistant_prefix(prefix, label)
        ev = evaluate(model, task, {"base": None, "steered": vecs}, problems=everything, samples=0, max_new_tokens=4)
        frames.append(ev.details().assign(format=label))
    rows = pd.concat(frames, ignore_index=True)
    rows["held_out"] = rows["problem"].isin(held_out)
    write_csv(rows, Path(args.out) / "add1-answer-formats.csv")
    table, wrong_everywhere = summarise(rows)
    print(table.to_string(float_format=lambda x: f"{100 * x:.1f}%"))
    print("wrong in every format:", wrong_everywhere)


def summarise(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Accuracy per (format, variant) on all 81 and on the 40 held-out problems, the sums it got wrong,
    and per variant the sums wrong in every format."""
    rows = rows.assign(sum=rows["problem"].str.split(":").str[1])
    table = rows.groupby(["format", "variant"], sort=False).apply(
        lambda g: pd.Series({"all_81": g["correct"].mean(), "held_out_40": g.loc[g["held_out"], "correct"].mean(),
                             "wrong": " ".join(sorted(g.loc[~g["correct"], "sum"]))}),
        include_groups=False,
    )
    right_somewhere = rows.groupby(["variant", "sum"])["correct"].any()
    wrong_everywhere = {v: sorted(s[~s].index.get_level_values("sum")) for v, s in right_somewhere.groupby(level="variant")}
    return table, wrong_everywhere

if __name__ == "__main__":
    main()
