"""What RL trains: parametrisations, found by name in one registry (like the advantages).

A parametrisation turns "the thing being trained" into named tensors for the optimizer and the
checkpoint, says what generation should apply while sampling, and writes the final result:

* ``vector``: a ``SteeringSet`` of trainable vectors (the papers'; zeros by default);
* ``adaptive``: an ``AdaptiveSteering`` (rank-1, token-wise; PEFT-style initialisation by default);
* ``adaptive_fixed_read``: the same with the read vector ``a`` frozen at its initialisation (only the write
  direction ``b`` trains): the control that tells what training ``a`` adds to where the magnitude goes;
* ``full``: the model's own weights (``FullWeights``: the parameters chosen by name), the fine-tuning
  baseline.

The ``Trainer`` takes the trained object (``steering=``) or asks the parametrisation for its default, and
never branches on the name. A new parametrisation is a class with this Protocol, passed to
``register_parametrisation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from steerinterp._files import atomic_write_bytes
from steerinterp.errors import SteerInterpError
from steerinterp.steering import AdaptiveSteering, Steering, SteeringSet


@runtime_checkable
class Parametrisation(Protocol):
    """How one kind of trained object is built, optimised, applied and saved."""

    name: str
    trains_weights: bool  # True: the pass needs gradients to the model's weights

    def default(self, model: Any, config: Any) -> Any:
        """What to train when the caller gives nothing (from ``config.layers``, ``config.seed``, ...)."""

    def check(self, model: Any, trained: Any) -> None:
        """Refuse, with a one-line error, an object this parametrisation cannot train."""

    def tensors(self, trained: Any) -> dict[str, torch.Tensor]:
        """The named trainable tensors (optimizer and checkpoint keys)."""

    def steering(self, trained: Any) -> Steering | None:
        """What generation and the gradient pass apply (None when the weights themselves are trained)."""

    def stats(self, trained: Any) -> dict:
        """Per-step numbers for the metrics (norms)."""

    def save_final(self, trained: Any, model: Any, directory: Path, info: Mapping) -> Path:
        """Write the trained result into ``directory``; return the file written."""


PARAMETRISATIONS: dict[str, Parametrisation] = {}


def register_parametrisation(p: Parametrisation) -> Parametrisation:
    """Add ``p`` to the registry under ``p.name`` (replacing one of the same name)."""
    if not isinstance(p, Parametrisation):
        raise SteerInterpError(f"{type(p).__name__} does not implement the Parametrisation protocol")
    PARAMETRISATIONS[p.name] = p
    return p


def get_parametrisation(name: str) -> Parametrisation:
    if name not in PARAMETRISATIONS:
        raise SteerInterpError(f"parametrisation={name!r}; choose one of {', '.join(PARAMETRISATIONS)}")
    return PARAMETRISATIONS[name]


class VectorParametrisation:
    name = "vector"
    trains_weights = False

    def default(self, model, config) -> SteeringSet:
        return SteeringSet.zeros(model, config.layers)

    def check(self, model, trained) -> None:
        if not isinstance(trained, SteeringSet):
            raise SteerInterpError(f"parametrisation 'vector' trains a SteeringSet, got {type(trained).__name__}")
        frozen = [v.hook_name for v in trained if not v.trainable]
        if frozen or not len(trained):
            raise SteerInterpError(
                f"the vector at {frozen[0]} is not trainable; build the set with trainable=True "
                "(SteeringSet.zeros, from_tensors(..., trainable=True) or load(..., trainable=True))"
                if frozen else "the steering set is empty; nothing to train")
        trained.validate(model)

    def tensors(self, trained: SteeringSet) -> dict[str, torch.Tensor]:
        return {v.hook_name: v.vector for v in trained}

    def steering(self, trained: SteeringSet) -> SteeringSet:
        return trained

    def stats(self, trained: SteeringSet) -> dict:
        norms = [float(v.vector.detach().norm()) for v in trained]
        return {"vector_norm_mean": sum(norms) / len(norms), "vector_norm_max": max(norms), "vector_norms": norms}

    def save_final(self, trained: SteeringSet, model, directory: Path, info: Mapping) -> Path:
        return trained.save(directory, model=model, info=info)


class AdaptiveParametrisation:
    name = "adaptive"
    trains_weights = False

    def default(self, model, config) -> AdaptiveSteering:
        return AdaptiveSteering.init(model, config.layers, seed=config.seed)

    def check(self, model, trained) -> None:
        if not isinstance(trained, AdaptiveSteering):
            raise SteerInterpError(f"parametrisation 'adaptive' trains an AdaptiveSteering, got {type(trained).__name__}")
        trained.validate(model)

    def tensors(self, trained: AdaptiveSteering) -> dict[str, torch.Tensor]:
        return trained.named_tensors()

    def steering(self, trained: AdaptiveSteering) -> AdaptiveSteering:
        return trained

    def stats(self, trained: AdaptiveSteering) -> dict:
        return {"b_norms": [float(trained.b[k].detach().norm()) for k in trained.layers]}

    def save_final(self, trained: AdaptiveSteering, model, directory: Path, info: Mapping) -> Path:
        path = Path(directory) / "adaptive.safetensors"
        trained.save(path)
        return path


class AdaptiveFixedReadParametrisation(AdaptiveParametrisation):
    """Adaptive steering with ``a`` frozen at its (seeded) initialisation; only ``b`` is trained."""

    name = "adaptive_fixed_read"

    def default(self, model, config) -> AdaptiveSteering:
        trained = AdaptiveSteering.init(model, config.layers, seed=config.seed)
        for a in trained.a.values():
            a.requires_grad_(False)
        return trained

    def check(self, model, trained) -> None:
        super().check(model, trained)
        if any(a.requires_grad for a in trained.a.values()):
            raise SteerInterpError("parametrisation 'adaptive_fixed_read' keeps a fixed: pass an AdaptiveSteering whose "
                                   "a tensors have requires_grad=False (or use parametrisation='adaptive')")

    def tensors(self, trained: AdaptiveSteering) -> dict[str, torch.Tensor]:
        return {f"b.{k}": v for k, v in trained.b.items()}


@dataclass
class FullWeights:
    """The model's own parameters chosen for full fine-tuning (name -> the live parameter)."""

    params: dict[str, torch.nn.Parameter]


