"""What a steering object is, for every room that applies one (generation engines, the trainer, analyses).

``SteeringSet`` (additive vectors) and ``AdaptiveSteering`` (token-wise rank-1) satisfy ``Steering``; so can
a user's own class. Everything a steering object does to a forward pass is a list of TransformerLens
``(hook_name, fn)`` pairs (``fwd_hooks``): engines that run another implementation of the network map
those names to their own modules through ``steerinterp.steering.sites``, so no steering object knows
about them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from steerinterp.errors import SteerInterpError
from steerinterp.steering.positions import TokenContext

HookFn = Callable[..., Any]  # TransformerLens hook: fn(activation, hook) -> activation or None


@runtime_checkable
class Steering(Protocol):
    """A steering object: where it acts (``layers``), a fit check, its hooks, and a context manager."""

    @property
    def layers(self) -> list: ...

    def __len__(self) -> int: ...

    def validate(self, model: Any) -> None: ...

    def fwd_hooks(self, context: TokenContext | None = None) -> list[tuple[str, HookFn]]: ...

    def applied(self, model: Any, *, prompt_mask: Any = None, attention_mask: Any = None,
                context: TokenContext | None = None) -> Any: ...


def as_steering(steering: Any) -> Steering | None:
    """None, a ``Steering`` object as it is, or a lone ``SteeringVector`` wrapped in a ``SteeringSet``."""
    from steerinterp.steering.vectors import SteeringSet, SteeringVector

    if steering is None or isinstance(steering, SteeringSet):
        return steering
    if isinstance(steering, SteeringVector):
        return SteeringSet([steering])
    if isinstance(steering, Steering):
        return steering
    raise SteerInterpError(
        f"steering must be a SteeringSet, a SteeringVector or an object with the Steering protocol "
        f"(layers, validate, fwd_hooks, applied); got {type(steering).__name__}"
    )
