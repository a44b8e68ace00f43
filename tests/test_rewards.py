import json
import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from steerinterp.tasks import VERIFIERS, Problem, Task
from steerinterp.tasks.verifiers import (
    answers_match,
    boxed_reward,
    extract_boxed,
    extract_last_number,
    last_number_reward,
    reference_answer,
)


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("so the answer is \\boxed{72}.", "72", 1.0),
        ("\\boxed{71}", "72", -1.0),
        ("first \\boxed{3} then \\boxed{72}", "72", 1.0),  # the last box counts
        ("\\boxed{72} wait no \\boxed{3}", "72", -1.0),
        ("\\boxed{1,234}", "1234", 1.0),  # thousands separator
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # fraction vs decimal
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),  # LaTeX through math-verify
        ("\\boxed{x^2+1}", "1+x^2", 1.0),
        ("The answer is 72", "72", -1.0),  # not boxed: wrong under the strict verifier
        ("\\boxed{72", "72", -1.0),  # unclosed
        ("", "72", -1.0),
        ("\\boxed{18}", "Natalia sold 48/2 = 24 clips in May.\n#### 18", 1.0),  # GSM8K reference
    ],
)
def test_boxed_reward(completion, reference, expected):
    assert boxed_reward(completion, reference) == expected


def test_zero_one_option():
    assert boxed_reward("\\boxed{5}", "5", zero_one=True) == 1.0
    assert boxed_reward("\\boxed{4}", "5", zero_one=True) == 0.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3 + 4 = 7", 1.0),
        ("The answer is 7.", 1.0),
        ("the answer is 7, since 3 + 4 = 7 and 12 - 5 = 7", 1.0),
        ("The answer is 8", -1.0),
        ("7 apples, and 2 more make 9", -1.0),  # the last number counts
        ("To solve this problem we add. \\boxed{7}", 1.0),
        ("no digits here", -1.0),
        ("7.0", 1.0),
    ],
)
def test_last_number_reward(completion, expected):
    assert last_number_reward(completion, "7") == expected


def test_format_bonus():
    assert last_number_reward("\\boxed{7}", "7", format_bonus=0.25) == 1.25
    assert last_number_reward("\\boxed{6}", "7", format_bonus=0.25) == -0.75
    assert last_number_reward("7", "7", format_bonus=0.25) == 1.0


def test_extractors():
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{{nested} braces}") == "{nested} braces"
    assert extract_boxed("\\boxed{unclosed {") is None
    assert extract_last_number("1, 2, and -3.5") == "-3.5"
    assert extract_last_number("costs 1,234 dollars") == "1,234"
    # a stated answer written as a computation is read as its result, not its first operand
    assert extract_last_number("So, the answer is 3 + 3 + 4 = 10.") == "10"
    assert extract_last_number("The final answer: 3 * 6 = 18.\n\nSo, 7 + 18") == "18"
    assert extract_last_number("the answer is 12.5 - 2.5 = 10 apples") == "10"
    assert extract_last_number("So answer: 40 + 24 equals 64.") == "64"
    assert extract_last_number("The answer is 8 + 9.") == "8"  # no '=': the stated number as before
    assert reference_answer("work\n#### 1,000") == "1,000"


@pytest.mark.parametrize(
    "hostile",
    [
        "\\boxed{" + "9" * 200_000 + "}",
        "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}",
        "\\boxed{9^9^9^9^9}",
        "\\boxed{" * 5000,
        "\\boxed{__import__('os').system('echo pwned')}",
        "\\boxed{eval(compile('1','x','eval'))}",
        "{" * 100_000 + "\\boxed{1}" + "}" * 100_000,
        "x" * 2_000_000,
        "\\boxed{\\frac{" + "1" * 5000 + "}{3}}",
    ],
)
@pytest.mark.timeout(120)  # a hang guard, not a speed claim: these take milliseconds
def test_hostile_completions_are_bounded_and_wrong(hostile):
    assert boxed_reward(hostile, "72") == -1.0
    assert last_number_reward(hostile, "72") == -1.0


def test_huge_numbers_compare_as_strings():
    big = "9" * 100
    assert answers_match(big, big)
    assert not answers_match(big, "9" * 99)


# --- bounded in time, in any thread (docs/rl.md, "Tasks and verifiers") ----------------------------------

