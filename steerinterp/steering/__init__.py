"""Steering: vectors added at TransformerLens hook points, token-wise adaptive steering, their files.

This room knows hook names, tensors and files; it imports nothing from generation, rl, analysis, sae or app.

    vectors.py    SteeringVector, SteeringSet, add_hooks / HookHandle, resolve_layers
    positions.py  Positions (all / prompt / generated / slice / mask) and the per-chunk TokenContext
    adaptive.py   AdaptiveSteering (rank-1, token-wise magnitudes from the MLP hidden activation)
    protocol.py   Steering: the Protocol every steering object satisfies; as_steering()
    sites.py      the one table TransformerLens hook name <-> Hugging Face module
    io.py         the file format (safetensors + JSON header + SHA-256)
"""

from steerinterp.steering.adaptive import AdaptiveSteering
from steerinterp.steering.positions import Positions, TokenContext
from steerinterp.steering.protocol import Steering, as_steering
from steerinterp.steering.vectors import (
    DEFAULT_HOOK,
    HookHandle,
    SteeringSet,
    SteeringVector,
    add_hooks,
    layer_of,
    resolve_layers,
    vector_dtype,
)

__all__ = [
    "DEFAULT_HOOK", "AdaptiveSteering", "HookHandle", "Positions", "Steering", "SteeringSet", "SteeringVector",
    "TokenContext", "add_hooks", "as_steering", "layer_of", "resolve_layers", "vector_dtype",
]
