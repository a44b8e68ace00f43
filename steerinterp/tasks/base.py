"""The Task object: problems, a prompt format and a verifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from steerinterp.errors import SteerInterpError
from steerinterp.models.chat import chat_prompts
from steerinterp.tasks.verifiers import (
    VERIFIERS,
    answers_match,
    boxed_reward,
    extract_boxed,
    extract_last_number,
    last_number_reward,
    reference_answer,
)


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the reference: a final answer, or a GSM8K solution ending in "#### N"
    id: str = ""

    @property
    def final_answer(self) -> str:
        return reference_answer(self.answer)


@dataclass
class Task:
    """Problems (train / test splits), how to prompt for them, and how to score a completion.

    Args:
        verifier: ``"boxed"`` (the papers': last ``\\boxed{}`` only) or ``"last_number"`` (lenient).
        system_prompt: the chat system message; None keeps the chat template's default.
        user_template: the user message, with ``{question}`` where the problem goes.
        format_bonus: added to the reward when the completion writes ``\\boxed{}`` (lenient verifier).
        zero_one: rewards 1 / 0 instead of the papers' +1 / -1.
        assistant_prefix: text the assistant's turn starts with, written into the prompt (the papers'
            "To" control), or a function of the problem giving it; the verifier reads prefix + completion.
    """

    name: str
    train: Sequence[Problem]
    test: Sequence[Problem]
    verifier: str = "boxed"
    system_prompt: str | None = None
    user_template: str = "{question}"
    format_bonus: float = 0.0
    zero_one: bool = False
    assistant_prefix: str | Callable[[Problem], str] = ""
    info: dict = field(default_factory=dict)
    spec: str | None = None  # the task string that rebuilds this task (``load_task``), None for a custom task

    def __post_init__(self):
        if self.verifier not in VERIFIERS:
            raise SteerInterpError(f"verifier={self.verifier!r}; choose one of {', '.join(VERIFIERS)}")
        if "{question}" not in self.user_template:
            raise SteerInterpError("user_template must contain {question}")
        if not self.train:
            raise SteerInterpError(f"task {self.name!r} has no training problems")

    def user_message(self, problem: Problem) -> str:
        return self.user_template.format(question=problem.question)

    def prompts(self, model, problems: Sequence[Problem]) -> list[str]:
        """Chat-formatted prompts (or plain user messages for models without a chat template)."""
        tok = getattr(model, "tokenizer", model)
        messages = [self.user_message(p) for p in problems]
        if getattr(tok, "chat_template", None):
            prompts = chat_prompts(tok, messages, system=self.system_prompt)
        else:
            prefix = f"{self.system_prompt}\n\n" if self.system_prompt else ""
            prompts = [f"{prefix}User: {m}\nAssistant:" for m in messages]
        return [p + self.prefix_for(problem) for p, problem in zip(prompts, problems)]

    def prefix_for(self, problem: Problem) -> str:
        """The assistant prefix written after the prompt for this problem ("" by default)."""
        prefix = self.assistant_prefix(problem) if callable(self.assistant_prefix) else self.assistant_prefix
        if not isinstance(prefix, str):
            raise SteerInterpError(f"assistant_prefix must give a string, got {type(prefix).__name__}")
        return prefix

    def with_assistant_prefix(self, prefix: str | Callable[[Problem], str], label: str | None = None) -> Task:
        """The same task with every answer starting with ``prefix`` (e.g. ``"To"``, or a function of the
        problem), written into the prompt and read by the verifier."""
        label = label or (prefix if isinstance(prefix, str) else getattr(prefix, "__name__", "custom"))
        return replace(self, name=f"{self.name}+prefix{label!r}", assistant_prefix=prefix, spec=None)

    def extracted(self, completion: str) -> str | None:
        """The answer the verifier reads from a completion (None when there is none)."""
        boxed = extract_boxed(completion)
        if self.verifier == "boxed" or boxed is not None:
            return boxed
        return extract_last_number(completion)

    def score(self, completion: str, problem: Problem) -> tuple[float, bool]:
        """``(reward, correct)`` of a completion, from one extraction and one verification.

        The same values as ``reward`` and ``is_correct`` (the assistant prefix read before the completion,
        ``zero_one``, the lenient verifier's format bonus). A subclass that defines its own ``reward`` or
        ``is_correct`` keeps it: ``score`` calls it. A verifier registered in ``VERIFIERS`` besides the
        built-in two gives the reward, and correctness is checked as ``is_correct`` does (a second check).
        """
        own_reward, own_check = type(self).reward is not Task.reward, type(self).is_correct is not Task.is_correct
        if not (own_reward or own_check):
            return self._scored(completion, problem)
        reward, correct = (0.0, False) if own_reward and own_check else self._scored(completion, problem)
        return (self.reward(completion, problem) if own_reward else reward,
                self.is_correct(completion, problem) if own_check else correct)

    def _scored(self, completion: str, problem: Problem) -> tuple[float, bool]:
        fn = VERIFIERS[self.verifier]
        completion = self.prefix_for(problem) + completion
        if (self.verifier, fn) not in (("boxed", boxed_reward), ("last_number", last_number_reward)):
            answer = self.extracted(completion)
            correct = answer is not None and answers_match(answer, problem.final_answer)
            return fn(completion, problem.final_answer, zero_one=self.zero_one), correct
        boxed = extract_boxed(completion)
        answer = boxed if boxed is not None or self.verifier == "boxed" else extract_last_number(completion)
        correct = answer is not None and answers_match(answer, problem.final_answer)
        reward = 1.0 if correct else (0.0 if self.zero_one else -1.0)
        if self.verifier == "last_number" and boxed is not None:
            reward += self.format_bonus
        return reward, correct

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return self._scored(completion, problem)[1]

    def reward(self, completion: str, problem: Problem) -> float:
        return self._scored(completion, problem)[0]

    def __repr__(self) -> str:
        return f"Task({self.name!r}, train={len(self.train)}, test={len(self.test)}, verifier={self.verifier!r})"
