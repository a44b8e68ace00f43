"""Accepting vectors in the forms users hold them: a SteeringSet, a SteeringVector, or {layer: tensor}."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from steerinterp.errors import SteerInterpError
from steerinterp.steering.vectors import SteeringSet, SteeringVector


def as_vector_dict(vectors) -> dict[int, torch.Tensor]:
    """``{layer: scale * vector}`` (sorted by layer) from a SteeringSet / SteeringVector / mapping."""
    if isinstance(vectors, SteeringVector):
        vectors = SteeringSet([vectors])
    if isinstance(vectors, SteeringSet):
        out = {}
        for v in vectors:
            if v.layer is None:
                raise SteerInterpError(f"vector at {v.hook_name!r} is not at a block; give {{layer: tensor}} instead")
            if v.layer in out:
                raise SteerInterpError(f"two vectors in block {v.layer}; combine them into one (analysis.combine) first")
            out[v.layer] = v.vector.detach() * v.scale
        return dict(sorted(out.items()))
    if isinstance(vectors, Mapping):
        out = {}
        for k, t in vectors.items():
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise SteerInterpError(f"vector for layer {k!r} must be a 1-D tensor, got {type(t).__name__}")
            out[int(k)] = t.detach()
        return dict(sorted(out.items()))
    raise SteerInterpError(f"expected a SteeringSet, SteeringVector or {{layer: tensor}}, got {type(vectors).__name__}")


def single_layer_sets(model, vectors) -> dict[int, SteeringSet]:
    """``{layer: SteeringSet}`` with one layer's vector each. Vectors of a SteeringSet keep their hook,
    scale and positions; plain tensors go to ``blocks.{layer}.hook_resid_post``."""
    if isinstance(vectors, SteeringVector):
        vectors = SteeringSet([vectors])
    if isinstance(vectors, SteeringSet):
        return {layer: vectors.subset([layer]) for layer in as_vector_dict(vectors)}
    return {layer: SteeringSet.from_tensors(model, {layer: t}) for layer, t in as_vector_dict(vectors).items()}
