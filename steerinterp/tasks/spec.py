"""Task specs for the command line: ``arithmetic[:LEVEL[:SPLIT]]``, ``gsm8k:PATH[,TEST_PATH]``, ``math:PATH``."""

from __future__ import annotations

from pathlib import Path

from steerinterp.errors import SteerInterpError
from steerinterp.tasks.arithmetic import arithmetic_task
from steerinterp.tasks.jsonl import gsm8k_task, math_task
from steerinterp.tasks.multistep import multistep_task

GSM8K_LENIENT_TEMPLATE = "{question}\nGive the final answer as a number."


def load_task(spec: str, *, verifier: str | None = None, seed: int = 0, limit: int | None = None):
    """Build a Task from a spec string.

    * ``arithmetic`` / ``arithmetic:add2``: synthetic levels (lenient last-number verifier), train and test
      disjoint; ``arithmetic:add1:shared``: test problems drawn from the training problems (the prototype's
      protocol, see ``arithmetic_task``);
    * ``gsm8k:train.jsonl`` or ``gsm8k:train.jsonl,test.jsonl`` (a directory with both works too);
      ``verifier="last_number"`` switches to the lenient check with a number-asking prompt;
    * ``math:file.jsonl``;
    * ``multistep:word2`` / ``multistep:mixed`` / ``multistep:mul2``: two-step arithmetic with a step-by-step
      system prompt and an ``Answer: N`` line (``multistep_task``).
    """
    kind, _, arg = spec.partition(":")
    if kind == "arithmetic":
        level, _, split = arg.partition(":")
        return arithmetic_task(level or "add1", seed=seed, verifier=verifier or "last_number", split=split or "disjoint")
    if kind == "multistep":
        return multistep_task(arg or "word2", seed=seed, verifier=verifier or "last_number")
    if kind in ("gsm8k", "math"):
        if not arg:
            raise SteerInterpError(f"task {spec!r} needs a path: {kind}:PATH")
        train, _, test = arg.partition(",")
        if Path(train).is_dir():
            train, test = str(Path(train) / "train.jsonl"), str(Path(train) / "test.jsonl")
        test = test or None
        if kind == "gsm8k":
            if verifier == "last_number":
                return gsm8k_task(train, test, verifier="last_number", system_prompt=None,
                                  user_template=GSM8K_LENIENT_TEMPLATE, seed=seed, limit=limit)
            return gsm8k_task(train, test, verifier=verifier or "boxed", seed=seed, limit=limit)
        return math_task(train, test, verifier=verifier or "boxed", seed=seed, limit=limit)
    raise SteerInterpError(f"unknown task {spec!r}; use arithmetic[:LEVEL[:SPLIT]], multistep[:LEVEL], "
                           "gsm8k:PATH or math:PATH")


def task_digest(task) -> str:
    """A digest of everything that decides a task's rewards: its problems (ids, questions, answers, in both
    splits and in order), prompt format and verifier settings. A data file edited under the same name gets
    another digest."""
    import hashlib
    import json

    fields = {k: getattr(task, k) for k in ("name", "verifier", "system_prompt", "user_template", "format_bonus",
                                             "zero_one")}
    prefix = task.assistant_prefix if isinstance(task.assistant_prefix, str) else repr(task.assistant_prefix)
    h = hashlib.sha256(json.dumps({**fields, "assistant_prefix": prefix}, sort_keys=True).encode())
    for split in (task.train, task.test):
        for p in split:
            h.update(json.dumps([p.id, p.question, p.answer]).encode())
        h.update(b"|")
    return h.hexdigest()[:16]
