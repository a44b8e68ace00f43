"""GSM8K-format and MATH-style JSONL datasets, validated row by row."""

from __future__ import annotations

import json
import random
from pathlib import Path

from steerinterp.errors import SteerInterpError
from steerinterp.models.chat import PAPER_SYSTEM_PROMPT
from steerinterp.tasks.base import Problem, Task
from steerinterp.tasks.verifiers import extract_boxed


def read_jsonl(path, question_key: str, answer_key: str, *, alt_answer_key: str | None = None,
               limit: int | None = None) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise SteerInterpError(f"dataset file {path} does not exist")
    problems = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SteerInterpError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise SteerInterpError(f"{path}:{n}: expected a JSON object per line")
            answer = row.get(answer_key)
            if answer is None and alt_answer_key and isinstance(row.get(alt_answer_key), str):
                answer = extract_boxed(row[alt_answer_key])
            q = row.get(question_key)
            if not isinstance(q, str) or not q.strip():
                raise SteerInterpError(f"{path}:{n}: missing or empty {question_key!r}")
            if answer is None or (isinstance(answer, str) and not answer.strip()):
                raise SteerInterpError(f"{path}:{n}: missing {answer_key!r}")
            problems.append(Problem(question=q, answer=str(answer), id=f"{path.stem}:{n}"))
            if limit is not None and len(problems) >= limit:
                break
    if not problems:
        raise SteerInterpError(f"{path} has no rows")
    return problems


def _split(problems, test_path, test_reader, n_test, seed):
    if test_path is not None:
        return problems, test_reader(test_path)
    problems = list(problems)
    random.Random(seed).shuffle(problems)
    n_test = min(n_test, len(problems) // 2)
    return problems[n_test:], problems[:n_test]


def gsm8k_task(train_path, test_path=None, *, verifier: str = "boxed", system_prompt: str | None = PAPER_SYSTEM_PROMPT,
               user_template: str = "{question}", n_test: int = 200, seed: int = 0, limit: int | None = None,
               format_bonus: float = 0.0) -> Task:
    """GSM8K JSONL (``question``, ``answer`` ending in ``#### N``). Without ``test_path``, a seeded hold-out.

    Rows whose answer lacks ``####`` are an error naming the line. For small models use
    ``verifier="last_number"`` and a user template that asks for the number.
    """
    def reader(p):
        rows = read_jsonl(p, "question", "answer", limit=limit)
        for r in rows:
            if "####" not in r.answer:
                raise SteerInterpError(f"{p}: row {r.id} has no '#### <answer>' at the end of its answer")
        return rows

    train, test = _split(reader(train_path), test_path, reader, n_test, seed)
    return Task(name=f"gsm8k:{Path(train_path).name}", train=train, test=test, verifier=verifier,
                system_prompt=system_prompt, user_template=user_template, format_bonus=format_bonus,
                info={"train_path": str(train_path), "test_path": str(test_path) if test_path else None},
                spec=file_spec("gsm8k", train_path, test_path))


def math_task(train_path, test_path=None, *, verifier: str = "boxed", system_prompt: str | None = PAPER_SYSTEM_PROMPT,
              n_test: int = 200, seed: int = 0, limit: int | None = None) -> Task:
    """MATH-style JSONL (``problem``, ``answer`` in LaTeX; or a ``solution`` whose last box is the answer)."""
    def reader(p):
        return read_jsonl(p, "problem", "answer", alt_answer_key="solution", limit=limit)

    train, test = _split(reader(train_path), test_path, reader, n_test, seed)
    return Task(name=f"math:{Path(train_path).name}", train=train, test=test, verifier=verifier,
                system_prompt=system_prompt, info={"train_path": str(train_path)},
                spec=file_spec("math", train_path, test_path))


def file_spec(kind: str, train_path, test_path=None) -> str:
    """The task string of a file task, with absolute paths (valid from any working directory)."""
    spec = f"{kind}:{Path(train_path).resolve()}"
    return spec + (f",{Path(test_path).resolve()}" if test_path else "")
