"""Reinforcement learning of steering vectors (RLOO, as in the papers)."""

from steerinterp.rl.advantages import compute_advantages, grpo_advantages, grpo_no_std_advantages, rloo_advantages
from steerinterp.rl.loss import reinforce_loss
from steerinterp.rl.parametrisations import (
    PARAMETRISATIONS,
    FullWeights,
    Parametrisation,
    get_parametrisation,
    register_parametrisation,
    select_full_params,
)
from steerinterp.rl.trainer import TrainConfig, Trainer, TrainResult, train

__all__ = [
    "PARAMETRISATIONS",
    "FullWeights",
    "Parametrisation",
    "get_parametrisation",
    "register_parametrisation",
    "select_full_params",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "compute_advantages",
    "grpo_advantages",
    "grpo_no_std_advantages",
    "reinforce_loss",
    "rloo_advantages",
    "train",
]