def select_full_params(model, patterns: Sequence[str] | None) -> dict[str, torch.nn.Parameter]:
    """Parameters whose names contain one of ``patterns`` (all when None).

    TransformerLens gives Llama-style blocks bias parameters (``b_Q``, ``b_in``, ...) that are
    structurally zero and absent from the original model; they are left out unless named in full.
    """
    named = {
        n: p
        for n, p in model.named_parameters()
        if not (n.rsplit(".", 1)[-1].lstrip("_").startswith("b_") and not p.detach().any() and n not in (patterns or ()))
    }
    if not patterns:
        return named
    chosen = {n: p for n, p in named.items() if any(pat in n for pat in patterns)}
    if not chosen:
        raise SteerInterpError(f"no parameter name contains any of {list(patterns)}; e.g. 'blocks.29.mlp', 'W_U'")
    return chosen


class FullParametrisation:
    name = "full"
    trains_weights = True

    def default(self, model, config) -> FullWeights:
        params = select_full_params(model, config.full_params)
        model.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        return FullWeights(params)

    def check(self, model, trained) -> None:
        if not isinstance(trained, FullWeights):
            raise SteerInterpError("parametrisation 'full' trains the model's weights; leave steering=None")

    def tensors(self, trained: FullWeights) -> dict[str, torch.Tensor]:
        return trained.params

    def steering(self, trained: FullWeights) -> None:
        return None

    def stats(self, trained: FullWeights) -> dict:
        with torch.no_grad():
            return {"param_norm": float(torch.sqrt(sum((p.float() ** 2).sum() for p in trained.params.values())))}

    def save_final(self, trained: FullWeights, model, directory: Path, info: Mapping) -> Path:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in trained.params.items()}
        path = Path(directory) / "weights.safetensors"
        atomic_write_bytes(path, save(tensors, metadata={"format": "steerinterp.full/1"}))
        return path


for _p in (VectorParametrisation(), AdaptiveParametrisation(), AdaptiveFixedReadParametrisation(),
           FullParametrisation()):
    register_parametrisation(_p)
