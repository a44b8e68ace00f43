"""Which training problems an RL step uses.

``"epochs"`` (the papers'): every problem once per epoch, in an order shuffled by (seed, epoch).

``"learnability"``: the same epochs for part of each step, and the rest of the step's prompts replayed
from problems already seen, drawn with probability proportional to ``p (1 - p)``, where ``p`` is the
fraction of the problem's last group of samples that was correct (Foster & Foerster, "Learning to Reason
at the Frontier of Learnability", 2025). Problems the policy always solves, or never does, give RLOO no
signal (every advantage is 0); ``p (1 - p)`` is largest where the group's rewards are most mixed, so
replay spends samples where the gradient is. The epoch part keeps visiting every problem.

The state (epoch, position, last accuracies) goes into checkpoints, so resumed runs draw the same problems.
Every process of a distributed run draws the same list and records the same gathered accuracies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from steerinterp.errors import SteerInterpError

PROBLEM_SAMPLING = ("epochs", "learnability")


class ProblemSampler:
    def __init__(self, n_problems: int, seed: int, mode: str = "epochs", replay_fraction: float = 0.5):
        if mode not in PROBLEM_SAMPLING:
            raise SteerInterpError(f"problem_sampling={mode!r}; use one of {', '.join(PROBLEM_SAMPLING)}",
                                   setting="problem_sampling")
        if not 0 <= replay_fraction <= 1:
            raise SteerInterpError(f"replay_fraction must be in [0, 1], got {replay_fraction}", setting="replay_fraction")
        self.n, self.seed, self.mode, self.replay_fraction = n_problems, seed, mode, replay_fraction
        self.epoch, self.position = 0, 0
        self.accuracy: dict[int, float] = {}  # problem index -> fraction correct in its last group

    def order(self, epoch: int) -> list[int]:
        idx = list(range(self.n))
        random.Random(self.seed * 7919 + epoch).shuffle(idx)
        return idx

    def _from_epochs(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self.order(self.epoch)
            take = order[self.position : self.position + n - len(out)]
            out += take
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def learnability(self, index: int) -> float:
        p = self.accuracy.get(index)
        return 0.0 if p is None else p * (1.0 - p)

    def draw(self, n: int, step: int) -> tuple[list[int], int]:
        """The problem indices of one step, and how many of them (at the end) were replayed."""
        k = round(self.replay_fraction * n) if self.mode == "learnability" else 0
        picks = self._from_epochs(n - k)
        candidates = [i for i in sorted(self.accuracy) if i not in picks and self.learnability(i) > 0]
        rng = random.Random((self.seed * 1_000_003 + step) * 31 + 7)
        replay: list[int] = []
        while len(replay) < k and candidates:
            weights = [self.learnability(i) for i in candidates]
            replay.append(candidates.pop(rng.choices(range(len(candidates)), weights=weights)[0]))
        if len(replay) < k:  # too few learnable problems seen yet: fill from the epochs
            picks += self._from_epochs(k - len(replay))
        return picks + replay, len(replay)

    def record(self, indices: Sequence[int], accuracies: Sequence[float]) -> None:
        for i, p in zip(indices, accuracies):
            self.accuracy[int(i)] = float(p)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "accuracy": dict(self.accuracy)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.accuracy = {int(k): float(v) for k, v in state.get("accuracy", {}).items()}
