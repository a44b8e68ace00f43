import pytest
import torch

from steerinterp.errors import SteerInterpError
from steerinterp.rl.advantages import compute_advantages, grpo_advantages, grpo_no_std_advantages, rloo_advantages
from steerinterp.rl.loss import reinforce_loss


def test_rloo_by_hand():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    # prompt 0: sample 0 -> 1 - mean(-1,-1,1) = 1 + 1/3; sample 1 -> -1 - mean(1,-1,1) = -1 - 1/3
    want = torch.tensor([[4 / 3, -4 / 3, -4 / 3, 4 / 3], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rloo_advantages(r), want)


def test_grpo_variants_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(grpo_no_std_advantages(r), torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()  # unbiased: 0.5
    assert torch.allclose(grpo_advantages(r), torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + 1e-6))
    # RLOO = G/(G-1) x group-mean baseline
    assert torch.allclose(rloo_advantages(r), grpo_no_std_advantages(r) * 4 / 3)


def test_bad_advantage_input():
    with pytest.raises(SteerInterpError, match="G >= 2"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(SteerInterpError, match="advantage"):
        compute_advantages(torch.ones(2, 2), "ppo")


def test_loss_is_token_normalised_over_the_whole_batch():
    lp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -3.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]]).bool()
    adv = torch.tensor([2.0, -1.0])
    # -(2 * (-3) + (-1) * (-3)) / 3 tokens = -(-6 + 3) / 3 = 1
    assert torch.isclose(reinforce_loss(lp, mask, adv), torch.tensor(1.0))
    # splitting into micro-batches with the global token count adds up to the same loss
    parts = sum(reinforce_loss(lp[i : i + 1], mask[i : i + 1], adv[i : i + 1], n_tokens=3) for i in range(2))
    assert torch.isclose(parts, torch.tensor(1.0))
    # not per-sequence normalised: a longer completion weighs more
    assert not torch.isclose(reinforce_loss(lp, mask, adv), -(2 * -1.5 + -1 * -3.0) / 2 * torch.ones(()))
