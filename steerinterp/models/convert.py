"""A checkpoint's own ``config.json`` -> a TransformerLens ``HookedTransformerConfig`` dict, and its weights.

TransformerLens 3.9 builds configs for Gemma (1/2/3) and OLMo-2 from hard-coded tables keyed by hub
*names*, so a local copy, a fine-tune or a renamed checkpoint of those families cannot be converted by
it; for GPT-2 it reads ``n_ctx``, which transformers 5 no longer has. Here every architecture is read
from the checkpoint's config: Gemma, Gemma-2, Gemma-3 (text), OLMo-2 and GPT-2 by converters written
against their ``transformers`` modelling code, the others (Llama, Qwen2/3, Mistral, Phi-3, ...) by
TransformerLens's config-driven ``convert_hf_model_config`` with what it leaves out put back: the
context length, ``head_dim``, rotary scaling, sliding windows given by ``layer_types``.

What cannot be reproduced by a HookedTransformer (an unknown architecture, a rotary scaling it lacks,
biases its converter drops) is a ``ModelLoadError`` that points to ``backend="bridge"``.

    hooked_config(hf_config)        the HookedTransformerConfig fields (n_ctx: the checkpoint's context)
    context_length(hf_config)       max_position_embeddings (n_positions for GPT-2), or None
    hooked_state_dict(hf, cfg, dir) TransformerLens-named tensors, mostly views of the HF model's
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from steerinterp.errors import ModelLoadError

#: delegated architectures whose TransformerLens weight converter has no attention / MLP biases
_NO_BIAS_CONVERTERS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
                       "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Olmo2ForCausalLM")
_TL_ROPE_FIELDS = ("use_NTK_by_parts_rope", "NTK_original_ctx_len", "NTK_by_parts_low_freq_factor",
                   "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor", "use_yarn_rope", "yarn_factor",
                   "yarn_attention_factor", "yarn_beta_fast", "yarn_beta_slow",
                   "yarn_original_max_position_embeddings", "yarn_truncate", "yarn_global_attn_only",
                   "rotary_scaling_factor")


def refuse(arch: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"{arch}: {why}, which a HookedTransformer cannot reproduce; "
                          "load it with backend='bridge' (TransformerLens's wrapper of the HF model)")


def architecture(hf_config) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if not archs:
        raise ModelLoadError(f"config.json (model_type {getattr(hf_config, 'model_type', None)!r}) names no "
                             "architectures; add e.g. \"architectures\": [\"LlamaForCausalLM\"] to it")
    return archs[0]


def context_length(hf_config) -> int | None:
    """The longest context the checkpoint's positions support (``max_position_embeddings``), or None."""
    n = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)
    return int(n) if n else None


def hooked_config(hf_config) -> dict:
    """``HookedTransformerConfig`` fields for a checkpoint, read from its (transformers) config.

    ``n_ctx`` is the checkpoint's context length; the caller caps it. Raises ``ModelLoadError`` for an
    architecture or setting a HookedTransformer cannot reproduce."""
    arch = architecture(hf_config)
    own = _CONVERTERS.get(arch)
    quantisation = getattr(hf_config, "quantization_config", None)
    if quantisation:
        method = quantisation.get("quant_method") if isinstance(quantisation, Mapping) else type(quantisation).__name__
        raise ModelLoadError(f"{arch}: this checkpoint's weights are quantised ({method}); save a dequantised copy to "
                             "load it as a HookedTransformer, or load it with backend='bridge'")
    if arch in _NO_BIAS_CONVERTERS and (getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False)):
        raise refuse(arch, "this checkpoint has attention or MLP biases (attention_bias / mlp_bias)")
    if own is not None:
        cfg = own(hf_config, arch)
    else:
        cfg = _delegate(hf_config, arch)
    cfg["original_architecture"] = arch
    if cfg.get("positional_embedding_type") == "rotary":
        _rope(cfg, hf_config, arch)
    n_ctx = context_length(hf_config)
    if n_ctx:
        cfg["n_ctx"] = n_ctx
    cfg.pop("tokenizer_name", None)
    cfg["init_weights"] = False
    return cfg


