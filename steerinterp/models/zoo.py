"""Tiny random checkpoints of every architecture steerinterp supports, for offline tests.

``zoo_checkpoint("qwen2")`` writes (once, atomically) a seeded random ``Qwen2ForCausalLM`` with the
byte-level test tokenizer via ``save_pretrained`` and returns its directory: exactly what a user's local
checkpoint looks like, so loading, the fast rollout mirror, RL gradients and every analysis can be
checked against plain ``transformers`` for each architecture without a model hub. The shapes are tiny
(2-3 layers, d_model 64) but keep what distinguishes each family: biases (Qwen2), tied embeddings,
q/k norms (Qwen3, OLMo-2, Gemma-3), llama3 rope scaling (Llama-3.1), fused projections (Phi-3),
soft-caps, sandwich norms and sliding windows (Gemma-2/3), LayerNorm and learned positions (GPT-2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from steerinterp._files import atomic_dir, cache_dir
from steerinterp.errors import SteerInterpError

_D, _HEADS, _KV, _HEAD_DIM, _MLP, _LAYERS, _POS = 64, 4, 2, 16, 128, 3, 256


def _common(tok) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=_D, intermediate_size=_MLP, num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS, num_key_value_heads=_KV, head_dim=_HEAD_DIM,
        max_position_embeddings=_POS, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _llama31(tok):
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return LlamaConfig(**_common(tok), rope_parameters=rope, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _qwen2(tied: bool):
    def make(tok):
        from transformers import Qwen2Config

        return Qwen2Config(**_common(tok), rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied)
    return make


def _qwen3(tok):
    from transformers import Qwen3Config

    return Qwen3Config(**_common(tok), rms_norm_eps=1e-6, tie_word_embeddings=True)


def _mistral(tok):
    from transformers import MistralConfig

    return MistralConfig(**_common(tok), rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False)


def _phi3(tok):
    from transformers import Phi3Config

    kw = _common(tok)
    kw.pop("head_dim")
    return Phi3Config(**kw, rms_norm_eps=1e-5, tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0,
                      attention_dropout=0.0)


def _gemma2(tok):
    from transformers import Gemma2Config

    return Gemma2Config(**_common(tok), rms_norm_eps=1e-6, sliding_window=8, query_pre_attn_scalar=16,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                        hidden_activation="gelu_pytorch_tanh")


def _gemma3(tok):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(**_common(tok), rms_norm_eps=1e-6, sliding_window=8, query_pre_attn_scalar=16,
                            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                            hidden_activation="gelu_pytorch_tanh")


def _olmo2(tok):
    from transformers import Olmo2Config

    kw = _common(tok)
    kw.pop("head_dim")
    return Olmo2Config(**kw, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _gpt2(tok):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tok), n_embd=_D, n_layer=_LAYERS, n_head=_HEADS, n_positions=_POS,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)


#: name -> config factory (given the test tokenizer); the architectures the tests and docs/models.md cover
ZOO: dict[str, Callable] = {
    "llama-3.1": _llama31,
    "qwen2": _qwen2(tied=True),
    "qwen2-untied": _qwen2(tied=False),
    "qwen3": _qwen3,
    "mistral": _mistral,
    "phi3": _phi3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "olmo2": _olmo2,
    "gpt2": _gpt2,
}


def zoo_hf_model(name: str, seed: int = 0):
    """The seeded random HF model and tokenizer behind ``zoo_checkpoint(name)``."""
    from transformers import AutoModelForCausalLM

    from steerinterp.models.tiny import tiny_tokenizer

    if name not in ZOO:
        raise SteerInterpError(f"no tiny checkpoint for architecture {name!r}; choose one of {', '.join(ZOO)}")
    tok = tiny_tokenizer()
    config = ZOO[name](tok)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.split(".")[-2].startswith("ln"):
                base = 0.0 if type(model).__name__.startswith("Gemma") else 1.0  # Gemma scales by (1 + w)
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
                if pname.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model.eval(), tok


def zoo_checkpoint(name: str, seed: int = 0) -> Path:
    """Write (once, atomically) the tiny ``name`` checkpoint with its tokenizer and return the directory."""
    import transformers

    key = json.dumps({"name": name, "seed": seed, "transformers": transformers.__version__,
                      "shape": [_D, _HEADS, _KV, _HEAD_DIM, _MLP, _LAYERS, _POS]}, sort_keys=True)
    directory = cache_dir() / "checkpoints" / f"zoo-{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    marker = directory / "steerinterp_manifest.json"
    if marker.is_file():
        return directory
    from transformers.utils import logging as hf_logging

    model, tok = zoo_hf_model(name, seed)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "steerinterp_manifest.json").write_text(key)
    if bars:
        hf_logging.enable_progress_bar()
    return directory
