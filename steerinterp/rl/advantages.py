"""Advantages from grouped rewards: ``rewards[n_prompts, G]`` -> ``advantages[n_prompts, G]``."""

from __future__ import annotations

import torch
from jaxtyping import Float

from steerinterp.errors import SteerInterpError


def _check(rewards: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise SteerInterpError(f"rewards must be [n_prompts, G] with G >= 2 samples per prompt, got {tuple(rewards.shape)}")


def rloo_advantages(rewards: Float[torch.Tensor, "prompts group"]) -> Float[torch.Tensor, "prompts group"]:
    """RLOO (the papers'): r_i minus the mean of the other G-1 rewards of the same prompt. No std scaling."""
    _check(rewards)
    g = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return rewards - others


def grpo_no_std_advantages(rewards: Float[torch.Tensor, "prompts group"]) -> Float[torch.Tensor, "prompts group"]:
    """r_i minus the group mean (the first paper's v1 setting). Equals RLOO times (G-1)/G."""
    _check(rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)


def grpo_advantages(
    rewards: Float[torch.Tensor, "prompts group"], eps: float = 1e-6
) -> Float[torch.Tensor, "prompts group"]:
    """GRPO: (r_i - group mean) / (group std + eps), std with Bessel's correction as in DeepSeekMath."""
    _check(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


ADVANTAGES = {"rloo": rloo_advantages, "grpo": grpo_advantages, "grpo_no_std": grpo_no_std_advantages}


def compute_advantages(rewards: torch.Tensor, kind: str = "rloo") -> torch.Tensor:
    if kind not in ADVANTAGES:
        raise SteerInterpError(f"advantage={kind!r}; choose one of {', '.join(ADVANTAGES)}")
    return ADVANTAGES[kind](rewards)