# ---- delegated to TransformerLens ------------------------------------------------------------------
def _delegate(hf_config, arch: str) -> dict:
    """TransformerLens's own conversion, fed the config from a neutral path.

    (TransformerLens guesses architectures from words in the path, "llama", "gemma", before reading it.)"""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    with tempfile.TemporaryDirectory(prefix="steerinterp-cfg-") as tmp:
        hf_config.to_json_file(str(Path(tmp) / "config.json"))
        try:
            cfg = convert_hf_model_config(tmp)
        except NotImplementedError as e:
            raise ModelLoadError(f"TransformerLens has no HookedTransformer for {arch}; "
                                 "load it with backend='bridge' (TransformerLens's wrapper of the HF model)") from e
    # TransformerLens ignores an explicit head_dim for Llama/Qwen2/Phi-3 (hidden_size / heads)
    head_dim = getattr(hf_config, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0 and head_dim != cfg.get("d_head"):
        if cfg.get("rotary_dim") == cfg.get("d_head"):
            cfg["rotary_dim"] = head_dim
        cfg["d_head"] = head_dim
    # sliding windows given per layer (Qwen2/3 use_sliding_window, ...) that TransformerLens left out
    layer_types = getattr(hf_config, "layer_types", None)
    window = getattr(hf_config, "sliding_window", None)
    if layer_types and "sliding_attention" in layer_types and window and not cfg.get("use_local_attn"):
        cfg.update(_attn_types(layer_types, window))
    return cfg


def _attn_types(layer_types, window) -> dict:
    types = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    if "local" not in types or not window:
        return {"use_local_attn": False, "attn_types": None, "window_size": None}
    return {"use_local_attn": True, "attn_types": types, "window_size": int(window)}


# ---- converters written here -----------------------------------------------------------------------
def _heads(hf_config) -> tuple[int, int, int | None]:
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    return n_heads, d_head, (kv if kv != n_heads else None)


def _rotary_common(hf_config, d_head: int) -> dict:
    return {"positional_embedding_type": "rotary", "rotary_dim": d_head, "rotary_adjacent_pairs": False,
            "rotary_base": _rope_parameters(hf_config).get("rope_theta", 10000.0)}


def _gemma(hf_config, arch: str) -> dict:
    """Gemma (1), Gemma-2 and Gemma-3 text: RMSNorm scaling by (1 + w) (the weight converter adds the 1),
    embeddings scaled by sqrt(d_model), GeGLU; Gemma-2/3 add sandwich norms, a query scale of
    query_pre_attn_scalar, sliding windows on the layers ``layer_types`` marks and soft-caps (Gemma-2);
    Gemma-3 adds q/k norms and a separate rotary base on its sliding layers."""
    n_heads, d_head, kv = _heads(hf_config)
    act = getattr(hf_config, "hidden_activation", None) or getattr(hf_config, "hidden_act", None) or "gelu_pytorch_tanh"
    if arch == "GemmaForCausalLM" and act == "gelu":  # transformers' own reading of Gemma's legacy value
        act = "gelu_pytorch_tanh"
    cfg = {
        "d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads,
        # TransformerLens makes a GroupedQueryAttention whenever this is set, as its Gemma converter expects
        "n_key_value_heads": kv or n_heads,
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "eps": hf_config.rms_norm_eps, "d_vocab": hf_config.vocab_size, "act_fn": act,
        "normalization_type": "RMS", "final_rms": True, "gated_mlp": True, "use_attn_scale": True,
        "initializer_range": getattr(hf_config, "initializer_range", 0.02),
        **_rotary_common(hf_config, d_head),
    }
    if arch == "GemmaForCausalLM":
        return cfg
    if getattr(hf_config, "use_bidirectional_attention", False):
        raise refuse(arch, "this checkpoint attends bidirectionally (use_bidirectional_attention)")
    cfg["use_normalization_before_and_after"] = True
    scalar = getattr(hf_config, "query_pre_attn_scalar", None)
    if scalar:
        cfg["attn_scale"] = float(scalar) ** 0.5
    layer_types = getattr(hf_config, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf_config.num_hidden_layers)]
    cfg.update(_attn_types(layer_types, getattr(hf_config, "sliding_window", None)))
    for hf_name, tl_name in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                             ("final_logit_softcapping", "output_logits_soft_cap")):
        cap = getattr(hf_config, hf_name, None)
        if cap:
            cfg[tl_name] = float(cap)
    if arch == "Gemma3ForCausalLM":
        cfg["use_qk_norm"] = True
    return cfg