CORPUS = json.loads((Path(__file__).parent / "data" / "hostile_answers.json").read_text())
HOSTILE = {e["name"]: "".join(text * times for text, times in e["parts"]) for e in CORPUS["hostile"]}
LEGIT = [  # (predicted, reference, same value)
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("1,234", "1234", True),
    ("-3.50", "-7/2", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{2}", "1.41", False),
    ("3\\pi", "\\pi\\cdot 3", True),
    ("x^2+1", "1+x^2", True),
    ("x^2+2", "1+x^2", False),
    ("50\\%", "50", True),
    ("x = 5", "5", True),
    ("5", "x=5", True),
    ("y = 3+2x", "y=2x+3", True),
    ("z = 3+2x", "y=2x+3", False),
    ("x \\ge 5", "5", False),
    ("10^{3}", "1000", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("90^\\circ", "90", True),
    ("\\text{(A)}", "A", True),
    ("x_1", "x_{1}", True),
    ("1 and 2", "1,2", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("x \\ge 5", "x\\geq 5", True),
    ("10\\text{ inches}", "10", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("\\binom{5}{2}", "10", False),  # binomials and factorials are compared as strings, never evaluated
]


def _score_both(text: str) -> tuple[float, float]:
    return boxed_reward(text, CORPUS["reference"]), last_number_reward(text, CORPUS["reference"])


@pytest.fixture
def math_verify_calls(monkeypatch):
    """Every text handed to math-verify's parse, the one door to sympy (the verifiers import it when called)."""
    import math_verify

    calls, real = [], math_verify.parse
    monkeypatch.setattr(math_verify, "parse", lambda text, *a, **k: calls.append(text) or real(text, *a, **k))
    return calls


def test_hostile_corpus_is_big_and_distinct():
    assert len(HOSTILE) >= 50 and len(set(HOSTILE.values())) == len(HOSTILE)


@pytest.mark.timeout(300)  # a hang guard, not a speed claim
def test_hostile_corpus_never_reaches_math_verify_in_any_thread(math_verify_calls):
    """Each hostile completion, through both verifiers, on the main thread and in worker threads: scored
    wrong, the same in every thread, and never handed to math-verify, so nothing in it is evaluated."""
    main = {name: _score_both(text) for name, text in HOSTILE.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = dict(zip(HOSTILE, pool.map(_score_both, HOSTILE.values())))
    assert threaded == main
    assert {name: r for name, r in main.items() if r != (-1.0, -1.0)} == {}
    assert math_verify_calls == []


@pytest.mark.timeout(300)
def test_admitted_answers_reach_math_verify_in_worker_threads(math_verify_calls):
    """The gate is not shut: answers at its limits do reach math-verify, and worker threads get the
    same answers as the main thread (no alarm that only works there)."""
    for answer in CORPUS["admitted"]:
        before = len(math_verify_calls)
        assert not answers_match(answer, "72")
        assert len(math_verify_calls) == before + 2, answer

    def check(case):
        return answers_match(case[0], case[1])

    main = [check(case) for case in LEGIT]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(check, LEGIT)) == main == [same for _, _, same in LEGIT]


EDGES = [  # (an answer at one of the gate's limits, the same one step beyond it)
    ("1" * 40, "1" * 41),  # digits
    ("1+" * 23 + "1", "1+" * 24 + "1"),  # length
    ("\\sqrt{2}+\\sqrt[3]{3}", "\\sqrt{2}+\\sqrt{3}+\\sqrt{5}"),  # roots
    ("\\frac{\\frac{\\frac{1}{2}}{3}}{4}", "\\frac{\\frac{\\frac{\\frac{1}{2}}{3}}{4}}{5}"),  # nesting
    ("x^{6}", "x^{7}"),  # degree, with a variable
    ("(1+\\pi)^{-6}", "(1+\\pi)^{-7}"),  # degree, with pi
    ("2^{100}", "2^{101}"),  # literal exponent
    ("(2^{10})^{10}", "2^{10^{10}}"),  # towers
    ("x+y", "x+y+z"),  # variables
    ("1,2,3", "x,1"),  # lists only of numbers
    ("x_1", "(1)_1"),  # subscripts only of a variable
]


@pytest.mark.parametrize("at_limit, beyond", EDGES)
def test_the_gate_stops_one_step_beyond_each_limit(math_verify_calls, at_limit, beyond):
    answers_match(at_limit, "y")
    assert len(math_verify_calls) == 2
    answers_match(beyond, "y")
    assert len(math_verify_calls) == 2


@pytest.mark.parametrize("predicted, reference, same", LEGIT)
def test_legitimate_answers_keep_working(predicted, reference, same):
    assert answers_match(predicted, reference) is same
    assert boxed_reward(f"so \\boxed{{{predicted}}}.", reference) == (1.0 if same else -1.0)


def test_nothing_in_a_completion_is_executed(monkeypatch, tmp_path):
    """Python's eval is reached only through sympy's parse_expr; during scoring it sees number tokens only,
    and the code in completions never runs, even when handed to math-verify directly."""
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser as mv_parser
    import sympy.parsing.sympy_parser as sympy_parser
    from math_verify import LatexExtractionConfig, parse

    seen, real = [], sympy_parser.parse_expr
    for module in (sympy_parser, mv_parser, l2s):
        monkeypatch.setattr(module, "parse_expr", lambda s, *a, **k: seen.append(s) or real(s, *a, **k))
    monkeypatch.chdir(tmp_path)
    code = [text for name, text in HOSTILE.items() if name.startswith("python:")]
    assert len(code) >= 5
    for text in code + [f"\\boxed{{{p}}}" for p, _, _ in LEGIT]:
        _score_both(text)
    for text in code:  # math-verify itself, as the verifiers call it, with no gate in front
        parse(text.replace("\\boxed{", "$\\boxed{") + "$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    assert not (tmp_path / "PWNED").exists()
    assert [s for s in seen if not re.fullmatch(r"[0-9.]+", str(s))] == []


def _extract_boxed_oracle(text: str) -> str | None:
    """The former quadratic extractor: the last box start whose braces balance."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def test_one_pass_extract_boxed_matches_the_former_extractor():
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\fbox{", "\\boxed {", "{", "}", "1", "x", " ", "\\{", "\\}"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert extract_boxed(text) == _extract_boxed_oracle(text), text


def _task(verifier="boxed", **kw):
    problem = Problem("q", "work\n#### 72")
    return Task("t", train=[problem], test=[problem], verifier=verifier, **kw), problem


COMPLETIONS = ["\\boxed{72}", "\\boxed{71}", "first \\boxed{72} then 3", "the answer is 72", "72}", "", "\\boxed{72",
               "\\boxed{\\frac{144}{2}}", "\\boxed{9^{9^{9}}}", "\\boxed{" * 2857]


@pytest.mark.parametrize("verifier, kw", [("boxed", {}), ("boxed", {"zero_one": True}), ("last_number", {}),
                                          ("last_number", {"format_bonus": 0.25, "zero_one": True}),
                                          ("boxed", {"assistant_prefix": "\\boxed{"}),
                                          ("last_number", {"assistant_prefix": "The answer is "})])
def test_task_score_verifies_once_and_agrees(monkeypatch, verifier, kw):
    import steerinterp.tasks.base as base

    counts = Counter()
    for name in ("answers_match", "extract_boxed", "extract_last_number"):
        real = getattr(base, name)
        monkeypatch.setattr(base, name, lambda *a, _real=real, _name=name, **k: counts.update([_name]) or _real(*a, **k))
    task, problem = _task(verifier, **kw)
    fn = VERIFIERS[verifier]
    extra = {"format_bonus": task.format_bonus} if verifier == "last_number" else {}
    for completion in COMPLETIONS:
        counts.clear()
        reward, correct = task.score(completion, problem)
        assert counts["extract_boxed"] == 1 and counts["answers_match"] <= 1 and counts["extract_last_number"] <= 1
        assert reward == fn(task.prefix_for(problem) + completion, "72", zero_one=task.zero_one, **extra)
        assert (reward, correct) == (task.reward(completion, problem), task.is_correct(completion, problem))


def test_task_score_keeps_a_subclass_reward():
    class Lenient(Task):
        def reward(self, completion, problem):
            return super().reward(completion, problem) + 10.0  # calls back into the base class: no recursion

    class Always(Task):
        def is_correct(self, completion, problem):
            return True

    problem = Problem("q", "72")
    lenient = Lenient("t", train=[problem], test=[problem])
    assert lenient.score("\\boxed{71}", problem) == (9.0, False)
    assert lenient.score("\\boxed{72}", problem) == (11.0, True)
    always = Always("t", train=[problem], test=[problem])
    assert always.score("\\boxed{71}", problem) == (-1.0, True)


def test_task_score_with_a_registered_verifier(monkeypatch):
    """A verifier added to the registry gives the reward; correctness is the built-in check, as is_correct's."""
    monkeypatch.setitem(VERIFIERS, "always_half", lambda completion, reference, *, zero_one=False: 0.5)
    problem = Problem("q", "72")
    task = Task("t", train=[problem], test=[problem], verifier="always_half")
    assert task.score("\\boxed{72}", problem) == (0.5, True)
    assert task.score("\\boxed{71}", problem) == (0.5, False)
    assert (task.reward("\\boxed{71}", problem), task.is_correct("\\boxed{72}", problem)) == (0.5, True)
