"""A plain ``transformers`` Llama built from a HookedTransformer's own weights.

The fast rollout engine decodes with it: same weights, HF's lean forward. It is built only for
unprocessed Llama-style models, and every build is checked against the HookedTransformer on a probe
input before it is trusted (``MirrorMismatch`` otherwise, and generation falls back to the hooked path).
"""

from __future__ import annotations

import einops
import torch

from steerinterp.errors import SteerInterpError
from steerinterp.types import model_spec


class MirrorUnsupported(SteerInterpError):
    """The model cannot be mirrored as an HF Llama (architecture, processing or biases)."""


def _check_supported(model) -> None:
    cfg = model.cfg
    if type(model).__name__ != "HookedTransformer":
        raise MirrorUnsupported(f"{type(model).__name__} is not a HookedTransformer")
    spec = model_spec(model)
    if spec is not None and spec.processed:
        raise MirrorUnsupported("processed (folded/centred) weights are not in the HF basis")
    wanted = {
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "act_fn": "silu",
        "final_rms": True,
        "rotary_adjacent_pairs": False,
    }
    for k, v in wanted.items():
        if getattr(cfg, k, None) != v:
            raise MirrorUnsupported(f"cfg.{k}={getattr(cfg, k, None)!r} (need {v!r})")
    if cfg.original_architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
        raise MirrorUnsupported(f"architecture {cfg.original_architecture} is not Llama-style")
    if getattr(cfg, "use_NTK_by_parts_rope", False) or (cfg.rotary_dim or cfg.d_head) != cfg.d_head:
        raise MirrorUnsupported("rope scaling / partial rotary is not mirrored")
    for name, p in model.named_parameters():
        if name.split(".")[-1].lstrip("_").startswith("b_") and p.abs().max() > 0:  # b_Q, _b_K, b_in, ...
            raise MirrorUnsupported(f"non-zero bias {name}")


def weights_fingerprint(model) -> tuple:
    """Changes whenever a parameter is modified in place or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def build_hf_mirror(model, attn_implementation: str = "sdpa"):
    """A ``LlamaForCausalLM`` with the HookedTransformer's weights (copied), in eval mode, frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _check_supported(model)
    cfg = model.cfg
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    config = LlamaConfig(
        vocab_size=cfg.d_vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=n_kv,
        head_dim=cfg.d_head,
        max_position_embeddings=cfg.n_ctx,
        rope_theta=float(cfg.rotary_base),
        rms_norm_eps=cfg.eps,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation=attn_implementation,
    )
    sd = model.state_dict()
    hf_sd = {
        "model.embed_tokens.weight": sd["embed.W_E"],
        "model.norm.weight": sd["ln_final.w"],
        "lm_head.weight": sd["unembed.W_U"].T,
    }
    for layer in range(cfg.n_layers):
        b, h = f"blocks.{layer}.", f"model.layers.{layer}."
        wk = sd.get(b + "attn._W_K", sd.get(b + "attn.W_K"))
        wv = sd.get(b + "attn._W_V", sd.get(b + "attn.W_V"))
        hf_sd.update(
            {
                h + "input_layernorm.weight": sd[b + "ln1.w"],
                h + "post_attention_layernorm.weight": sd[b + "ln2.w"],
                h + "self_attn.q_proj.weight": einops.rearrange(sd[b + "attn.W_Q"], "n d h -> (n h) d"),
                h + "self_attn.k_proj.weight": einops.rearrange(wk, "n d h -> (n h) d"),
                h + "self_attn.v_proj.weight": einops.rearrange(wv, "n d h -> (n h) d"),
                h + "self_attn.o_proj.weight": einops.rearrange(sd[b + "attn.W_O"], "n h d -> d (n h)"),
                h + "mlp.gate_proj.weight": sd[b + "mlp.W_gate"].T,
                h + "mlp.up_proj.weight": sd[b + "mlp.W_in"].T,
                h + "mlp.down_proj.weight": sd[b + "mlp.W_out"].T,
            }
        )
    device = sd["embed.W_E"].device
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    hf_sd = {k: v.detach().clone().contiguous().to(cfg.dtype) for k, v in hf_sd.items()}
    hf.load_state_dict(hf_sd, assign=True, strict=True)
    # buffers (rotary inv_freq) were created on meta: rebuild them on the real device
    with torch.device(device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config)
    hf.to(device).eval().requires_grad_(False)
    _self_check(model, hf)
    return hf


def _self_check(model, hf, tol: float = 1e-3) -> None:
    """Compare logits on a probe sequence; a mirror that disagrees is never used."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randint(0, model.cfg.d_vocab, (1, 12), generator=gen).to(next(hf.parameters()).device)
    with torch.no_grad():
        ref = model(probe).float()
        got = hf(probe).logits.float()
    scale = 1.0 if model.cfg.dtype == torch.float32 else 50.0
    diff = (ref - got).abs().max().item()
    if not diff < tol * scale * max(1.0, ref.abs().max().item() / 10):
        raise MirrorUnsupported(f"HF mirror disagrees with the HookedTransformer (max |logit diff| {diff:.2e})")
