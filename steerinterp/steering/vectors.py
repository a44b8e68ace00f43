"""Steering vectors as additions at TransformerLens ``HookPoint`` s.

A ``SteeringVector`` is one d_model tensor added at one hook (default ``blocks.{l}.hook_resid_post``,
i.e. after block l, as in the papers), times a scale, at the positions its ``Positions`` selects.
A ``SteeringSet`` holds several (typically one per layer). Hooks are added only through
``applied()`` (a context manager) or ``attach()`` (a handle with ``remove()``), so an exception never
leaves a hook on a model.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import nn

from steerinterp.errors import SteeringFileError, SteerInterpError
from steerinterp.steering.hooks import HookHandle, add_hooks, hook_point, hooks_applied
from steerinterp.steering.io import read_vectors, vector_file, write_vectors
from steerinterp.steering.positions import Positions, TokenContext
from steerinterp.types import HookedModel, model_device, model_spec

DEFAULT_HOOK = "blocks.{layer}.hook_resid_post"
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def layer_of(hook_name: str) -> int | None:
    """Block index of a hook name (``blocks.12.hook_resid_post`` -> 12), None outside blocks."""
    m = _LAYER_RE.match(hook_name)
    return int(m.group(1)) if m else None


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t.detach()).all():
        raise SteerInterpError(f"steering vector {name} contains NaN or inf values; refusing to use it")


def check_scale(name: str, scale) -> float:
    """``scale`` as a finite float, or a ``SteerInterpError`` (a NaN scale would silently zero every answer)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise SteerInterpError(f"steering vector {name} has scale {scale!r} ({type(scale).__name__}); pass a float")
    scale = float(scale)
    if not math.isfinite(scale):
        raise SteerInterpError(f"steering vector {name} has scale {scale}; a scale must be a finite number")
    return scale


@dataclass(eq=False)
class SteeringVector:
    """One vector added at one hook point: ``act + scale * vector`` at the selected positions."""

    vector: Float[torch.Tensor, "d_model"]
    hook_name: str
    scale: float = 1.0
    positions: Positions = field(default_factory=Positions.all)

    def __post_init__(self):
        if not isinstance(self.vector, torch.Tensor) or self.vector.dim() != 1:
            raise SteerInterpError(f"a steering vector for {self.hook_name} must be a 1-D tensor of size d_model")
        if not self.vector.is_floating_point():
            raise SteerInterpError(f"steering vector for {self.hook_name} must be floating point")
        check_finite(self.hook_name, self.vector)
        self.scale = check_scale(self.hook_name, self.scale)
        self.positions = Positions.parse(self.positions)

    @property
    def layer(self) -> int | None:
        return layer_of(self.hook_name)

    @property
    def trainable(self) -> bool:
        return isinstance(self.vector, nn.Parameter) and self.vector.requires_grad

    def delta(self, like: torch.Tensor) -> torch.Tensor:
        """``scale * vector`` in the dtype and device of an activation."""
        v = self.vector if self.scale == 1.0 else self.vector * self.scale
        return v.to(device=like.device, dtype=like.dtype)

    def make_hook(self, ctx: TokenContext | None = None):
        """A TransformerLens hook function ``fn(act, hook)`` that adds this vector."""

        def steer(act: torch.Tensor, hook) -> torch.Tensor:
            if act.shape[-1] != self.vector.shape[0]:
                raise SteerInterpError(
                    f"{hook.name} has width {act.shape[-1]} but the steering vector has {self.vector.shape[0]}; "
                    "steer a d_model hook such as blocks.L.hook_resid_post"
                )
            delta = self.delta(act)
            if act.dim() < 3:
                return act + delta
            sel = self.positions.select(ctx, act.shape[0], act.shape[1], act.device)
            if sel is None:
                return act + delta
            sel = sel.to(act.dtype).reshape(sel.shape + (1,) * (act.dim() - 2))
            return act + sel * delta

        steer.__name__ = f"steer[{self.hook_name}]"
        return steer


