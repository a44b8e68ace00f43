"""Steering with an SAE feature: its decoder direction as a ``SteeringVector``.

The released code of the papers writes a direction into the last layer's bias scaled by about 8.57,
the norm of that layer's trained vector (PAPER_NOTES section 4.6); ``norm=`` does the same here.
"""

from __future__ import annotations

import torch

from steerinterp.errors import SteerInterpError
from steerinterp.sae.model import as_sae_lens, sae_hook_name
from steerinterp.steering.positions import Positions
from steerinterp.steering.vectors import SteeringVector


def feature_vector(sae, feature: int, *, norm: float | None = None, scale: float = 1.0, hook_name: str | None = None,
                   positions: Positions | str = "all", dtype: torch.dtype | None = None) -> SteeringVector:
    """``W_dec[feature]`` rescaled to ``norm`` (as stored when None) at the SAE's hook.

    Typical use: ``feature_vector(dsae, f, norm=float(vecs[layer].vector.norm()))`` to steer with a
    feature at the strength of the trained vector it came from; ``scale=-1`` steers against it.
    """
    w_dec = as_sae_lens(sae).W_dec.detach()
    if not 0 <= int(feature) < w_dec.shape[0]:
        raise SteerInterpError(f"feature {feature} is out of range; this SAE has {w_dec.shape[0]} features")
    v = w_dec[int(feature)].clone()
    if norm is not None:
        if norm < 0:
            raise SteerInterpError(f"norm must be >= 0, got {norm}; use scale=-1 to steer against the feature")
        v = v / v.norm().clamp_min(1e-30) * norm
    return SteeringVector(v.to(dtype) if dtype is not None else v, sae_hook_name(sae, hook_name), scale, positions)
