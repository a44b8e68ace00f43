"""Next-token choice shared by every rollout engine (so equal logits give equal tokens)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

from steerinterp.errors import SteerInterpError


def check_sampling_args(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise SteerInterpError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise SteerInterpError(f"top_p must be in (0, 1], got {top_p}")


def next_tokens(
    logits: Float[torch.Tensor, "batch vocab"],
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Int[torch.Tensor, "batch"]:
    """Greedy (``temperature == 0``) or temperature / nucleus sampling from last-position logits."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
