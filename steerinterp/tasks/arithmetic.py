"""Seeded synthetic arithmetic at difficulty levels the embedded 135M model can learn on a CPU.

Measured base rates of the embedded model (greedy / sampled at T=1, last number right):
``add1`` about 55% / 15-25%; ``add2`` about 35% / 5-10% (MODELS.md section 9).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from steerinterp.errors import SteerInterpError
from steerinterp.tasks.base import Problem, Task

ARITHMETIC_TEMPLATE = "{question} Answer with just the number."

# level -> (operand range, operator symbol, function)
LEVELS: dict[str, tuple[range, str, Callable[[int, int], int]]] = {
    "add1": (range(1, 10), "+", lambda a, b: a + b),  # single-digit addition (the papers' floor here)
    "add2": (range(10, 41), "+", lambda a, b: a + b),  # two-digit addition, small operands
    "add2_99": (range(10, 100), "+", lambda a, b: a + b),  # two-digit addition
    "sub2": (range(10, 100), "-", lambda a, b: a - b),  # two-digit subtraction (negatives possible)
    "mul1": (range(2, 10), "*", lambda a, b: a * b),  # single-digit multiplication
}


SPLITS = ("disjoint", "shared")


def arithmetic_task(level: str = "add1", *, n_test: int = 64, seed: int = 0, verifier: str = "last_number",
                    format_bonus: float = 0.0, user_template: str = ARITHMETIC_TEMPLATE,
                    split: str = "disjoint") -> Task:
    """All problems of a level, with a test set drawn by a seeded shuffle.

    Args:
        split: ``"disjoint"`` (default): train and test are disjoint, so test problems are never seen in
            training; ``n_test`` is capped at half the level's problem count (add1 has 81 problems:
            40 test, 41 train). ``"shared"``: the plain-PyTorch prototype's protocol (MODELS.md section 11):
            training draws from every problem of the level and the test set is ``n_test`` problems of the
            same space (capped at all of them), so it measures in-distribution accuracy, not
            generalisation to unseen problems. The task's name says ``/shared`` so results stay labelled.
    """
    if level not in LEVELS:
        raise SteerInterpError(f"unknown arithmetic level {level!r}; choose one of {', '.join(LEVELS)}")
    if split not in SPLITS:
        raise SteerInterpError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    operands, op, fn = LEVELS[level]
    problems = [
        Problem(question=f"What is {a} {op} {b}?", answer=str(fn(a, b)), id=f"{level}:{a}{op}{b}")
        for a in operands
        for b in operands
    ]
    random.Random(seed).shuffle(problems)
    if split == "shared":
        train, test = problems, problems[: min(n_test, len(problems))]
    else:
        n_test = min(n_test, len(problems) // 2)
        train, test = problems[n_test:], problems[:n_test]
    return Task(
        name=f"arithmetic:{level}" + ("/shared" if split == "shared" else ""),
        train=train,
        test=test,
        verifier=verifier,
        system_prompt=None,
        user_template=user_template,
        format_bonus=format_bonus,
        info={"level": level, "seed": seed, "split": split},
        spec=f"arithmetic:{level}" + (":shared" if split == "shared" else ""),
    )


COMMUTATIVE = {"+", "*"}


def commuted_twin_in_training(task: Task) -> dict[str, bool]:
    """Per test problem of an arithmetic task (ids ``"level:a+b"``): whether its commuted twin ``b + a`` is a
    training problem, so held-out results can be reported on the twin-free subset too (issue 18). The
    fixed ``"disjoint"`` split draws problems, not twin pairs, so add1's 40 test problems include 19 whose twin
    is trained on. Non-commutative operators (``-``) have no twins: every problem maps to False."""
    train = {p.id for p in task.train}
    out = {}
    for p in task.test:
        level, _, expr = p.id.partition(":")
        op = LEVELS[level][1] if level in LEVELS else None
        if op is None or expr.count(op) != 1:
            raise SteerInterpError(f"{p.id!r} is not an arithmetic problem id like 'add1:3+4'; give an arithmetic_task")
        a, b = expr.split(op)
        out[p.id] = op in COMMUTATIVE and a != b and f"{level}:{b}{op}{a}" in train
    return out