def _olmo2(hf_config, arch: str) -> dict:
    """OLMo-2: norms after attention and MLP (TransformerLens's post-norm block), q/k RMSNorm over all
    heads, SwiGLU, rotary; grouped-query attention in the larger models."""
    n_heads, d_head, kv = _heads(hf_config)
    return {
        "d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads, "n_key_value_heads": kv,
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "eps": hf_config.rms_norm_eps, "d_vocab": hf_config.vocab_size, "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS", "final_rms": True, "gated_mlp": True,
        "initializer_range": getattr(hf_config, "initializer_range", 0.02),
        **_rotary_common(hf_config, d_head),
    }


def _gpt2(hf_config, arch: str) -> dict:
    d = hf_config.n_embd
    if getattr(hf_config, "add_cross_attention", False):
        raise refuse(arch, "this checkpoint has cross-attention (add_cross_attention)")
    return {
        "d_model": d, "d_head": d // hf_config.n_head, "n_heads": hf_config.n_head,
        "d_mlp": getattr(hf_config, "n_inner", None) or 4 * d, "n_layers": hf_config.n_layer,
        "eps": hf_config.layer_norm_epsilon, "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.activation_function, "use_attn_scale": getattr(hf_config, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(hf_config, "scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN", "positional_embedding_type": "standard", "use_local_attn": False,
        "initializer_range": getattr(hf_config, "initializer_range", 0.02),
    }


#: architectures converted here from config.json (TransformerLens 3.9 knows them only by hub name)
_CONVERTERS = {"GemmaForCausalLM": _gemma, "Gemma2ForCausalLM": _gemma, "Gemma3ForCausalLM": _gemma,
               "Olmo2ForCausalLM": _olmo2, "GPT2LMHeadModel": _gpt2}
OWN_ARCHITECTURES = tuple(_CONVERTERS)


