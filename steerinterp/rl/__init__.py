"""Reinforcement learning of steering vectors (RLOO, as in the papers)."""

from steerinterp.rl.advantages import compute_advantages, grpo_advantages, grpo_no_std_advantages, rloo_advantages
from steerinterp.rl.loss import reinforce_loss
from steerinterp.rl.trainer import TrainConfig, Trainer, TrainResult, train

__all__ = [
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
