"""The papers' policy-gradient loss: token-normalised REINFORCE over the whole batch."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float


def reinforce_loss(
    logprobs: Float[torch.Tensor, "batch seq"],
    completion_mask: Bool[torch.Tensor, "batch seq"],
    advantages: Float[torch.Tensor, "batch"],
    n_tokens: int | float | None = None,
) -> torch.Tensor:
    """L = -(1 / N_tok) * sum_i A_i * sum_t log p(y_it), N_tok = generated tokens in the *global* batch.

    Pass ``n_tokens`` (the global count) when the batch is split into micro-batches or across processes,
    so that the pieces' gradients add up to the full batch's.
    """
    mask = completion_mask.to(logprobs.dtype)
    if n_tokens is None:
        n_tokens = mask.sum().item()
    per_sequence = (logprobs * mask).sum(dim=-1)
    return -(advantages.to(logprobs.dtype) * per_sequence).sum() / max(float(n_tokens), 1.0)
