"""Checks of a task against a model, made before any training step.

A prompt that does not fit the model's context would otherwise stop a run only when its row is sampled
(and stop every ``--resume`` at the same step); ``check_prompt_lengths`` finds it at the start.
"""

from __future__ import annotations

from steerinterp.errors import SteerInterpError
from steerinterp.generation.decode import encode_prompts
from steerinterp.tasks.base import Task
from steerinterp.types import HookedModel


def check_prompt_lengths(task: Task, model: HookedModel, max_new_tokens: int) -> None:
    """Raise a one-line ``SteerInterpError`` if a prompt's tokens + ``max_new_tokens`` exceed ``model.cfg.n_ctx``.

    Every train and test prompt is formatted as generation formats it (``task.prompts``: chat template,
    system prompt, assistant prefix) and tokenised as ``generate`` tokenises it. The error names the first
    such problem by its id (``"<file stem>:<line>"`` for JSONL tasks), its split, the lengths, and how many
    other prompts are too long.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SteerInterpError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}", setting="max_new_tokens")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if not n_ctx:
        return
    seen: set[str] = set()
    too_long: list[tuple[str, str, int]] = []  # (split, problem id, prompt tokens)
    for split, problems in (("train", task.train), ("test", task.test)):
        todo = [p for p in problems if not p.id or p.id not in seen]
        seen.update(p.id for p in todo if p.id)
        if not todo:
            continue
        ids, _ = encode_prompts(model, task.prompts(model, todo))
        too_long += [(split, p.id or f"#{k}", len(i)) for k, (p, i) in enumerate(zip(todo, ids))
                     if len(i) + max_new_tokens > n_ctx]
    if too_long:
        split, pid, n = too_long[0]
        more = f" ({len(too_long) - 1} more prompts are too long)" if len(too_long) > 1 else ""
        raise SteerInterpError(
            f"task {task.name}: problem {pid} ({split} split) has a prompt of {n} tokens, and {n} + max_new_tokens "
            f"{max_new_tokens} = {n + max_new_tokens} exceeds the model's context of {n_ctx}{more}; remove or shorten "
            f"the row, lower max_new_tokens, or load the model with a larger n_ctx",
            setting="max_new_tokens",
        )
