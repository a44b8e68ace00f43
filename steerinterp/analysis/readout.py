"""Reading the residual stream out as next-token distributions (float64, temperature 1)."""

from __future__ import annotations

import torch

from steerinterp.analysis.architecture import final_logits
from steerinterp.types import HookedModel


def final_logprobs(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """float64 log-softmax of the logits from final-block residuals [n, d_model]: the final norm, the
    unembedding and the architecture's logit soft-cap (Gemma-2), as the model's own forward does."""
    return torch.log_softmax(final_logits(model, resid).double(), -1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)
