"""Reading the residual stream out as next-token distributions (float64, temperature 1)."""

from __future__ import annotations

import torch

from steerinterp.types import HookedModel


def final_logprobs(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """float64 log-softmax of the logits from final-block residuals [n, d_model]."""
    return torch.log_softmax(model.unembed(model.ln_final(resid[None]))[0].double(), -1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)
