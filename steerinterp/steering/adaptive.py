"""Adaptive (token-wise) steering: a rank-1 update of the MLP output (the papers' LoRA-1, section 10).

For each steered layer l: ``mlp_out(t) += b * (a . u_t)``, where ``u_t`` is the MLP's hidden activation
(the input of ``down_proj``; TransformerLens ``blocks.l.mlp.hook_post``), ``a`` in R^d_mlp and ``b`` in
R^d_model. Read it as a fixed direction ``b / |b|`` with a per-token signed magnitude
``m_t = |b| * a . u_t``. Initialisation follows PEFT's LoRA: ``a`` Kaiming-uniform, ``b = 0``, so
training starts with zero effect.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn

from steerinterp._files import atomic_write_bytes
from steerinterp.errors import SteerInterpError
from steerinterp.steering.hooks import hooks_applied
from steerinterp.steering.positions import TokenContext
from steerinterp.steering.vectors import check_finite, resolve_layers
from steerinterp.types import model_device


class AdaptiveSteering:
    """Rank-1 token-wise steering at one or more layers (trainable ``a`` and ``b`` per layer)."""

    def __init__(self, a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]):
        if set(a) != set(b):
            raise SteerInterpError("adaptive steering needs a and b for the same layers")
        self.a = dict(sorted(a.items()))
        self.b = dict(sorted(b.items()))

    @classmethod
    def init(cls, model, layers: str | int | Iterable[int] = "all", *, seed: int = 0) -> AdaptiveSteering:
        """PEFT-style initialisation: a ~ Kaiming-uniform(a=sqrt(5)) on [1, d_mlp], b = 0."""
        device = model_device(model)
        g = torch.Generator().manual_seed(seed)
        a, b = {}, {}
        for layer in resolve_layers(model, layers):
            bound = 1.0 / math.sqrt(model.cfg.d_mlp)  # kaiming_uniform(a=sqrt(5)) on fan_in = d_mlp
            a[layer] = nn.Parameter((torch.rand(model.cfg.d_mlp, generator=g) * 2 - 1).mul_(bound).to(device))
            b[layer] = nn.Parameter(torch.zeros(model.cfg.d_model, device=device))
        return cls(a, b)

    @property
    def layers(self) -> list[int]:
        return list(self.a)

    def __len__(self) -> int:
        return len(self.a)

    def parameters(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (self.a[layer], self.b[layer]) if t.requires_grad]

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"a.{k}": v for k, v in self.a.items()}, **{f"b.{k}": v for k, v in self.b.items()}}

    def validate(self, model) -> None:
        for layer in self.layers:
            if f"blocks.{layer}.mlp.hook_post" not in model.hook_dict:
                raise SteerInterpError(f"the model has no blocks.{layer}.mlp.hook_post (gated MLP) for adaptive steering")
            if self.a[layer].shape[0] != model.cfg.d_mlp or self.b[layer].shape[0] != model.cfg.d_model:
                raise SteerInterpError(f"adaptive steering at layer {layer} does not fit this model's widths")
            check_finite(f"adaptive a.{layer}", self.a[layer])
            check_finite(f"adaptive b.{layer}", self.b[layer])

    def magnitude(self, layer: int, u: torch.Tensor) -> torch.Tensor:
        """Signed per-token magnitude m_t = |b| (a . u_t) for hidden activations u [..., d_mlp]."""
        return self.b[layer].norm() * (u @ self.a[layer].to(u.dtype))

    def fwd_hooks(self, context: TokenContext | None = None) -> list[tuple[str, object]]:
        """TransformerLens hooks: capture the MLP hidden ``u`` (``mlp.hook_post``), add ``b (a . u)`` at
        ``hook_mlp_out``. Token-wise by construction, so ``context`` is not needed."""
        captured: dict[int, torch.Tensor] = {}
        pairs = []
        for layer in self.layers:

            def capture(act, hook, layer=layer):
                captured[layer] = act
                return None

            def add(act, hook, layer=layer):
                u = captured.pop(layer)
                coef = u @ self.a[layer].to(u.dtype)
                return act + coef[..., None] * self.b[layer].to(act.dtype)

            pairs += [(f"blocks.{layer}.mlp.hook_post", capture), (f"blocks.{layer}.hook_mlp_out", add)]
        return pairs

    @contextlib.contextmanager
    def applied(self, model, *, prompt_mask=None, attention_mask=None, context: TokenContext | None = None):
        """Add the rank-1 updates inside the block; hooks are removed on exit (also after errors)."""
        self.validate(model)
        with hooks_applied(model, self.fwd_hooks(context)):
            yield model

    def detached(self) -> AdaptiveSteering:
        return AdaptiveSteering({k: v.detach().clone() for k, v in self.a.items()},
                                {k: v.detach().clone() for k, v in self.b.items()})

    def save(self, path) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.named_tensors().items()}
        atomic_write_bytes(path, save(tensors, metadata={"format": "steerinterp.adaptive/1"}))

    @classmethod
    def load(cls, path, model=None) -> AdaptiveSteering:
        from safetensors.torch import load_file

        t = load_file(str(path))
        a = {int(k.split(".")[1]): v for k, v in t.items() if k.startswith("a.")}
        b = {int(k.split(".")[1]): v for k, v in t.items() if k.startswith("b.")}
        out = cls(a, b)
        if model is not None:
            out.validate(model)
        return out
