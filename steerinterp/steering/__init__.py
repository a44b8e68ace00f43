"""Steering: vectors added at TransformerLens hook points, token-wise adaptive steering, their files.

This room knows hook names, tensors and files; it imports nothing from generation, rl, analysis, sae or app.

    vectors.py    SteeringVector, SteeringSet, resolve_layers
    hooks.py      add_hooks / HookHandle, hook_guard, interrupts_deferred: hooks that never outlive their call
    positions.py  Positions (all / prompt / generated / slice / mask) and the per-chunk TokenContext
    adaptive.py   AdaptiveSteering (rank-1, token-wise magnitudes from the MLP hidden activation)
    protocol.py   Steering: the Protocol every steering object satisfies; as_steering()
    sites.py      the one table TransformerLens hook name <-> Hugging Face module
    io.py         the file format (safetensors + JSON header + SHA-256)
"""

from steerinterp.steering.adaptive import AdaptiveSteering
from steerinterp.steering.hooks import (
    HookHandle,
    add_hooks,
    hook_guard,
    hooks_applied,
    interrupts_deferred,
    leftover_hooks,
)
from steerinterp.steering.positions import Positions, TokenContext
from steerinterp.steering.protocol import Steering, as_steering
from steerinterp.steering.vectors import (
    DEFAULT_HOOK,
    SteeringSet,
    SteeringVector,
    layer_of,
    resolve_layers,
    vector_dtype,
)

__all__ = [
    "DEFAULT_HOOK", "AdaptiveSteering", "HookHandle", "Positions", "Steering", "SteeringSet", "SteeringVector",
    "TokenContext", "add_hooks", "as_steering", "hook_guard", "hooks_applied", "interrupts_deferred", "layer_of",
    "leftover_hooks", "resolve_layers", "vector_dtype",
]
