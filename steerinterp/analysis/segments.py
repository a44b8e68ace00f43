"""Prompt segments of chat-formatted sequences: system, user header, user message, assistant header,
generation. Used to draw the papers' segment borders on per-token plots (PAPER_NOTES section 4.9).

Chat templates in the ChatML style mark turns with special tokens: ``<|im_start|>role\\n ...
<|im_end|>``. A turn's header runs from its start marker to the first newline; its message runs to
the end marker. Sequences without such markers get ``prompt`` and ``generation``.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_segments(pieces: Sequence[str], n_prompt: int, special: set[str]) -> list[str]:
    """A segment label per token from decoded pieces; the first ``n_prompt`` tokens are the prompt."""
    labels: list[str] = []
    role, state = None, None  # state: header | message | between
    for i, piece in enumerate(pieces):
        if i >= n_prompt:
            labels.append("generation")
            continue
        if piece in special and "start" in piece:
            header = ""
            for nxt in pieces[i + 1 : n_prompt]:
                header += nxt
                if "\n" in nxt:
                    break
            role = header.strip() or "turn"
            state = "header"
            labels.append(f"{role} header")
            continue
        if state == "header":
            labels.append(f"{role} header")
            if "\n" in piece:
                state = "message"
            continue
        if piece in special and "end" in piece and state == "message":
            labels.append(f"{role} message")
            state = "between"
            continue
        if state == "message":
            labels.append(f"{role} message")
        else:
            labels.append("prompt" if role is None else "between turns")
    return labels


def boundaries(labels: Sequence[str]) -> list[tuple[int, str]]:
    """``(index, label)`` where each new segment starts (after the first token)."""
    return [(i, lab) for i, lab in enumerate(labels) if i and lab != labels[i - 1]]
