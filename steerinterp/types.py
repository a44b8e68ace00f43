"""The ground floor every room stands on: the hook-API Protocol, and the few facts any code asks of a model.

Typing model parameters with ``HookedModel`` instead of ``HookedTransformer`` keeps the move to
TransformerLens 4.x's ``TransformerBridge`` contained: both satisfy it (tested).

``model_device`` and ``pad_token_id`` are the one place that answers "where does this model live" and
"which id pads a batch". ``ModelSpec`` is how a model was loaded (name or path, dtype, processed or not,
context, backend); ``load_model`` records it and ``model_spec(model)`` reads it back, so saved vectors and
run directories can say which model they belong to. It is kept in a weak table, not on the model.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch


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
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


def model_device(model: Any) -> torch.device:
    """The device of a model's weights (its config's device for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device(getattr(getattr(model, "cfg", None), "device", None) or "cpu")


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        from steerinterp.errors import SteerInterpError

        raise SteerInterpError("the tokenizer has neither a pad nor an end-of-sequence token; set tokenizer.pad_token")
    return int(pad)


@dataclass(frozen=True)
class ModelSpec:
    """How a model was loaded: enough to load the same model again (``load_model(**spec.load_kwargs())``).

    ``name`` is what was passed to ``load_model`` ("embedded", "tiny", a local directory or a
    TransformerLens name); ``finetuned`` the weights of a full fine-tuning run loaded on top.
    """

    name: str = "embedded"
    dtype: str = "float32"
    processed: bool = False
    n_ctx: int | None = None
    backend: str = "hooked"
    finetuned: str | None = None
    tiny: dict | None = None  # the TinyConfig fields of a non-default tiny model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> ModelSpec:
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def describe(self) -> str:
        """One line for tables and reports."""
        extra = [self.dtype] + (["processed"] if self.processed else []) + \
                ([f"n_ctx {self.n_ctx}"] if self.n_ctx else []) + ([self.backend] if self.backend != "hooked" else [])
        base = f"{self.name} + fine-tuned {self.finetuned}" if self.finetuned else self.name
        return f"{base} ({', '.join(extra)})"


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def record_model_spec(model: Any, spec: ModelSpec) -> None:
    """Remember how ``model`` was loaded (``load_model`` calls this)."""
    _SPECS[model] = spec


def model_spec(model: Any) -> ModelSpec | None:
    """How ``model`` was loaded, or None for a model ``load_model`` did not make."""
    try:
        return _SPECS.get(model)
    except TypeError:
        return None


def model_fingerprint(model: Any) -> str:
    """A short digest of a model's weights (names, shapes, dtypes and an evenly spaced sample of values).

    Two models with the same architecture but other weights (another checkpoint, a fine-tuned variant)
    get different fingerprints; computing it reads a few thousand values per tensor, not the whole model."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.float64)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
