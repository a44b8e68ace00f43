"""The small slice of the TransformerLens hook API that steerinterp relies on.

Typing model parameters with this Protocol instead of ``HookedTransformer`` keeps the move to
TransformerLens 4.x's ``TransformerBridge`` contained: both satisfy it (tested).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class HookedModel(Protocol):
    """A model with named ``HookPoint`` s: ``HookedTransformer`` or ``TransformerBridge``."""

    cfg: Any
    tokenizer: Any
    hook_dict: dict[str, Any]

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., reset_hooks_end: bool = ...) -> Any: ...

    def run_with_hooks(self, *model_args: Any, fwd_hooks: Any = ..., **model_kwargs: Any) -> Any: ...

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (wraps the HF modules themselves)."""
    return type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model")
