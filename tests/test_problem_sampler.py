import random

import pytest

from steerinterp.errors import SteerInterpError
from steerinterp.rl.problem_sampler import ProblemSampler


def test_epochs_visit_every_problem_once_in_a_seeded_order():
    s = ProblemSampler(10, seed=3)
    draws = [s.draw(4, step) for step in range(5)]  # 20 problems = 2 epochs
    assert all(n_replayed == 0 for _, n_replayed in draws)
    flat = [i for picks, _ in draws for i in picks]
    for epoch in range(2):  # the order the trainer always used, so earlier runs stay reproducible
        order = list(range(10))
        random.Random(3 * 7919 + epoch).shuffle(order)
        assert flat[10 * epoch : 10 * (epoch + 1)] == order


def test_learnability_replays_mixed_problems_in_proportion_to_p_times_one_minus_p():
    s = ProblemSampler(10, seed=0, mode="learnability", replay_fraction=0.5)
    s.record([0, 1, 2, 3], [1.0, 0.0, 0.5, 0.25])  # 0 and 1 give RLOO no signal
    counts = {2: 0, 3: 0}
    both = 0
    for step in range(4000):
        picks, n_replayed = s.draw(2, step)
        assert len(picks) == 2 and n_replayed == 1
        replayed = picks[-1]
        assert replayed in (2, 3) and replayed != picks[0]
        if picks[0] not in (2, 3):  # both were candidates
            counts[replayed] += 1
            both += 1
    assert abs(counts[2] / both - 0.25 / (0.25 + 0.1875)) < 0.03


def test_learnability_falls_back_to_epochs_and_records_the_latest_group():
    s = ProblemSampler(6, seed=0, mode="learnability", replay_fraction=0.5)
    picks, n_replayed = s.draw(4, 0)
    assert n_replayed == 0 and sorted(picks) == sorted(set(picks))  # nothing seen yet: all from the epoch
    s.record([5], [0.5])
    s.record([5], [1.0])  # solved since: no longer learnable
    assert s.learnability(5) == 0.0 and s.draw(4, 1)[1] == 0


def test_state_round_trip_draws_the_same_problems():
    a = ProblemSampler(12, seed=1, mode="learnability")
    a.record(range(12), [i / 11 for i in range(12)])
    a.draw(5, 0)
    b = ProblemSampler(12, seed=1, mode="learnability")
    b.load_state_dict({k: (dict(v) if isinstance(v, dict) else v) for k, v in a.state_dict().items()})
    assert [a.draw(5, step) for step in range(1, 6)] == [b.draw(5, step) for step in range(1, 6)]


def test_bad_settings():
    with pytest.raises(SteerInterpError, match="problem_sampling='hardest'; use one of epochs, learnability"):
        ProblemSampler(3, 0, mode="hardest")
    with pytest.raises(SteerInterpError, match=r"replay_fraction must be in \[0, 1\], got 1.5"):
        ProblemSampler(3, 0, mode="learnability", replay_fraction=1.5)