# ---- rotary embeddings -------------------------------------------------------------------------------
def _rope_parameters(hf_config, layer_type: str | None = None) -> dict:
    """The rope parameters of one layer type (transformers 5 nests them per type for Gemma-3 / OLMo-3)."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, Mapping) and params:
        if "full_attention" in params or "sliding_attention" in params:
            return dict(params.get(layer_type or "full_attention") or params.get("full_attention") or {})
        return dict(params)
    out = dict(getattr(hf_config, "rope_scaling", None) or {})  # transformers 4 spelling
    out.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if layer_type == "sliding_attention" and getattr(hf_config, "rope_local_base_freq", None):
        out = {"rope_type": "default", "rope_theta": hf_config.rope_local_base_freq}
    return out


def _rope_type(params: Mapping) -> str:
    return str(params.get("rope_type") or params.get("type") or "default").lower()


def _rope(cfg: dict, hf_config, arch: str) -> None:
    """Rotary base(s), partial rotation and scaling from the config, in TransformerLens's fields.

    TransformerLens gives sliding ("local") layers their own base (``rotary_base_local``) and applies linear
    scaling to global layers only; YaRN to all layers or global ones only; llama3 scaling to all layers."""
    types = cfg.get("attn_types") or ["global"] * cfg["n_layers"]
    has_local = "local" in types
    full = _rope_parameters(hf_config, "full_attention")
    local = _rope_parameters(hf_config, "sliding_attention") if has_local else full
    per_type = local != full  # Gemma-3 / OLMo-3: scaled global layers, plain sliding ones
    cfg["rotary_base"] = full.get("rope_theta", cfg.get("rotary_base", 10000.0))
    if per_type:
        if _rope_type(local) != "default":
            raise refuse(arch, f"its sliding layers use rope_type {_rope_type(local)!r}")
        if local.get("rope_theta", cfg["rotary_base"]) != cfg["rotary_base"]:
            cfg["rotary_base_local"] = local["rope_theta"]
    factor = full.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", None))
    if factor is not None and factor != 1.0 and cfg.get("rotary_dim") == cfg["d_head"]:
        cfg["rotary_dim"] = int(cfg["d_head"] * factor)
    for key in _TL_ROPE_FIELDS:  # rebuilt below from the config, whatever TransformerLens made of it
        cfg.pop(key, None)
    kind = _rope_type(full)
    if kind == "default":
        return
    if kind == "linear" and (per_type or not has_local):
        cfg["rotary_scaling_factor"] = float(full["factor"])
    elif kind == "llama3" and not per_type:
        cfg.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=float(full.get("factor", 8.0)),
                   NTK_by_parts_low_freq_factor=float(full.get("low_freq_factor", 1.0)),
                   NTK_by_parts_high_freq_factor=float(full.get("high_freq_factor", 4.0)),
                   NTK_original_ctx_len=int(full.get("original_max_position_embeddings")
                                            or context_length(hf_config) or 8192))
    elif kind == "yarn":
        original = full.get("original_max_position_embeddings") or context_length(hf_config)
        factor = full.get("factor") or context_length(hf_config) / original
        attention = full.get("attention_factor")
        if attention is None:
            def mscale(scale, m=1.0):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            m, m_all = full.get("mscale"), full.get("mscale_all_dim")
            attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        cfg.update(use_yarn_rope=True, yarn_factor=float(factor), yarn_attention_factor=float(attention),
                   yarn_beta_fast=float(full.get("beta_fast") or 32.0), yarn_beta_slow=float(full.get("beta_slow") or 1.0),
                   yarn_original_max_position_embeddings=int(original), yarn_truncate=bool(full.get("truncate", True)),
                   yarn_global_attn_only=per_type)
    else:
        where = " on its global layers only" if per_type else (" with sliding layers" if has_local else "")
        raise refuse(arch, f"its rotary embedding uses rope_type {kind!r}{where}")


# ---- weights -------------------------------------------------------------------------------------------
def hooked_state_dict(hf_model, cfg, directory: Path) -> dict[str, torch.Tensor]:
    """TransformerLens-named tensors for ``hf_model`` (most are views of its parameters, not copies)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    arch = cfg.original_architecture
    if arch == "Olmo2ForCausalLM":
        # TransformerLens's OLMo-2 converter assumes as many key/value heads as query heads; OLMo-3's is the
        # same module layout with grouped-query attention handled
        from transformer_lens.pretrained.weight_conversions.olmo3 import convert_olmo3_weights

        return convert_olmo3_weights(hf_model, cfg)
    try:
        return get_pretrained_state_dict(str(directory), cfg, hf_model=hf_model)
    except NotImplementedError as e:  # TransformerLens refuses quantised storage
        raise ModelLoadError(f"cannot convert the weights in {directory}: {e}".splitlines()[0]) from e


def fill_missing(state: dict[str, torch.Tensor], expected: Mapping[str, Any], dtype: torch.dtype) -> None:
    """Add what the converter left out, as TransformerLens's ``fill_missing_keys`` does: zero biases,
    unit norm scales; a missing weight matrix is an error (a zero-filled one would silently kill a sublayer).

    ``expected``: name -> tensor (or meta tensor) of the model's state dict."""
    for name, like in expected.items():
        if name in state:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("b") or leaf.startswith("_b"):
            state[name] = torch.zeros(like.shape, dtype=dtype)
        elif leaf == "w":
            state[name] = torch.ones(like.shape, dtype=dtype)
        else:
            raise ModelLoadError(f"the weight converter gave no {name}; this checkpoint's layout is not the one "
                                 "TransformerLens expects, load it with backend='bridge'")
