"""Rollout engines: the forward passes behind ``steerinterp.generate``.

Each engine runs a prefill over left-padded prompts and then one token per step with a KV cache,
adding steering vectors at every forward (prompt and each new token), and returns last-position
logits. The decode loop and the sampler are shared (``decode.py``, ``sampling.py``), so engines differ only in
which implementation of the same network they run:

* ``HookedEngine``: the TransformerLens ``HookedTransformer`` itself (the reference path);
* ``HFEngine``: the checkpoint's own ``transformers`` class mirroring the same weights (``hf_mirror.py``:
  Llama, Mistral, Qwen2/3, Phi-3, Gemma-2/3, OLMo-2, GPT-2) with the vectors added by PyTorch forward hooks
  on the matching modules (``steering/sites.py``; about 1.5-3x faster decode on CPU), proven
  token-identical on greedy decoding in the tests and self-checked on every build;
* ``BridgeEngine``: a TransformerLens ``TransformerBridge`` (TransformerLens 4.x's model class),
  called with an HF cache.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from types import SimpleNamespace
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int

from steerinterp.errors import SteerInterpError
from steerinterp.steering.hooks import interrupts_deferred
from steerinterp.steering.positions import TokenContext
from steerinterp.steering.protocol import Steering
from steerinterp.steering.sites import hf_site
from steerinterp.types import is_bridge, model_device


def expand_tl_cache(cache, index: torch.Tensor) -> None:
    """Select / repeat rows of a TransformerLens KV cache in place (differentiable: index_select)."""
    for entry in cache.entries:
        entry.past_keys = entry.past_keys.index_select(0, index)
        entry.past_values = entry.past_values.index_select(0, index)
    cache.previous_attention_mask = cache.previous_attention_mask.index_select(0, index)


def unique_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct row, index of each row's distinct row), rows compared across tensors."""
    key = torch.cat([t.long() for t in tensors], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    first = torch.full((n,), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    # renumber so that distinct rows keep their order of first appearance
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=key.device)
    return first[order], rank[inverse]


def final_logits(model, resid: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos vocab"]:
    """The logits the model's own forward makes of final-block residuals: ``ln_final``, the unembedding and
    the architecture's final logit soft-cap (Gemma-2's ``cap * tanh(logits / cap)``), which a bare
    ``unembed(ln_final(x))`` would skip."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(model.unembed(model.ln_final(resid)), logit_soft_cap(model))


def logit_soft_cap(model) -> float | None:
    """The final logit soft-cap of ``model``, or None: the checkpoint's own setting (what the real model does),
    else TransformerLens's config. Engines and analyses all read it here."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    from steerinterp.models.loading import checkpoint_config

    cap = getattr(checkpoint_config(model), "final_logit_softcapping", None)
    if not softcap_enabled(cap):
        cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if softcap_enabled(cap) else None


def position_ids(attention_mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """Rotary positions that ignore left padding (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class MultiCacheEngine:
    """Plumbing shared by analysis engines that decode a HookedTransformer with one TransformerLens KV cache
    per run (``cache_names``: e.g. base / steered / patched) and apply the steering themselves: ``steering``
    only records the vectors, ``steered(vecs)`` applies them around a forward."""

    cache_names: tuple[str, ...] = ()
    model = None
    _vecs = None
    _ctx = None

    @contextlib.contextmanager
    def steering(self, vecs, ctx: TokenContext):
        self._vecs, self._ctx = vecs, ctx
        try:
            yield
        finally:
            self._vecs, self._ctx = None, None

    def steered(self, vecs=...):
        """Apply ``vecs`` (``None``: nothing; default: the vectors ``steering`` recorded) around a forward."""
        vecs = self._vecs if vecs is ... else vecs
        if vecs is None or not len(vecs):
            return contextlib.nullcontext()
        return vecs.applied(self.model, context=self._ctx)

    def start(self, batch: int):
        from transformer_lens import TransformerLensKeyValueCache

        device = model_device(self.model)
        self.caches = {k: TransformerLensKeyValueCache.init_cache(self.model.cfg, device, batch) for k in self.cache_names}

    def expand(self, index: torch.Tensor) -> None:
        for cache in self.caches.values():
            expand_tl_cache(cache, index)


class HookedEngine:
    """Decode with the HookedTransformer and TransformerLens's own KV cache."""

    name = "hooked"

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def steering(self, vecs, ctx: TokenContext):
        if vecs is None or len(vecs) == 0:
            yield
            return
        with vecs.applied(self.model, context=ctx):
            yield

    def start(self, batch: int):
        from transformer_lens import TransformerLensKeyValueCache

        device = model_device(self.model)
        self.cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, device, batch)

    def expand(self, index: torch.Tensor) -> None:
        """Make cache row i a copy of row index[i] (prompts shared by several samples are prefilled once)."""
        expand_tl_cache(self.cache, index)

    def forward(self, ids, new_mask, full_mask) -> Float[torch.Tensor, "batch vocab"]:
        m = self.model
        resid = m(ids, attention_mask=new_mask, past_kv_cache=self.cache, stop_at_layer=m.cfg.n_layers)
        return final_logits(m, resid[:, -1:, :])[:, 0, :]


#: decode steps after which the fast engine packs its weights for the rest of a generation: in development
#: timings on the embedded model packing cost about what 30 packed decode steps save, so generations of up to 32
#: tokens never pack (docs/benchmarks.md has the recorded end-to-end runs)
PACK_AFTER_STEPS = 32
#: the most rows a decode step may have for the fast engine to pack: on the embedded model packing made sampling
#: faster at batch 1 and 8 (recorded, docs/benchmarks.md) and was not faster at batch 64 in development runs
PACK_MAX_ROWS = 16


class HFEngine:
    """Decode with a transformers mirror (the checkpoint's own class) of the HookedTransformer's weights."""

    name = "hf"

    def __init__(self, model, pack: bool = True):
        """``pack``: once a generation of at most ``PACK_MAX_ROWS`` rows reaches ``PACK_AFTER_STEPS`` decode
        steps, multiply by oneDNN pre-packed copies of the weights where that is exact (bfloat16 on a CPU:
        ``packed_linear``); ``packed_layers`` counts them (0 when not packed)."""
        self.model, self.pack = model, pack
        self.mirror = current_mirror(model)
        self.hf, self.architecture = self.mirror.hf, self.mirror.architecture
        self.packed_layers = 0
        self._stack: contextlib.ExitStack | None = None  # what steering() will undo (packed weights)
        self._steps = 0

    @staticmethod
    def unmirrored_hook(vecs: Steering | None, architecture: str | None) -> str | None:
        """The first hook of ``vecs`` with no HF site in ``architecture`` (None when all are mirrored)."""
        if vecs is None:
            return None
        return next((name for name, _ in vecs.fwd_hooks(None) if hf_site(name, architecture) is None), None)

    @contextlib.contextmanager
    def steering(self, vecs: Steering | None, ctx: TokenContext):
        handles = []
        try:
            for name, fn in vecs.fwd_hooks(ctx) if vecs is not None else ():
                site = hf_site(name, self.architecture)
                if site is None:
                    raise SteerInterpError(f"engine='hf' cannot steer at {name!r}; use engine='hooked'")
                with interrupts_deferred():  # registered and recorded in one uninterruptible step
                    handles.append(_register(self.hf.get_submodule(site.module), site.side, fn, name))
            with contextlib.ExitStack() as self._stack:  # packed weights (attached by forward) go before the hooks
                yield
        finally:
            self._stack = None
            interrupted = False
            while handles:  # a Ctrl-C landing in the clean-up: finish it, then raise it
                try:
                    with interrupts_deferred():
                        while handles:
                            handles[-1].remove()
                            handles.pop()
                except KeyboardInterrupt:
                    interrupted = True
            if interrupted:
                raise KeyboardInterrupt

    def start(self, batch: int):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.hf.config)
        self._steps, self.packed_layers = 0, 0

    def expand(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)

    def _start_packing(self, rows: int) -> None:
        from steerinterp.generation.packed_linear import packed_weights, packing_applies, packing_unavailable

        if not packing_applies(self.hf):
            return
        checks = self.mirror.packing_checks
        if rows not in checks:
            checks[rows] = packing_unavailable(self.hf, rows)
        if checks[rows] is not None:
            _warn_once(self.model, f"decoding without pre-packed weights ({checks[rows]})")
            return
        self.packed_layers = self._stack.enter_context(packed_weights(self.hf, rows))

    def forward(self, ids, new_mask, full_mask):
        if ids.shape[1] == 1 and self.pack and self._stack is not None:  # a decode step inside steering()
            self._steps += 1
            if self._steps == PACK_AFTER_STEPS and ids.shape[0] <= PACK_MAX_ROWS:
                self._start_packing(ids.shape[0])
        pos = position_ids(full_mask)[:, -ids.shape[1] :]
        # without padding, HF's causal path needs no explicit mask (and builds none)
        mask = None if bool(full_mask.all()) else full_mask
        # the class's own head (final soft-cap included), on the last position only
        out = self.hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                      use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]


