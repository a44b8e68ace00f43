"""Chat-template helpers for instruct models."""

from __future__ import annotations

from collections.abc import Sequence

from steerinterp.errors import SteerInterpError

#: the system prompt of both papers (Sinii et al.)
PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def chat_prompts(
    model_or_tokenizer,
    user_messages: str | Sequence[str],
    *,
    system: str | None = None,
) -> list[str]:
    """Wrap user messages in the model's chat template, ending with the assistant turn's header.

    Args:
        model_or_tokenizer: a model with ``.tokenizer`` or a HF tokenizer with a chat template.
        user_messages: one message or a list (one prompt each).
        system: system message; ``None`` keeps the template's default (SmolLM2's names itself).
            Use ``steerinterp.models.PAPER_SYSTEM_PROMPT`` for the papers' boxed-answer instruction.
    """
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if not getattr(tok, "chat_template", None):
        raise SteerInterpError("this tokenizer has no chat template; pass plain prompt strings to generate()")
    if isinstance(user_messages, str):
        user_messages = [user_messages]
    out = []
    for msg in user_messages:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": msg}
        ]
        out.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out
