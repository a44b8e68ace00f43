"""Teacher-forced inputs for the analyses: prompt + completion tokens with their masks.

Every analysis takes a ``Batch`` (or a ``GenerationOutput``, which has the same fields): prompts
left-padded to a common length, completions right-padded, and masks marking real tokens, prompt
tokens and completion tokens. ``paired_caches`` runs a batch with and without steering, chunk by
chunk, caching only the hooks an analysis asks for, so long completions stream through memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int

from steerinterp.errors import SteerInterpError
from steerinterp.generation.decode import encode_prompts
from steerinterp.steering.protocol import as_steering
from steerinterp.types import HookedModel, model_device, pad_token_id


@dataclass
class Batch:
    """Teacher-forcing inputs: ``tokens[b] = left padding + prompt + completion + right padding``."""

    tokens: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]
    prompt_mask: Bool[torch.Tensor, "batch seq"]
    completion_mask: Bool[torch.Tensor, "batch seq"]

    def __post_init__(self):
        shapes = {tuple(t.shape) for t in (self.tokens, self.attention_mask, self.prompt_mask, self.completion_mask)}
        if len(shapes) != 1 or self.tokens.dim() != 2:
            raise SteerInterpError(f"a Batch needs tokens and masks of one [batch, seq] shape, got {sorted(shapes)}")
        if not self.prompt_mask.any(-1).all():
            raise SteerInterpError("every row of a Batch needs at least one prompt token")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def last_prompt_index(self) -> Int[torch.Tensor, "batch"]:
        """Index of each row's last prompt token: its logits predict the first generated token."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return torch.where(self.prompt_mask.bool(), pos, -1).max(-1).values

    @property
    def predicting_mask(self) -> Bool[torch.Tensor, "batch seq"]:
        """Positions whose next token is a completion token (the last prompt token onward)."""
        out = torch.zeros_like(self.completion_mask, dtype=torch.bool)
        out[:, :-1] = self.completion_mask[:, 1:].bool()
        return out

    def positions(self, which: str) -> Bool[torch.Tensor, "batch seq"]:
        """Mask of the analysed positions: ``"first"`` (the last prompt token, predicting the first
        generated token), ``"completion"`` (every position predicting a completion token) or ``"all"``."""
        if which == "first":
            mask = torch.zeros_like(self.completion_mask, dtype=torch.bool)
            mask[torch.arange(len(self)), self.last_prompt_index] = True
            return mask
        if which == "completion":
            return self.predicting_mask
        if which == "all":
            return self.attention_mask.bool()
        raise SteerInterpError(
            f"positions={which!r}; choose 'first' (predicting the first generated token), 'completion' or 'all'")

    def rows(self, index: slice) -> Batch:
        return Batch(self.tokens[index], self.attention_mask[index], self.prompt_mask[index], self.completion_mask[index])

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.tokens, self.attention_mask, self.prompt_mask, self.completion_mask)))


@runtime_checkable
class TokenBatch(Protocol):
    """Anything with a batch's tokens and masks (``Batch``, ``GenerationOutput``)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    completion_mask: torch.Tensor


def as_batch(inputs) -> Batch:
    """A ``Batch`` from a ``Batch`` or a ``GenerationOutput`` (its tokens and masks)."""
    if isinstance(inputs, Batch):
        return inputs
    if isinstance(inputs, TokenBatch):
        return Batch(inputs.tokens, inputs.attention_mask, inputs.prompt_mask, inputs.completion_mask)
    raise SteerInterpError(
        f"expected a Batch or a GenerationOutput, got {type(inputs).__name__}; "
        "build one with steerinterp.analysis.teacher_forcing_batch(model, prompts, completions)"
    )


def teacher_forcing_batch(model: HookedModel, prompts: Sequence[str], completions: Sequence[str]) -> Batch:
    """Tokenise prompts and completions (no special tokens added) into a left/right-padded ``Batch``.

    Prompt and completion are tokenised separately, as generation produces them (a completion starts
    a new token); for completions sampled by ``si.generate``, pass its ``GenerationOutput`` directly.
    """
    prompts, completions = list(prompts), list(completions)
    if len(prompts) != len(completions):
        raise SteerInterpError(f"{len(prompts)} prompts but {len(completions)} completions; give one completion per prompt")
    p_ids, _ = encode_prompts(model, prompts)
    c_ids = model.tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
    if any(len(c) == 0 for c in c_ids):
        raise SteerInterpError("an empty completion has no tokens to analyse; drop it or give at least one token")
    p_len = max(len(p) for p in p_ids)
    width = p_len + max(len(c) for c in c_ids)
    pad = pad_token_id(model.tokenizer)
    n = len(prompts)
    tokens = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    pmask = torch.zeros((n, width), dtype=torch.bool)
    cmask = torch.zeros((n, width), dtype=torch.bool)
    for r, (p, c) in enumerate(zip(p_ids, c_ids)):
        tokens[r, p_len - len(p) : p_len] = torch.tensor(p)
        tokens[r, p_len : p_len + len(c)] = torch.tensor(c)
        attn[r, p_len - len(p) : p_len + len(c)] = 1
        pmask[r, p_len - len(p) : p_len] = True
        cmask[r, p_len : p_len + len(c)] = True
    device = model_device(model)
    return Batch(tokens, attn, pmask, cmask).to(device)


def steering_context(model: HookedModel, steering, batch: Batch):
    """``steering.applied(...)`` with the batch's masks, or a no-op for ``None``."""
    vecs = as_steering(steering)
    if vecs is None or not len(vecs):
        return contextlib.nullcontext()
    return vecs.applied(model, prompt_mask=batch.prompt_mask, attention_mask=batch.attention_mask)


@torch.no_grad()
def run_cached(model: HookedModel, batch: Batch, steering, names_filter: Callable[[str], bool] | Sequence[str],
               *, logits: bool = False):
    """One forward over a batch with the given steering; returns ``(logits or None, cache)``."""
    with steering_context(model, steering, batch):
        out, cache = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, names_filter=names_filter,
            return_type="logits" if logits else None,
        )
    return out, cache


def paired_caches(
    model: HookedModel,
    inputs,
    steering,
    names_filter: Callable[[str], bool] | Sequence[str],
    *,
    batch_size: int = 8,
    logits: bool = False,
    base_steering=None,
) -> Iterator[tuple[Batch, tuple, tuple]]:
    """Yield ``(chunk, (base_logits, base_cache), (steered_logits, steered_cache))`` chunk by chunk.

    Only the hooks in ``names_filter`` are cached. ``base_steering`` (default none) is what the
    reference run carries, e.g. the other vectors when isolating one layer's contribution.
    """
    batch = as_batch(inputs)
    if batch_size < 1:
        raise SteerInterpError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        base = run_cached(model, chunk, base_steering, names_filter, logits=logits)
        steered = run_cached(model, chunk, steering, names_filter, logits=logits)
        yield chunk, base, steered


def token_strings(model: HookedModel, ids) -> list[str]:
    """Each id decoded on its own (``" To"``, ``"\\n"``), one string per id."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    return model.tokenizer.batch_decode([[i] for i in ids])
