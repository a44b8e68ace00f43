"""Verifiable rewards for math answers.

* ``boxed_reward``: the papers' check. The last ``\\boxed{...}`` of the completion against the reference
  with math-verify (numbers, thousands separators, fractions vs decimals, LaTeX). +1 / -1 (or 1 / 0).
* ``last_number_reward``: a lenient check for small models that rarely box their answers: "the answer is
  N" if present, else the last number of the completion, compared numerically; optional format bonus.

Both are bounded in time by construction, in any thread, with no signal or alarm:

* only the last ``MAX_SCAN_CHARS`` of a completion are read, in one pass (the boxed answer with a brace
  stack, numbers with regular expressions that cannot backtrack);
* plain numbers are compared exactly as Fractions (at most ``MAX_DIGITS`` digits);
* an answer reaches math-verify (LaTeX -> sympy) only through a gate, ``_cheap``, that admits a small
  allow-list of LaTeX (digits, one-letter variables such as ``x`` or ``x_1``, ``+ - * /``, ``\\frac``,
  ``\\sqrt``, ``\\pi``, ``\\cdot``, ``\\times``, ``\\div``, ``\\infty``, ``%``, ``^\\circ``, brackets,
  ``\\text{word}``, lists of numbers) with bounded length, digits, nesting, roots, variables and powers
  (literal exponents only, no towers): the ``MAX_`` constants below. Factorials, binomials, Gamma, sums,
  products, integrals, limits, functions, relations, matrices and every other construct are compared as
  normalised strings, so nothing is evaluated whose cost the completion can raise. An assignment
  ``x = ...`` is unwrapped first, and "1 and 2" read as a list, as math-verify does.

Nothing in a completion is executed: math-verify is called with its LaTeX extraction only (its
``ExprExtractionConfig``, which parses Python expressions, is never used), and the gate admits no
character that is not in its allow-list. math-verify runs under one lock, since ANTLR's Python runtime
and sympy's cache are shared between threads without locking.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

MAX_SCAN_CHARS = 20_000  # only the tail of a completion is searched
MAX_ANSWER_CHARS = 48  # a longer answer is compared as a normalised string
MAX_DIGITS = 40  # more digits (in a plain number, or in all of a LaTeX answer) are compared as strings
MAX_POWERS = 2  # more '^' than this are compared as strings
MAX_EXPONENT = 100  # an exponent is a literal integer of at most this size, or one letter
MAX_DEGREE = 6  # product of the exponents unless the answer is all rational numbers (bounds any expansion)
MAX_VALUE_DIGITS = 2_000  # digits x product of exponents: a bound on the size of any number evaluated
MAX_NESTING = 3  # brackets and braces nested deeper are compared as strings
MAX_ROOTS = 2  # square roots and n-th roots (n < 10)
MAX_VARIABLES = 2  # distinct letters

_NUMBER = re.compile(r"-?\d[\d,]*+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# possessive quantifiers: "answer is" followed by a long run of spaces is one linear scan. A stated answer
# written as a sum ("the answer is 3 + 4 = 7", "Answer: 3 * 6 equals 18") is read as the number after its '='
# or "equals": the second group, after a chain of operators and numbers that cannot backtrack.
_PLAIN = r"-?\d[\d,]*+(?:\.\d+)?(?:/\d+)?"
_ANSWER_IS = re.compile(rf"answer\s*+(?:is|:|=)\s*+\$?\\?\(?\s*+({_PLAIN})"
                        rf"(?:(?:\s*+[-+*x\u00d7\u00f7]\s*+{_PLAIN})++\s*+(?:=|equals)\s*+({_PLAIN}))?", re.IGNORECASE)
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*+\{")
_BRACE = re.compile(r"[{}]")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; None if absent/unclosed.

    One pass over the tail of the text with a stack of open braces: linear in its length, however many
    boxes are left unclosed."""
    text = text[-MAX_SCAN_CHARS:]
    box_starts = {m.end() - 1 for m in _BOX_OPEN.finditer(text)}  # positions of the boxes' own '{'
    if not box_starts:
        return None
    stack: list[int] = []
    last: tuple[int, int] | None = None  # (start, end) of the closed box that opened last
    for m in _BRACE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            opened = stack.pop()
            if opened in box_starts and (last is None or opened > last[0]):
                last = (opened, i)
    return None if last is None else text[last[0] + 1 : last[1]].strip()


