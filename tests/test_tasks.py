import json
from pathlib import Path

import pytest

from steerinterp.errors import SteerInterpError
from steerinterp.tasks import LEVELS, Problem, Task, arithmetic_task, gsm8k_task, load_task, math_task

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


def test_commuted_twins_of_held_out_problems_are_found_by_hand():
    from steerinterp.tasks import commuted_twin_in_training

    task = arithmetic_task("add1")
    twins = commuted_twin_in_training(task)
    train = {p.question for p in task.train}
    for p in task.test:  # recomputed from the questions: "What is a + b?" -> "What is b + a?"
        a, b = p.question.removeprefix("What is ").rstrip("?").split(" + ")
        assert twins[p.id] == (a != b and f"What is {b} + {a}?" in train)
    assert sum(twins.values()) == 19 and len(twins) == 40
    assert not any(commuted_twin_in_training(arithmetic_task("sub2")).values())  # a - b has no twin
    odd = Task(name="x", train=task.train, test=[Problem("What is 2 + 2?", "4", id="q1")], verifier="last_number")
    with pytest.raises(SteerInterpError, match="not an arithmetic problem id"):
        commuted_twin_in_training(odd)


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


def _one_line(match, fn, *args, **kwargs):
    with pytest.raises(SteerInterpError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return err.value


def test_files_in_other_encodings_name_the_line_and_the_fix(tmp_path):
    rows = [{"question": "q", "answer": "x\n#### 1"}, {"question": "Combien coûte le café ?", "answer": "y\n#### 2"}]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    (tmp_path / "latin1.jsonl").write_bytes(text.encode("latin-1"))
    _one_line(r"latin1.jsonl:2: not UTF-8 \(byte 0xfb at byte \d+ of the file, column \d+.*re-encode it as UTF-8",
              gsm8k_task, tmp_path / "latin1.jsonl")
    (tmp_path / "utf16.jsonl").write_bytes(text.encode("utf-16"))
    _one_line("utf16.jsonl is UTF-16 .*re-encode it as UTF-8", gsm8k_task, tmp_path / "utf16.jsonl")
    (tmp_path / "utf16le.jsonl").write_bytes(text.encode("utf-16-le"))  # no byte-order mark
    _one_line("utf16le.jsonl:1: a NUL byte .*re-encode it as UTF-8", gsm8k_task, tmp_path / "utf16le.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(text.encode("utf-8-sig"))  # UTF-8 with a byte-order mark is UTF-8
    t = gsm8k_task(tmp_path / "bom.jsonl", tmp_path / "bom.jsonl")
    assert [p.question for p in t.train] == ["q", "Combien coûte le café ?"]


@pytest.mark.parametrize("row, match", [
    ({"question": "q", "answer": ["x", "#### 1"]}, "'answer' is a list; it must be a string"),
    ({"question": "q", "answer": {"value": "#### 1"}}, "'answer' is an object"),
    ({"question": "q", "answer": True}, "'answer' is a boolean"),
    ({"question": "q", "answer": float("nan")}, "'answer' is nan"),
    ({"question": "q", "answer": "   "}, "empty 'answer'"),
    ({"question": 12, "answer": "#### 1"}, "'question' is a number; it must be a string"),
    ({"question": ["q"], "answer": "#### 1"}, "'question' is a list"),
    ({"question": "", "answer": "#### 1"}, "empty 'question'"),
    ({"answer": "#### 1"}, "missing 'question'"),
])
def test_wrong_types_are_refused_with_file_and_line(tmp_path, row, match):
    f = _write(tmp_path / "rows.jsonl", [{"question": "ok", "answer": "x\n#### 1"}, row])
    _one_line(f"rows.jsonl:2: {match}", gsm8k_task, f)


def test_math_answers_may_be_numbers(tmp_path):
    f = _write(tmp_path / "m.jsonl", [{"problem": "Two plus two?", "answer": 4}, {"problem": "Half?", "answer": 0.5}])
    t = math_task(f, f)
    assert [p.answer for p in t.train] == ["4", "0.5"]
    assert t.reward("\\boxed{4}", t.train[0]) == 1.0 and t.reward("\\boxed{0.5}", t.train[1]) == 1.0
    for row, match in [({"problem": "p", "answer": [4]}, "m2.jsonl:1: 'answer' is a list"),
                       ({"problem": "p", "solution": ["\\boxed{4}"]}, "m2.jsonl:1: 'solution' is a list"),
                       ({"problem": "p", "solution": "no box here"}, "m2.jsonl:1: missing 'answer', and 'solution' has no"),
                       ({"problem": "p", "answer": False}, "m2.jsonl:1: 'answer' is a boolean")]:
        _one_line(match, math_task, _write(tmp_path / "m2.jsonl", [row]))


def test_prompt_lengths_are_checked_against_the_context(tiny, tmp_path):
    from steerinterp.tasks import check_prompt_lengths

    ok = {"question": "What is 2 + 2?", "answer": "x\n#### 4"}
    long = {"question": "word " * 300, "answer": "x\n#### 1"}  # > 256 bytes: over the tiny model's context
    f = _write(tmp_path / "data.jsonl", [ok, ok, long, ok, long])
    t = gsm8k_task(f, _write(tmp_path / "test.jsonl", [ok]))
    err = _one_line(r"problem data:3 \(train split\) has a prompt of (\d+) tokens.* exceeds the model's context of 256 "
                    r"\(1 more prompts are too long\)", check_prompt_lengths, t, tiny, 32)
    assert err.setting == "max_new_tokens"
    short = gsm8k_task(_write(tmp_path / "short.jsonl", [ok] * 3), _write(tmp_path / "short_test.jsonl", [ok]))
    check_prompt_lengths(short, tiny, 32)
    n = len(tiny.tokenizer(short.prompts(tiny, short.train[:1])[0], add_special_tokens=False)["input_ids"])
    check_prompt_lengths(short, tiny, 256 - n)  # exactly fills the context
    _one_line(f"problem short:1 \\(train split\\) has a prompt of {n} tokens.*= 257 exceeds", check_prompt_lengths,
              short, tiny, 257 - n)
    long_test = gsm8k_task(_write(tmp_path / "fine.jsonl", [ok]), _write(tmp_path / "hard.jsonl", [ok, long]))
    _one_line(r"problem hard:2 \(test split\)", check_prompt_lengths, long_test, tiny, 32)
    _one_line("max_new_tokens must be an int >= 1", check_prompt_lengths, short, tiny, 0)


def test_arithmetic_prompts_fit_the_tiny_model(tiny):
    from steerinterp.tasks import check_prompt_lengths

    check_prompt_lengths(arithmetic_task("add1", split="shared"), tiny, 64)
