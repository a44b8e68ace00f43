"""The multi-step arithmetic family: answers, twin-disjoint splits, task strings, the Answer: line verifier."""

import re

import pytest

from steerinterp.errors import SteerInterpError
from steerinterp.tasks import Problem, load_task, multistep_task
from steerinterp.tasks.multistep import LEVELS


def _operands(pid: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", pid.split(":", 1)[1])]


@pytest.mark.parametrize("level", list(LEVELS))
def test_answers_are_the_arithmetic_of_the_question(level):
    task = multistep_task(level, n_test=100)
    for p in list(task.train[:200]) + list(task.test):
        nums = [int(x) for x in re.findall(r"\d+", p.question)]
        if level == "add3_guided":  # "What is a + b + c? First add a and b, then add c to the result."
            assert nums[3:] == nums[:3]
            nums = nums[:3]
        expected = {"word2": lambda a, b, c: a + b * c, "mixed": lambda a, b, c: a * b + c,
                    "mul2": lambda a, b: a * b, "add3": lambda a, b, c: a + b + c,
                    "add3_guided": lambda a, b, c: a + b + c, "addsub": lambda a, b, c: a + b - c,
                    "word_addsub": lambda a, b, c: a + b - c}[level](*nums)
        assert int(p.answer) == expected >= 0, p
        assert _operands(p.id) == nums


@pytest.mark.parametrize("level", list(LEVELS))
def test_split_is_disjoint_including_commuted_twins(level):
    task = multistep_task(level, n_test=120, seed=3)
    assert 120 <= len(task.test) <= 122
    def twin_key(pid):
        nums = _operands(pid)
        if level == "word2":
            return (nums[0], *sorted(nums[1:]))
        if level in ("mixed", "word_addsub", "addsub"):
            return (*sorted(nums[:2]), nums[2])
        if level in ("add3", "add3_guided"):
            return tuple(sorted(nums))
        return tuple(nums)
    train_keys = {twin_key(p.id) for p in task.train}
    assert not any(twin_key(p.id) in train_keys for p in task.test)
    assert not {p.question for p in task.train} & {p.question for p in task.test}
    # seeded: the same seed gives the same split, another seed another
    assert [p.id for p in multistep_task(level, n_test=120, seed=3).test] == [p.id for p in task.test]
    assert [p.id for p in multistep_task(level, n_test=120, seed=4).test] != [p.id for p in task.test]


def test_task_string_round_trip_and_prompt():
    task = load_task("multistep:mixed", seed=2)
    assert task.spec == "multistep:mixed" and task.name == "multistep:mixed"
    again = load_task(task.spec, seed=2)
    assert [p.id for p in again.test] == [p.id for p in task.test]
    assert "step by step" in task.system_prompt and "Answer:" in task.system_prompt
    assert task.is_correct("7 * 6 = 42, then 42 + 13 = 55.\nAnswer: 55", Problem("q", "55"))


def test_answer_line_wins_over_later_numbers():
    task = multistep_task("word2")
    p = Problem("q", "25")
    assert task.is_correct("3 * 6 = 18 and 7 + 18 = 25.\nAnswer: 25", p)
    assert task.is_correct("Answer: 25\nI checked 3 times, 26 seconds", p)  # the stated answer, not the last number
    assert not task.is_correct("3 * 6 = 18, 7 + 18 = 24. Answer: 24", p)
    # the small model states its answer as the sum it did (diagnosis of issue 18): the result counts
    assert task.is_correct("So, the answer is 7 + 18 = 25.", p)
    assert not task.is_correct("So, the answer is 7 + 18 = 26.", Problem("q", "7"))


def test_bad_level_and_test_size():
    with pytest.raises(SteerInterpError, match="unknown multistep level"):
        multistep_task("add9")
    with pytest.raises(SteerInterpError, match="n_test"):
        multistep_task("word2", n_test=10**6)