def extract_last_number(text: str) -> str | None:
    """``"the answer is N"`` if stated (the last such), else the last number in the text.

    A stated answer written as a computation (``"the answer is 3 + 4 = 7"``) gives its result (7)."""
    text = text[-MAX_SCAN_CHARS:]
    stated = _ANSWER_IS.findall(text)
    if stated:
        first, result = stated[-1]
        return result or first
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
    s = re.sub(r"(\\\\)|\s+|\\[,;!: ]|\\left|\\right|\$", lambda m: m[1] or "", s)  # a \\ row break stays
    return s.replace("dfrac", "frac").replace("tfrac", "frac").replace("\\geq", "\\ge").replace("\\leq", "\\le")


# --- the gate: which answers math-verify may see -------------------------------------------------------

_TEXT = re.compile(r"\\(?:text|textrm|mathrm|mbox)\{[A-Za-z ()]{0,24}\}")  # a unit, a word, a choice (A): an atom
_NEUTRAL = re.compile(r"\\(?:left|right|q?quad|displaystyle)(?![A-Za-z])|\\[,;:! ]|\s")
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[\s\S]")
_COMMANDS = frozenset({"\\frac", "\\dfrac", "\\tfrac", "\\sqrt", "\\pi", "\\cdot", "\\times", "\\div", "\\infty",
                       "\\circ", "\\%", "\\$", "\\{", "\\}"})
_CHARS = frozenset("0123456789+-*/()[]{}^_.,%") | frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OPEN, _CLOSE = frozenset({"{", "(", "[", "\\{"}), frozenset({"}", ")", "]", "\\}"})
_LITERAL_EXPONENT = re.compile(r"-?\d{1,3}")
_LETTER_EXPONENT = re.compile(r"-?[A-Za-z]")
_SUBSCRIPT = re.compile(r"\d{1,2}|[A-Za-z]")
_NOT_A_LETTER_SUBSCRIPT = re.compile(r"(?<![A-Za-z])_")
_AND_OR = re.compile(r",?\s*(?:\\text\{\s*(?:and|or)\s*\}|(?<![a-zA-Z])(?:and|or)(?![a-zA-Z]))")  # a list's commas


def _group(tokens: list[str], i: int, close: str) -> tuple[str, int]:
    """The tokens after ``tokens[i]`` (an opening ``{`` or ``[``) up to its ``close``, and the index after it."""
    depth, j = 1, i + 1
    while j < len(tokens):
        if tokens[j] == tokens[i]:
            depth += 1
        elif tokens[j] == close:
            depth -= 1
            if depth == 0:
                return "".join(tokens[i + 1 : j]), j + 1
        j += 1
    return "\\unclosed", j  # not an allowed exponent / root index


def _cheap(answer: str) -> bool:
    """Whether math-verify may parse and compare ``answer``: only constructs whose cost is bounded by the
    limits above (no factorial, binomial, Gamma, sum, integral, limit, function, relation or tower)."""
    if len(answer) > MAX_ANSWER_CHARS or not answer.isascii() or "**" in answer or "sqrt" in answer.replace("\\sqrt", ""):
        return False
    if "E" in answer or _AND_OR.search(answer) or _NOT_A_LETTER_SUBSCRIPT.search(answer):
        return False  # 1E999999 (a float's exponent written out); "a and b" (a list); (n)_{k} (made a factorial)
    if not re.search(r"[0-9A-Za-z]", _NEUTRAL.sub("", answer)):  # no number, variable or word: nothing to compare
        return False
    tokens = _TOKEN.findall(_NEUTRAL.sub("", _TEXT.sub("", answer)))
    depth, powers, roots, exponents_product = 0, 0, 0, 1
    letters: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok not in _COMMANDS and tok not in _CHARS:
            return False
        if tok in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif tok in _CLOSE:
            depth -= 1
            if depth < 0:
                return False
        elif tok.isalpha():
            letters.add(tok)
        elif tok == "^":
            powers += 1
            if powers > MAX_POWERS or i + 1 == len(tokens):
                return False
            exponent, i = _group(tokens, i + 1, "}") if tokens[i + 1] == "{" else (tokens[i + 1], i + 2)
            if _LITERAL_EXPONENT.fullmatch(exponent) and abs(int(exponent)) <= MAX_EXPONENT:
                exponents_product *= max(1, abs(int(exponent)))
            elif not (_LETTER_EXPONENT.fullmatch(exponent) or exponent == "\\circ"):
                return False
            if exponent != "\\circ":
                letters.update(c for c in exponent if c.isalpha())
            if i < len(tokens) and tokens[i] == "^":  # a^b^c: no towers, whichever way a parser groups them
                return False
            continue
        elif tok == "_":  # x_1, x_{12}, a_n: a variable's name
            if i == 0 or not tokens[i - 1].isalpha() or i + 1 == len(tokens):
                return False
            index, i = _group(tokens, i + 1, "}") if tokens[i + 1] == "{" else (tokens[i + 1], i + 2)
            if not _SUBSCRIPT.fullmatch(index):
                return False
            continue
        elif tok == "\\sqrt":
            roots += 1
            if roots > MAX_ROOTS:
                return False
            if i + 1 < len(tokens) and tokens[i + 1] == "[":
                index, i = _group(tokens, i + 1, "]")
                if not (len(index) == 1 and index in "23456789"):
                    return False
                continue
        i += 1
    digits = sum(c.isdigit() for c in answer)
    return (
        depth == 0
        and digits <= MAX_DIGITS
        and len(letters) <= MAX_VARIABLES
        and not (letters and "," in tokens)  # lists, sets, tuples and intervals only of numbers: no pairing of symbolic terms
        and digits * exponents_product <= MAX_VALUE_DIGITS
        and (exponents_product <= MAX_DEGREE or not (letters or "\\pi" in tokens or roots))  # expansions stay small
    )