class SteeringSet:
    """Several steering vectors applied together (e.g. one per layer)."""

    def __init__(self, vectors: Iterable[SteeringVector] = (), *, info: Mapping | None = None):
        self.vectors: list[SteeringVector] = list(vectors)
        names = [v.hook_name for v in self.vectors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SteerInterpError(f"two vectors at the same hook {dup!r}; add them into one vector")
        self.info: dict = dict(info or {})

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def zeros(
        cls,
        model: HookedModel,
        layers: str | int | Iterable[int] = "all",
        *,
        hook: str = DEFAULT_HOOK,
        trainable: bool = True,
        positions: Positions | str | None = None,
        scale: float = 1.0,
    ) -> SteeringSet:
        """Zero-initialised vectors (the papers' initialisation), trainable ``nn.Parameter`` s by default."""
        device = model_device(model)
        vecs = []
        for layer in resolve_layers(model, layers):
            t = torch.zeros(model.cfg.d_model, device=device, dtype=vector_dtype(model))
            v = nn.Parameter(t, requires_grad=True) if trainable else t
            vecs.append(SteeringVector(v, hook.format(layer=layer), scale, Positions.parse(positions)))
        out = cls(vecs)
        out.validate(model)
        return out

    @classmethod
    def from_tensors(
        cls,
        model: HookedModel,
        tensors: Mapping[int, torch.Tensor],
        *,
        hook: str = DEFAULT_HOOK,
        trainable: bool = False,
        positions: Positions | str | None = None,
        scale: float = 1.0,
    ) -> SteeringSet:
        """Vectors from ``{layer: tensor}`` (fixed by default; copies, so the caller's tensors stay put)."""
        device = model_device(model)
        resolve_layers(model, list(tensors))
        vecs = []
        for layer, t in sorted(tensors.items()):
            t = torch.as_tensor(t).detach().to(device=device, dtype=vector_dtype(model)).clone()
            v = nn.Parameter(t, requires_grad=True) if trainable else t
            vecs.append(SteeringVector(v, hook.format(layer=layer), scale, Positions.parse(positions)))
        out = cls(vecs)
        out.validate(model)
        return out

    # ---- views ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.vectors)

    def __iter__(self) -> Iterator[SteeringVector]:
        return iter(self.vectors)

    def __getitem__(self, layer: int) -> SteeringVector:
        for v in self.vectors:
            if v.layer == layer:
                return v
        raise KeyError(f"no steering vector at layer {layer} (layers: {self.layers})")

    def __repr__(self) -> str:
        norms = ", ".join(f"{v.hook_name}: |s|={v.vector.detach().norm():.3g}" for v in self.vectors[:4])
        more = f", ... ({len(self)} vectors)" if len(self) > 4 else ""
        return f"SteeringSet({norms}{more})"

    @property
    def layers(self) -> list[int]:
        return [v.layer for v in self.vectors]

    @property
    def hook_names(self) -> list[str]:
        return [v.hook_name for v in self.vectors]

    @property
    def tensors(self) -> dict[int, torch.Tensor]:
        """``{layer: vector}`` (the live tensors, not copies)."""
        out = {}
        for v in self.vectors:
            if v.layer is None or v.layer in out:
                raise SteerInterpError("tensors needs one vector per block; use .vectors for other hooks")
            out[v.layer] = v.vector
        return out

    def parameters(self) -> list[nn.Parameter]:
        """The trainable vectors (to hand to an optimizer)."""
        return [v.vector for v in self.vectors if v.trainable]

    # ---- transformations (new sets; tensors shared unless cloned) --------------------------------
    def scaled(self, factor: float) -> SteeringSet:
        """The same vectors with every scale multiplied by ``factor`` (a finite number)."""
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor):
            raise SteerInterpError(f"scaled(factor={factor!r}): the factor must be a finite number")
        return SteeringSet([replace(v, scale=v.scale * factor) for v in self.vectors], info=self.info)

    def with_positions(self, positions: Positions | str | slice | torch.Tensor) -> SteeringSet:
        p = Positions.parse(positions)
        return SteeringSet([replace(v, positions=p) for v in self.vectors], info=self.info)

    def subset(self, layers: Iterable[int]) -> SteeringSet:
        keep = set(layers)
        return SteeringSet([v for v in self.vectors if v.layer in keep], info=self.info)

    def detached(self) -> SteeringSet:
        """Fixed copies of the vectors (no grad), e.g. for evaluation after training."""
        return SteeringSet([replace(v, vector=v.vector.detach().clone()) for v in self.vectors], info=self.info)

    def to(self, device) -> SteeringSet:
        return SteeringSet([replace(v, vector=_move(v.vector, device)) for v in self.vectors], info=self.info)

    # ---- applying ------------------------------------------------------------------------------------
    def validate(self, model: HookedModel) -> None:
        """Raise a clear error if a hook is missing or a vector has the wrong width."""
        for v in self.vectors:
            hook_point(model, v.hook_name)
            if v.vector.shape[0] != model.cfg.d_model:
                raise SteerInterpError(
                    f"vector at {v.hook_name} has size {v.vector.shape[0]} but the model's d_model is "
                    f"{model.cfg.d_model}; vectors only fit models of the same width"
                )
            check_finite(v.hook_name, v.vector)

    def fwd_hooks(self, ctx: TokenContext | None = None) -> list[tuple[str, object]]:
        """``(hook_name, fn)`` pairs in TransformerLens's ``fwd_hooks`` format."""
        return [(v.hook_name, v.make_hook(ctx)) for v in self.vectors]

    @contextlib.contextmanager
    def applied(
        self,
        model: HookedModel,
        *,
        prompt_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        context: TokenContext | None = None,
    ):
        """Add the vectors for the duration of a ``with`` block; removed on exit, also after errors.

        ``prompt_mask`` / ``attention_mask`` ([batch, pos]) tell position selectors where the prompt
        ends and which tokens are padding; ``steerinterp.generate`` passes a live ``context`` instead.
        """
        self.validate(model)
        if context is None and (prompt_mask is not None or attention_mask is not None):
            context = TokenContext.from_masks(attention_mask, prompt_mask)
        with hooks_applied(model, self.fwd_hooks(context)):
            yield model

    def attach(self, model: HookedModel) -> HookHandle:
        """Add the vectors until ``handle.remove()`` (survives ``model.reset_hooks()``)."""
        self.validate(model)
        return add_hooks(model, self.fwd_hooks(None), permanent=True)

    # ---- persistence -----------------------------------------------------------------------------------
    def save(self, path, *, model: HookedModel | None = None, info: Mapping | None = None) -> Path:
        """Write safetensors + JSON metadata (format: ``steerinterp.steering.io``). Returns the file path.

        ``path`` ending in ``.safetensors`` is that file; any other path is a directory. With ``model``,
        the file records which model the vectors belong to (``model_spec``) and its shape.
        """
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for i, v in enumerate(self.vectors):
            check_finite(v.hook_name, v.vector)
            tensors[f"vector.{i}"] = v.vector.detach().to("cpu", torch.float32).contiguous()
            if v.positions.mask is not None:
                tensors[f"positions_mask.{i}"] = v.positions.mask.to(torch.uint8).contiguous()
            entries.append({"hook_name": v.hook_name, "scale": v.scale, "positions": v.positions.to_dict(),
                            "trainable": v.trainable})
        if model is not None:
            spec = model_spec(model)
            described = {"name": getattr(model.cfg, "model_name", None), "spec": spec.to_dict() if spec else None,
                         "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers}
        else:
            widths = {t.shape[0] for k, t in tensors.items() if k.startswith("vector.")}
            described = {"d_model": widths.pop() if len(widths) == 1 else None}
        return write_vectors(path, tensors, entries, info={**self.info, **(info or {})}, model=described)

    @classmethod
    def load(cls, path, model: HookedModel | None = None, *, trainable: bool = False) -> SteeringSet:
        """Read a saved set; with ``model``, check it fits and move the vectors to its device.

        The header is checked field by field (``steering.io.check_header``): a malformed or edited file is
        a ``SteeringFileError``. With ``model``, a file recorded for another model (name, fine-tuning,
        processing, tiny shape or depth) loads with a ``UserWarning`` naming both models.
        """
        tensors, meta = read_vectors(path)
        target = vector_file(path)
        if model is not None:
            differences = cls.recorded_model_differences(meta["model"], model)
            if differences:
                warnings.warn(
                    f"{target} was saved for another model ({'; '.join(differences)}); the vectors may not mean "
                    "the same here: load the model they were trained on, or map them with steerinterp.analysis.transfer",
                    UserWarning, stacklevel=2)
        vecs = []
        try:
            for i, e in enumerate(meta["vectors"]):
                t = tensors[f"vector.{i}"]
                p = e.get("positions") or {"kind": "all"}
                if p["kind"] == "mask":
                    positions = Positions.from_mask(tensors[f"positions_mask.{i}"].bool())
                else:
                    positions = Positions(p["kind"], start=p.get("start"), stop=p.get("stop"))
                if model is not None:
                    if e["hook_name"] not in model.hook_dict:
                        depth = meta["model"].get("n_layers")
                        saved_for = f"saved for a model with {depth} layers" if depth else "saved for another model"
                        raise SteeringFileError(
                            f"{target}: the model has no hook {e['hook_name']!r} ({saved_for}; this one has "
                            f"{model.cfg.n_layers})"
                        )
                    if t.shape[0] != model.cfg.d_model:
                        raise SteeringFileError(
                            f"{target}: vectors have d_model {t.shape[0]} but the model has {model.cfg.d_model}; "
                            "they were trained for another model (see steerinterp.analysis.transfer to map them)"
                        )
                    t = t.to(model_device(model))
                vec = nn.Parameter(t.clone(), requires_grad=True) if trainable else t
                vecs.append(SteeringVector(vec, e["hook_name"], e["scale"], positions))
            return cls(vecs, info=meta["info"])
        except SteeringFileError:
            raise
        except SteerInterpError as e:  # a header that passed the format checks but not the classes' own
            raise SteeringFileError(f"{target}: {e}; re-save the vectors") from e

    @staticmethod
    def recorded_model_differences(recorded: Mapping, model: HookedModel) -> list[str]:
        """How the model a file recorded (``meta["model"]``) differs from ``model``: one phrase per field."""
        out = []
        spec = model_spec(model)
        saved = recorded.get("spec")
        if saved is not None and spec is not None:
            now = spec.to_dict()
            for key in ("name", "finetuned", "tiny", "processed"):
                a, b = saved.get(key), now.get(key)
                if key in ("name", "finetuned") and isinstance(a, str) and isinstance(b, str):
                    a, b = (str(Path(x).expanduser().resolve()) if Path(x).expanduser().exists() else x for x in (a, b))
                if key in saved and a != b:
                    out.append(f"recorded {key} {saved.get(key)!r}, this model has {now.get(key)!r}")
        elif spec is not None and isinstance(recorded.get("processed"), bool) and recorded["processed"] != spec.processed:
            out.append(f"recorded processed {recorded['processed']!r}, this model has {spec.processed!r}")
        name = getattr(model.cfg, "model_name", None)
        if recorded.get("name") is not None and name is not None and recorded["name"] != name:
            out.append(f"recorded model name {recorded['name']!r}, this model is {name!r}")
        if recorded.get("n_layers") is not None and recorded["n_layers"] != model.cfg.n_layers:
            out.append(f"recorded {recorded['n_layers']} layers, this model has {model.cfg.n_layers}")
        return out


def resolve_layers(model: HookedModel, layers: str | int | Iterable[int]) -> list[int]:
    """``"all"`` / an int / ints / ``"3,7"`` -> sorted list of valid block indices."""
    n = model.cfg.n_layers
    if isinstance(layers, str):
        if layers == "all":
            return list(range(n))
        try:
            layers = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError as e:
            raise SteerInterpError(f"layers={layers!r}: use 'all', an int, or comma-separated ints like '3,7'") from e
    if isinstance(layers, int):
        layers = [layers]
    out = sorted({int(x) for x in layers})
    bad = [x for x in out if not 0 <= x < n]
    if bad:
        raise SteerInterpError(f"layer {bad[0]} is out of range: the model has layers 0..{n - 1}")
    if not out:
        raise SteerInterpError("no layers selected")
    return out


def vector_dtype(model) -> torch.dtype:
    """float64 for float64 models, else float32 (vectors stay fp32 under half-precision models)."""
    return torch.float64 if getattr(model.cfg, "dtype", None) == torch.float64 else torch.float32


def _move(t: torch.Tensor, device) -> torch.Tensor:
    if isinstance(t, nn.Parameter):
        return nn.Parameter(t.detach().to(device), requires_grad=t.requires_grad)
    return t.to(device)
