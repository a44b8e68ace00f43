"""Naming tokens: a string that must be exactly one token, or an id."""

from __future__ import annotations

from collections.abc import Sequence

from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel


def token_id(model: HookedModel, token: str | int) -> int:
    """The id of a single token given as a string (``"To"``, ``" Step"``) or an int."""
    if isinstance(token, int):
        if not 0 <= token < model.cfg.d_vocab:
            raise SteerInterpError(f"token id {token} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        return token
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = model.tokenizer.batch_decode([[i] for i in ids])
        raise SteerInterpError(f"{token!r} is {len(ids)} tokens {pieces}, not one; name a single token (mind the leading space)")
    return ids[0]


def token_ids(model: HookedModel, tokens: Sequence[str | int]) -> dict[str, int]:
    """``{label: id}`` for tokens named by string or id, in order."""
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    out = {}
    for t in tokens:
        i = token_id(model, t)
        out[t if isinstance(t, str) else model.tokenizer.decode([i])] = i
    return out