_ASSIGNMENT = re.compile(r"([A-Za-z])\s*=([^=]*)")
_RELATION = re.compile(r"[<>!]|\\(?:[lg]eq?|neq?|[lg]t|approx|sim|equiv|leqslant|geqslant)(?![A-Za-z])")


def answers_match(predicted: str, reference: str, timeout_s: int = 3) -> bool:
    """Whether two answer strings denote the same value (numbers exactly, LaTeX through math-verify).

    Bounded in time in any thread: plain numbers are compared as Fractions, answers the gate ``_cheap``
    admits through math-verify (no alarm), everything else as normalised strings (see the module's
    docstring). ``timeout_s`` is accepted for compatibility and not used: the gate is the bound.
    """
    predicted, reference = predicted.strip(), reference.strip()
    if not predicted:
        return False
    if _normalise(predicted) == _normalise(reference):
        return True
    # relations: as math-verify, "x = 5" against "5" compares the right-hand side; two assignments
    # compare right-hand sides when their variable is the same; any other relation only as a string
    pred_eq, ref_eq = "=" in predicted, "=" in reference
    if pred_eq and not ref_eq and not _RELATION.search(predicted):
        predicted = predicted.rsplit("=", 1)[1].strip()
    elif ref_eq:
        ref_m, pred_m = _ASSIGNMENT.fullmatch(reference), _ASSIGNMENT.fullmatch(predicted) if pred_eq else None
        if ref_m is None or (pred_eq and (pred_m is None or pred_m[1] != ref_m[1])):
            return False
        reference, predicted = ref_m[2].strip(), (pred_m[2].strip() if pred_m else predicted)
    return _values_match(predicted, reference)


def _values_match(predicted: str, reference: str) -> bool:
    if not predicted or not reference:
        return False
    a, b = parse_number(predicted), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    if _normalise(predicted) == _normalise(reference):
        return True
    if max(len(predicted), len(reference)) > 2 * MAX_ANSWER_CHARS:  # the gate's business, before any other regex
        return False
    predicted, reference = _AND_OR.sub(",", predicted), _AND_OR.sub(",", reference)  # "1 and 2" is a list, as in math-verify
    if not (_cheap(predicted) and _cheap(reference)):
        return False
    return _math_verify(predicted, reference)


_MATH_VERIFY_LOCK = threading.Lock()


class _NoTimeoutWarning(logging.Filter):
    """math-verify warns once that it runs without its signal-based timeout: here the gate is the bound."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutWarning())


def _math_verify(predicted: str, reference: str) -> bool:
    """math-verify's comparison of two answers that passed ``_cheap`` (LaTeX extraction only), with no
    timeout and so no signal: the gate bounds the work, and it runs the same in any thread. (math-verify
    keeps its own small cache of parsed LaTeX, so a reference is not parsed again for every sample.)"""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    with _MATH_VERIFY_LOCK:
        try:
            gold = parse(f"$\\boxed{{{reference}}}$", extraction_config=config, parsing_timeout=None)
            pred = parse(f"$\\boxed{{{predicted}}}$", extraction_config=config, parsing_timeout=None)
            return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - an unparsable or incomparable answer is a wrong answer
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
