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


def arithmetic_task(level: str = "add1", *, n_test: int = 64, seed: int = 0, verifier: str = "last_number",
                    format_bonus: float = 0.0, user_template: str = ARITHMETIC_TEMPLATE) -> Task:
    """All problems of a level, split into disjoint train / test sets by a seeded shuffle.

    ``n_test`` is capped at half the level's problem count (add1 has 81 problems: 40 test, 41 train),
    so test problems are never seen in training.
    """
    if level not in LEVELS:
        raise SteerInterpError(f"unknown arithmetic level {level!r}; choose one of {', '.join(LEVELS)}")
    operands, op, fn = LEVELS[level]
    problems = [
        Problem(question=f"What is {a} {op} {b}?", answer=str(fn(a, b)), id=f"{level}:{a}{op}{b}")
        for a in operands
        for b in operands
    ]
    random.Random(seed).shuffle(problems)
    n_test = min(n_test, len(problems) // 2)
    return Task(
        name=f"arithmetic:{level}",
        train=problems[n_test:],
        test=problems[:n_test],
        verifier=verifier,
        system_prompt=None,
        user_template=user_template,
        format_bonus=format_bonus,
        info={"level": level, "seed": seed},
    )
