import json
from pathlib import Path

import pytest

from steerinterp.errors import SteerInterpError
from steerinterp.tasks import LEVELS, arithmetic_task, gsm8k_task, load_task, math_task

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def test_arithmetic_splits_are_disjoint_and_seeded():
    for level in LEVELS:
        t = arithmetic_task(level)
        assert not {p.id for p in t.train} & {p.id for p in t.test}
        assert [p.id for p in arithmetic_task(level).test] == [p.id for p in t.test]
    t = arithmetic_task("add1")
    assert len(t.test) == 40 and len(t.train) == 41  # 81 problems, test capped at half
    p = t.test[0]
    a, b = (int(x) for x in p.question.removeprefix("What is ").rstrip("?").split(" + "))
    assert int(p.answer) == a + b
    assert t.user_message(p).endswith("Answer with just the number.")
    assert t.reward(f"{a} + {b} = {a + b}", p) == 1.0 and t.reward("12", p) in (-1.0, 1.0)
    with pytest.raises(SteerInterpError, match="unknown arithmetic level"):
        arithmetic_task("add7")


def test_shared_split_is_the_prototype_protocol():
    """split="shared": training draws from every problem and the test set is a seeded draw from them."""
    t = arithmetic_task("add1", split="shared")
    assert len(t.train) == 81 and len(t.test) == 64
    assert {p.id for p in t.test} <= {p.id for p in t.train}
    assert len({p.id for p in t.test}) == 64  # drawn without replacement
    assert t.name == "arithmetic:add1/shared" and t.info["split"] == "shared"
    assert arithmetic_task("add1").name == "arithmetic:add1"  # disjoint keeps its name (old checkpoints resume)
    assert len(arithmetic_task("add1", split="shared", n_test=500).test) == 81
    assert [p.id for p in load_task("arithmetic:add1:shared").test] == [p.id for p in t.test]
    assert load_task("arithmetic:add2").info["split"] == "disjoint"
    with pytest.raises(SteerInterpError, match="unknown split 'overlap'; choose one of disjoint, shared"):
        load_task("arithmetic:add1:overlap")


def test_prompts_use_the_chat_template(tiny):
    t = arithmetic_task("add1")
    prompt = t.prompts(tiny, t.test[:1])[0]
    assert prompt.startswith("<|im_start|>user\nWhat is") and prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.skipif(not GSM8K.is_dir(), reason="shared GSM8K data not present")
def test_real_gsm8k():
    t = gsm8k_task(GSM8K / "train.jsonl", GSM8K / "test.jsonl", limit=50)
    assert len(t.train) == 50 and t.test[0].final_answer == "18"
    assert t.reward("... so she makes \\boxed{18} dollars", t.test[0]) == 1.0
    assert t.reward("she makes 18 dollars", t.test[0]) == -1.0  # strict boxed verifier by default
    lenient = load_task(f"gsm8k:{GSM8K}", verifier="last_number", limit=50)
    assert lenient.reward("she makes 18 dollars", lenient.test[0]) == 1.0
    assert "Please reason step by step" in t.system_prompt


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_malformed_rows_name_the_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "x\n#### 1"}, "{not json"])
    with pytest.raises(SteerInterpError, match="bad.jsonl:2: not valid JSON"):
        gsm8k_task(f)
    f = _write(tmp_path / "nokey.jsonl", [{"question": "q"}])
    with pytest.raises(SteerInterpError, match="nokey.jsonl:1: missing 'answer'"):
        gsm8k_task(f)
    f = _write(tmp_path / "nohash.jsonl", [{"question": "q", "answer": "12"}, {"question": "r", "answer": "13"}])
    with pytest.raises(SteerInterpError, match="no '#### <answer>'"):
        gsm8k_task(f)
    with pytest.raises(SteerInterpError, match="does not exist"):
        load_task("gsm8k:/no/such/file.jsonl")
    with pytest.raises(SteerInterpError, match="unknown task"):
        load_task("sudoku")


def test_math_style(tmp_path):
    f = _write(tmp_path / "m.jsonl", [
        {"problem": "Half of one?", "answer": "\\frac{1}{2}"},
        {"problem": "Two plus two?", "solution": "It is \\boxed{4}."},
        {"problem": "x", "answer": "1"}, {"problem": "y", "answer": "2"},
    ])
    t = math_task(f, n_test=2)
    assert len(t.train) == 2 and len(t.test) == 2
    p = next(p for p in t.train + t.test if p.question == "Half of one?")
    assert t.reward("\\boxed{0.5}", p) == 1.0
    q = next(p for p in t.train + t.test if p.question == "Two plus two?")
    assert q.answer == "4"