def _register(module, side: str, fn, hook_name: str):
    """A PyTorch hook calling a TransformerLens-style ``fn(act, hook)`` (None from fn: leave it as it is)."""
    hook = SimpleNamespace(name=hook_name)
    if side == "output":

        def post(mod, args, output):
            act = output[0] if isinstance(output, tuple) else output
            new = fn(act, hook)
            if new is None:
                return None
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(post)

    def pre(mod, args, kwargs):
        act = args[0] if args else kwargs["hidden_states"]
        new = fn(act, hook)
        if new is None:
            return None
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return module.register_forward_pre_hook(pre, with_kwargs=True)


class BridgeEngine:
    """Decode with a TransformerLens ``TransformerBridge`` and an HF ``DynamicCache``."""

    name = "bridge"

    def __init__(self, model):
        self.model = model

    steering = HookedEngine.steering

    def start(self, batch: int):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.original_model.config)

    def expand(self, index: torch.Tensor) -> None:
        self.cache.reorder_cache(index)

    def forward(self, ids, new_mask, full_mask):
        pos = position_ids(full_mask)[:, -ids.shape[1] :]
        logits = self.model(ids, attention_mask=full_mask, position_ids=pos, past_key_values=self.cache, use_cache=True)
        return logits[:, -1, :]


