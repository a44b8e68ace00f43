"""Verifiable rewards for math answers.

* ``boxed_reward``: the papers' check. The last ``\\boxed{...}`` of the completion against the reference
  with math-verify (numbers, thousands separators, fractions vs decimals, LaTeX). +1 / -1 (or 1 / 0).
* ``last_number_reward``: a lenient check for small models that rarely box their answers: "the answer is
  N" if present, else the last number of the completion, compared numerically; optional format bonus.

Both are safe on hostile completions: the text is only scanned (never executed or ``eval`` ed), only
LaTeX parsing is used (no Python-expression parsing), inputs to math-verify are bounded in length,
and huge numbers or exponent towers are compared as strings instead of being evaluated.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_SCAN_CHARS = 20_000  # only the tail of a completion is searched
MAX_ANSWER_CHARS = 200  # a boxed answer longer than this is compared as a string
MAX_DIGITS = 40  # longer digit runs are compared as strings, never evaluated
MAX_POWERS = 2  # more '^' than this (towers) are compared as strings

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*\$?\\?\(?\s*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)", re.IGNORECASE)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; None if absent/unclosed."""
    text = text[-MAX_SCAN_CHARS:]
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def extract_last_number(text: str) -> str | None:
    """``"the answer is N"`` if stated (the last such), else the last number in the text."""
    text = text[-MAX_SCAN_CHARS:]
    stated = _ANSWER_IS.findall(text)
    if stated:
        return stated[-1]
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def parse_number(s: str) -> Fraction | None:
    """A plain number (``1,234``, ``-3.5``, ``7/2``) as an exact Fraction; None otherwise or if huge."""
    s = s.strip().rstrip(".").replace(",", "").replace("$", "").replace("\\!", "")
    if len(re.sub(r"\D", "", s)) > MAX_DIGITS:
        return None
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)(/\d+)?", s):
        return None
    try:
        num, _, den = s.partition("/")
        value = Fraction(num)
        if den:
            if int(den) == 0:
                return None
            value /= int(den)
        return value
    except (ValueError, ZeroDivisionError):
        return None


def reference_answer(answer: str) -> str:
    """The final answer of a GSM8K-style solution (after ``####``), else the text itself."""
    return answer.split("####")[-1].strip() if "####" in answer else answer.strip()


def _normalise(s: str) -> str:
    return re.sub(r"\s+|\\[,;!: ]|\\left|\\right|\$", "", s).replace("dfrac", "frac").replace("tfrac", "frac")


def _too_hostile(s: str) -> bool:
    return (
        len(s) > MAX_ANSWER_CHARS
        or any(len(run) > MAX_DIGITS for run in re.findall(r"\d+", s))
        or s.count("^") + s.count("**") > MAX_POWERS
    )


def answers_match(predicted: str, reference: str, timeout_s: int = 3) -> bool:
    """Whether two answer strings denote the same value (numbers exactly, LaTeX through math-verify)."""
    predicted, reference = predicted.strip(), reference.strip()
    if not predicted:
        return False
    a, b = parse_number(predicted), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    if _normalise(predicted) == _normalise(reference):
        return True
    if _too_hostile(predicted) or _too_hostile(reference):
        return False
    return _math_verify(predicted, reference, timeout_s)


def _math_verify(predicted: str, reference: str, timeout_s: int) -> bool:
    import threading

    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    # math-verify bounds its own time with signals, which only work in the main thread
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"$\\boxed{{{reference}}}$", extraction_config=config, parsing_timeout=timeout)
        pred = parse(f"$\\boxed{{{predicted}}}$", extraction_config=config, parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - an unparsable answer is a wrong answer
        return False


def _score(ok: bool, zero_one: bool) -> float:
    return 1.0 if ok else (0.0 if zero_one else -1.0)


def boxed_reward(completion: str, reference: str, *, zero_one: bool = False) -> float:
    """+1 if the last ``\\boxed{}`` of the completion equals the reference, else -1 (0 with ``zero_one``)."""
    boxed = extract_boxed(completion)
    return _score(boxed is not None and answers_match(boxed, reference_answer(reference)), zero_one)


def last_number_reward(
    completion: str, reference: str, *, zero_one: bool = False, format_bonus: float = 0.0
) -> float:
    """Lenient: a boxed answer if present, else "answer is N", else the last number, against the reference.

    ``format_bonus`` is added when the completion writes ``\\boxed{...}`` (whether right or wrong).
    """
    boxed = extract_boxed(completion)
    candidate = boxed if boxed is not None else extract_last_number(completion)
    ok = candidate is not None and answers_match(candidate, reference_answer(reference))
    return _score(ok, zero_one) + (format_bonus if boxed is not None else 0.0)


VERIFIERS = {"boxed": boxed_reward, "last_number": last_number_reward}
