"""Training checkpoints: written atomically (a crash mid-write leaves the previous one intact)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from steerinterp._files import atomic_dir
from steerinterp.errors import SteerInterpError

STATE_FILE = "state.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write ``state`` as the checkpoint directory ``directory`` (``RunDir.checkpoint_dir``)."""
    target = Path(directory)
    with atomic_dir(target) as tmp:
        torch.save(state, tmp / STATE_FILE)
    return target


def load_checkpoint(directory: Path) -> dict | None:
    """The state saved in the checkpoint directory ``directory``, or None when there is none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise SteerInterpError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e
