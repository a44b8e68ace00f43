import pytest

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