# per model: its Mirror, and the last fallback reason warned about. Weak tables, so
# nothing is hung on the user's model and a model's mirror goes when the model does.
_MIRRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def current_mirror(model):
    """The ``Mirror`` of ``model``, rebuilt whenever it no longer computes exactly what the model computes."""
    from steerinterp.generation.hf_mirror import build_hf_mirror

    cached = _MIRRORS.get(model)
    if cached is not None and cached.divergence(model) is None:
        return cached
    _MIRRORS.pop(model, None)
    mirror = build_hf_mirror(model)
    _MIRRORS[model] = mirror
    return mirror


def hf_mirror(model):
    """The HF model of ``current_mirror(model)``."""
    return current_mirror(model).hf


def foreign_hooks(model) -> str | None:
    """A hook on the HookedTransformer that the HF mirror would not run (None when there is none).

    Any TransformerLens hook (``model.hooks``, ``add_hook``, ``run_with_hooks``, an ``attach``-ed steering
    set), any PyTorch hook on one of its modules, and any global module hook count: the mirror runs other
    modules, so only the HookedTransformer itself can honour them."""
    from torch.nn.modules import module as torch_module

    if (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
            or torch_module._global_backward_hooks):
        return "a global PyTorch module hook is registered"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return f"a hook is attached at {name or 'the model'}"
    return None


@runtime_checkable
class Engine(Protocol):
    """What the decode loop needs of an engine (``HookedEngine``, ``HFEngine``, ``BridgeEngine``, or a
    user's own, e.g. ``analysis.PatchedEngine``): steering for the call, a KV cache, last-position logits."""

    name: str

    def steering(self, vecs: Steering | None, ctx: TokenContext) -> contextlib.AbstractContextManager: ...

    def start(self, batch: int) -> None: ...

    def expand(self, index: torch.Tensor) -> None: ...

    def forward(self, ids: torch.Tensor, new_mask: torch.Tensor, full_mask: torch.Tensor) -> torch.Tensor: ...


ENGINES = ("auto", "hooked", "hf", "bridge")


def choose_engine(model, engine: str, vecs):
    """Pick the engine: ``auto`` = bridge for bridges, else the HF mirror when it applies, else hooked."""
    from steerinterp.generation.hf_mirror import MirrorUnsupported, mirror_architecture

    if not isinstance(engine, str):
        if not isinstance(engine, Engine):
            raise SteerInterpError(
                f"engine must be a name ({', '.join(ENGINES)}) or an Engine object, got {type(engine).__name__}")
        return engine  # a custom engine, e.g. analysis.patched_generation.PatchedEngine
    if engine not in ENGINES:
        raise SteerInterpError(f"engine={engine!r}; choose one of {', '.join(ENGINES)}")
    if is_bridge(model):
        if engine not in ("auto", "bridge"):
            raise SteerInterpError(f"engine={engine!r} does not apply to a TransformerBridge; use 'auto'")
        return BridgeEngine(model)
    if engine == "bridge":
        raise SteerInterpError("engine='bridge' needs a TransformerBridge model")
    if engine == "hooked":
        return HookedEngine(model)
    unmirrored = HFEngine.unmirrored_hook(vecs, mirror_architecture(model))
    if unmirrored is not None:
        if engine == "hf":
            raise SteerInterpError(f"engine='hf' cannot steer at {unmirrored!r}; use engine='hooked'")
        return HookedEngine(model)
    hooked_by_user = foreign_hooks(model)
    if hooked_by_user is not None:
        if engine == "hf":
            raise SteerInterpError(f"engine='hf' cannot honour the model's own hooks ({hooked_by_user}); "
                                   "use engine='hooked' or remove them")
        _warn_once(model, f"the model has hooks the fast engine cannot run ({hooked_by_user}); generating "
                          "with the HookedTransformer, which honours them")
        return HookedEngine(model)
    try:
        return HFEngine(model)
    except MirrorUnsupported as e:
        if engine == "hf":
            raise
        _warn_once(model, f"fast rollout engine unavailable ({e}); using the HookedTransformer path")
        return HookedEngine(model)


def _warn_once(model, message: str) -> None:
    """Warn about a fallback once per model and reason."""
    if _WARNED.get(model) != message:
        warnings.warn(message, stacklevel=4)
        _WARNED[model] = message


__all__ = ["PACK_AFTER_STEPS", "PACK_MAX_ROWS", "BridgeEngine", "Engine", "HFEngine", "HookedEngine", "choose_engine",
           "position_ids"]
