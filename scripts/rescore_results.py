"""Re-score the committed results files that store completions with the task's current verifier.

A results CSV that keeps each completion beside its ``correct`` flag can be re-scored offline when the verifier
is fixed (e.g. "the answer is 3 + 3 + 4 = 12" once read as 3). Every such file is declared in ``SCORED`` with
the task whose problems its ``problem`` column names; a CSV under ``examples/*/results`` that has ``completion``
and ``correct`` columns but is not declared is an error, so a new one cannot slip past.

    python scripts/rescore_results.py            # rewrite the ``correct`` flags that disagree, list what changed
    python scripts/rescore_results.py --check    # exit 1 if any flag disagrees with the verifier

Re-scored files change the numbers rendered from them: run ``python scripts/render_tables.py`` afterwards.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"

# results file (relative to examples/) -> the task whose problems (ids or question texts) fill its ``problem`` column
SCORED = {
    "rl_arithmetic/results/add1-all81-eval.csv": "arithmetic:add1",
    "rl_arithmetic/results/add1-answer-formats.csv": "arithmetic:add1",
    "rl_arithmetic/results/add1-bfloat16-heldout.csv": "arithmetic:add1",
    "diffsae/results/add1-generations.csv": "arithmetic:add1",
    **{f"diffsae/results/seeds/seed{s}/add1-generations.csv": "arithmetic:add1" for s in range(3)},
    **{f"penultimate_patching/results/seeds/patched_accuracy-seed{s}.csv": "arithmetic:add1" for s in range(3)},
    "multistep/results/heldout/base.csv": "multistep:word_addsub",
    "multistep/results/heldout/all-seed0.csv": "multistep:word_addsub",
    "multistep/results/heldout/all-seed1.csv": "multistep:word_addsub",
    "multistep/results/heldout/all-seed2.csv": "multistep:word_addsub",
}
TRUE = {"True", "true", "1", "1.0"}


@dataclass
class Disagreement:
    path: str
    line: int  # the CSV record number (header = 1; a record may span lines)
    problem: str
    stored: bool
    verifier: bool
    completion: str

    def __str__(self) -> str:
        return (f"{self.path} record {self.line} ({self.problem}): stored {self.stored}, verifier {self.verifier}: "
                f"{self.completion[-80:]!r}")


def undeclared() -> list[str]:
    """Results CSVs holding completions and correctness flags that ``SCORED`` does not name."""
    out = []
    for path in sorted(EX.glob("*/results/**/*.csv")):
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        rel = path.relative_to(EX).as_posix()
        if {"completion", "correct"} <= set(header) and rel not in SCORED:
            out.append(rel)
    return out


def read(rel: str) -> tuple[list[str], list[dict]]:
    with open(EX / rel, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def disagreements(rel: str, task_name: str) -> list[Disagreement]:
    """Rows whose stored ``correct`` differs from ``task.is_correct(completion, problem)``."""
    from steerinterp.tasks import load_task

    task = load_task(task_name)
    problems = {key: p for p in [*task.train, *task.test] for key in (p.id, p.question)}  # files name either
    _, rows = read(rel)
    out = []
    for i, row in enumerate(rows, start=2):
        if row["problem"] not in problems:
            raise SystemExit(f"{rel} record {i}: problem {row['problem']!r} is not in {task_name}; fix SCORED")
        ok = task.is_correct(row["completion"], problems[row["problem"]])
        if ok != (row["correct"] in TRUE):
            out.append(Disagreement(rel, i, row["problem"], row["correct"] in TRUE, ok, row["completion"]))
    return out


def rewrite(rel: str, found: list[Disagreement]) -> None:
    """Set the ``correct`` flags of ``found`` to the verifier's, keeping the file's spelling of booleans."""
    fields, rows = read(rel)
    for d in found:
        row = rows[d.line - 2]
        row["correct"] = {"True": str(d.verifier), "False": str(d.verifier)}.get(row["correct"], str(int(d.verifier)))
    tmp = (EX / rel).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(EX / rel)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report; exit 1 on any disagreement")
    args = ap.parse_args(argv)
    csv.field_size_limit(sys.maxsize)
    missing = undeclared()
    if missing:
        print("results files with completions that SCORED does not declare: " + ", ".join(missing), file=sys.stderr)
        return 1
    found = {rel: disagreements(rel, task) for rel, task in SCORED.items()}
    for rel, ds in found.items():
        print(f"{rel}: {len(ds)} flag(s) disagree with the verifier")
        for d in ds:
            print(f"  {d}")
        if ds and not args.check:
            rewrite(rel, ds)
    return 1 if args.check and any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
