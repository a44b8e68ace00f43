"""GSM8K-format and MATH-style JSONL datasets, validated row by row when the file is read.

Every error names the file and line (``train.jsonl:12: ...``):

* the file must be UTF-8 (a UTF-8 byte-order mark is accepted); UTF-16, Latin-1 and other encodings are
  refused with the line and byte where decoding failed, and the fix (re-encode as UTF-8);
* each non-blank line is one JSON object;
* the question is a non-empty string;
* the answer is a non-empty string, or a finite number (MATH-style files store answers such as ``4`` or
  ``0.5`` as JSON numbers; they are kept as their decimal text). Booleans, lists, objects and null are
  refused: their text could never be scored. GSM8K answers must also end in ``#### N``.

Whether a prompt fits the model's context depends on the model; ``tasks.validation.check_prompt_lengths``
checks that for every row before training.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

from steerinterp.errors import SteerInterpError
from steerinterp.models.chat import PAPER_SYSTEM_PROMPT
from steerinterp.tasks.base import Problem, Task
from steerinterp.tasks.verifiers import extract_boxed

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: Path) -> str:
    """The text of a UTF-8 file; any other encoding is a one-line error naming the line and byte."""
    data = path.read_bytes()
    fix = "re-encode it as UTF-8 (e.g. iconv -f <its encoding> -t UTF-8)"
    if data.startswith(_UTF16_BOMS):
        raise SteerInterpError(f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8; {fix}")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise SteerInterpError(f"{path}:{line}: a NUL byte at byte {nul} of the file; it is "
                               f"not UTF-8 text (UTF-16 and UTF-32 files look like this); {fix}")
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + skip
        line = data.count(b"\n", 0, at) + 1
        col = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise SteerInterpError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[at]:02x} at byte {at} of the file, column {col}, cannot be "
            f"decoded; Latin-1 and Windows-1252 files look like this); {fix}") from e


def _kind(value) -> str:
    """The JSON kind of a value: "a list", "an object", "a number", "a boolean", "null"."""
    return {list: "a list", dict: "an object", bool: "a boolean", str: "a string", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _answer_text(value, where: str, key: str) -> str:
    """A reference answer as text: strings as they are, finite numbers as their decimal text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteerInterpError(f"{where}: {key!r} is {_kind(value)}; it must be a string (or a number), the text the "
                               "verifier compares with")
    if isinstance(value, float) and not math.isfinite(value):
        raise SteerInterpError(f"{where}: {key!r} is {value}; it must be a string or a finite number")
    return str(value)


def read_jsonl(path, question_key: str, answer_key: str, *, alt_answer_key: str | None = None,
               limit: int | None = None) -> list[Problem]:
    """The rows of a JSONL file as ``Problem`` s with id ``"<stem>:<line>"``; see the module notes for the checks."""
    path = Path(path)
    if not path.is_file():
        raise SteerInterpError(f"dataset file {path} does not exist")
    problems = []
    for n, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SteerInterpError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise SteerInterpError(f"{where}: expected a JSON object per line")
        q = row.get(question_key)
        if not isinstance(q, str):
            if q is None:
                raise SteerInterpError(f"{where}: missing {question_key!r}")
            raise SteerInterpError(f"{where}: {question_key!r} is {_kind(q)}; it must be a string")
        if not q.strip():
            raise SteerInterpError(f"{where}: empty {question_key!r}")
        answer = row.get(answer_key)
        if answer is None and alt_answer_key and row.get(alt_answer_key) is not None:
            solution = row[alt_answer_key]
            if not isinstance(solution, str):
                raise SteerInterpError(f"{where}: {alt_answer_key!r} is {_kind(solution)}; it must be a string")
            answer = extract_boxed(solution)
            if answer is None:
                raise SteerInterpError(f"{where}: missing {answer_key!r}, and {alt_answer_key!r} has no \\boxed{{...}} "
                                       "to take it from")
        if answer is None:
            raise SteerInterpError(f"{where}: missing {answer_key!r}")
        answer = _answer_text(answer, where, answer_key)
        if not answer.strip():
            raise SteerInterpError(f"{where}: empty {answer_key!r}")
        problems.append(Problem(question=q, answer=answer, id=f"{path.stem}:{n}"))
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
