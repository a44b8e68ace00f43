"""Multi-step arithmetic, where the opening and the process matter: a task family for the papers' claims.

Single-digit addition (``arithmetic:add1``) is answered in one line, so it rewards format and brevity and
leaves no room for the papers' first-token ("To", "Step") and process-word effects. These levels need two
operations; the model is told to think step by step and to finish with an ``Answer: N`` line, and is
given 128-256 new tokens. The lenient verifier reads the last ``Answer: N`` (else the last number).

Levels (each problem's id names its operands):

* ``add3``: "What is 5 + 7 + 8?" (three single digits);
* ``add3_guided``: ``add3`` with the steps in the question: "What is 5 + 7 + 8? First add 5 and 7, then add 8
  to the result.";
* ``addsub``: "What is 6 + 7 - 9?" (single digits, never negative);
* ``word_addsub``: "Mia has 6 apples. She gets 7 more, then gives 9 away. How many ..." (a + b - c);
* ``word2``: "Mia has 7 pencils. She buys 3 boxes with 6 pencils in each. How many ..." (a + b x c);
* ``mixed``: "What is 7 * 6 + 13?" (a x b + c);
* ``mul2``: "What is 27 * 6?" (a two-digit times a one-digit number).

None reaches the 10-60% base accuracy at temperature 1 that RL needs on the embedded 135M model (all at most
about 8%; examples/multistep/README.md): its sampled step-by-step completions lose the thread.

Train and test are disjoint *including commuted twins*: problems that differ only by the order of the
terms of a sum or the factors of a product (``b x c`` and ``c x b``; any order of ``a + b + c``) share a
group, and a group goes wholly to one split.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from steerinterp.errors import SteerInterpError
from steerinterp.tasks.base import Problem, Task

MULTISTEP_SYSTEM_PROMPT = (
    "Think step by step. Show your working, then finish with a final line of the form 'Answer: N'."
)

_NAMES = [("Mia", "She", "she"), ("Tom", "He", "he"), ("Ana", "She", "she"), ("Leo", "He", "he")]
_ITEMS = [("pencils", "boxes"), ("apples", "bags"), ("stickers", "packs"), ("marbles", "jars")]


def _word2() -> list[tuple[str, str, int, str]]:
    """(question, id, answer, twin group) for a + b x c word problems."""
    out = []
    for a in range(2, 21):
        for b in range(2, 10):
            for c in range(2, 10):
                name, pron, pron_low = _NAMES[(a + b + c) % len(_NAMES)]
                item, box = _ITEMS[(a * b + c) % len(_ITEMS)]
                q = (f"{name} has {a} {item}. {pron} buys {b} {box} with {c} {item} in each. "
                     f"How many {item} does {pron_low} have now?")
                out.append((q, f"word2:{a}+{b}x{c}", a + b * c, f"{a}|{min(b, c)}x{max(b, c)}"))
    return out


def _add3() -> list[tuple[str, str, int, str]]:
    """a + b + c with single digits; the twin group is the multiset {a, b, c} (any order is the same sum)."""
    return [(f"What is {a} + {b} + {c}?", f"add3:{a}+{b}+{c}", a + b + c, "+".join(map(str, sorted((a, b, c)))))
            for a in range(1, 10) for b in range(1, 10) for c in range(1, 10)]


def _add3_guided() -> list[tuple[str, str, int, str]]:
    """``add3`` with its two steps spelled out in the question ("First add a and b, then add c to the result");
    the twin group is the multiset {a, b, c}, as in ``add3``."""
    return [(f"What is {a} + {b} + {c}? First add {a} and {b}, then add {c} to the result.",
             f"add3_guided:{a}+{b}+{c}", a + b + c, "+".join(map(str, sorted((a, b, c)))))
            for a in range(1, 10) for b in range(1, 10) for c in range(1, 10)]


def _addsub() -> list[tuple[str, str, int, str]]:
    """a + b - c with single digits, never negative; twins swap a and b."""
    return [(f"What is {a} + {b} - {c}?", f"addsub:{a}+{b}-{c}", a + b - c, f"{min(a, b)}+{max(a, b)}|{c}")
            for a in range(1, 10) for b in range(1, 10) for c in range(1, 10) if a + b >= c]


def _word_addsub() -> list[tuple[str, str, int, str]]:
    """Two steps in words: a, then b more, then c fewer (a + b - c), single digits, never negative."""
    out = []
    for a in range(2, 10):
        for b in range(1, 10):
            for c in range(1, min(a + b, 10)):
                name, pron, _ = _NAMES[(a + b + c) % len(_NAMES)]
                item, _ = _ITEMS[(a * b + c) % len(_ITEMS)]
                q = f"{name} has {a} {item}. {pron} gets {b} more, then gives {c} away. How many {item} are left?"
                out.append((q, f"word_addsub:{a}+{b}-{c}", a + b - c, f"{min(a, b)}+{max(a, b)}|{c}"))
    return out


def _mixed() -> list[tuple[str, str, int, str]]:
    return [(f"What is {a} * {b} + {c}?", f"mixed:{a}x{b}+{c}", a * b + c, f"{min(a, b)}x{max(a, b)}|{c}")
            for a in range(2, 10) for b in range(2, 10) for c in range(11, 30)]


def _mul2() -> list[tuple[str, str, int, str]]:
    return [(f"What is {a} * {b}?", f"mul2:{a}x{b}", a * b, f"{a}x{b}") for a in range(11, 100) for b in range(3, 10)]


LEVELS: dict[str, Callable[[], list[tuple[str, str, int, str]]]] = {
    "add3": _add3, "add3_guided": _add3_guided, "addsub": _addsub, "word_addsub": _word_addsub, "word2": _word2,
    "mixed": _mixed, "mul2": _mul2}


def multistep_task(level: str = "word2", *, n_test: int = 128, seed: int = 0, verifier: str = "last_number",
                   system_prompt: str | None = MULTISTEP_SYSTEM_PROMPT) -> Task:
    """A multi-step arithmetic level with a seeded split that keeps commuted twins on one side.

    Args:
        n_test: held-out problems (at least 100 recommended for 95% intervals of about +/-10 points);
            whole twin groups are moved, so the test set has ``n_test`` problems or one more.
    """
    if level not in LEVELS:
        raise SteerInterpError(f"unknown multistep level {level!r}; choose one of {', '.join(LEVELS)}")
    rows = LEVELS[level]()
    groups: dict[str, list[Problem]] = {}
    for question, pid, answer, group in rows:
        groups.setdefault(group, []).append(Problem(question=question, answer=str(answer), id=pid))
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if not 0 < n_test < len(rows) // 2:
        raise SteerInterpError(f"n_test={n_test} for {len(rows)} {level} problems; use 1 to {len(rows) // 2 - 1}")
    test: list[Problem] = []
    train: list[Problem] = []
    for key in keys:
        (test if len(test) < n_test else train).extend(groups[key])
    random.Random(seed + 1).shuffle(train)
    return Task(
        name=f"multistep:{level}",
        train=train,
        test=test,
        verifier=verifier,
        system_prompt=system_prompt,
        user_template="{question}",
        info={"level": level, "seed": seed, "split": "disjoint (twins grouped)", "max_new_tokens": 256},
        spec=f"multistep:{level}",
    )
