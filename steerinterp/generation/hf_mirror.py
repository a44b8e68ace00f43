"""A plain ``transformers`` Llama computing what a HookedTransformer computes, on the same weights.

The fast rollout engine decodes with it: HF's lean forward. It is built only for unprocessed Llama-style
models; every build is checked against the HookedTransformer on a probe input before it is trusted
(``MirrorUnsupported`` otherwise, and generation falls back to the hooked path), and before every use
``Mirror.divergence`` proves, exactly, that no weight changed since (shared storage for most weights,
an element-wise comparison for the few that are copies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Mirror:
    """An HF model computing what a HookedTransformer computes, and what it takes to stay that way.

    Most weights are *shared* with the HookedTransformer (the HF parameter is a view of the same storage:
    embeddings, norms, MLP, attention output, unembedding when their layout allows), so any change to them,
    in place or through ``.data``, is seen at once. The rest (query / key / value, whose head layout differs)
    are *copies*, compared element for element with the HookedTransformer before every use. Parameters the
    HF model does not have (TransformerLens's structurally zero biases) must stay zero.
    """

    hf: torch.nn.Module
    identity: dict[str, tuple[int, int]]  # TL parameter name -> (id, data_ptr) at build: a replaced tensor rebuilds
    copies: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]  # name -> (TL tensor, HF copy in TL layout)
    zeros: list[str]
    shared: list[str]

    def divergence(self, model) -> str | None:
        """Why the mirror no longer computes what ``model`` computes, or None when it does (exact check)."""
        params = dict(model.named_parameters())
        if params.keys() != self.identity.keys():
            return "the model's parameters changed"
        for name, p in params.items():
            if (id(p), p.data_ptr()) != self.identity[name]:
                return f"{name} was replaced"
        with torch.no_grad():
            for name in self.zeros:
                if params[name].detach().any():
                    return f"{name} is no longer zero"
            for name, pair in self.copies.items():
                ours, theirs = pair()
                if not torch.equal(ours.detach(), theirs):
                    return f"{name} was edited"
        return None

    @property
    def copied_numel(self) -> int:
        """Elements the mirror holds of its own (the rest is the HookedTransformer's storage)."""
        return sum(pair()[1].numel() for pair in self.copies.values())


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def build_hf_mirror(model, attn_implementation: str = "sdpa") -> Mirror:
    """A ``LlamaForCausalLM`` computing what ``model`` computes, sharing its weights where the layout allows,
    in eval mode, frozen, self-checked on a probe input."""
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
    params = dict(model.named_parameters())
    # HF name -> (TL name, TL tensor -> HF layout); heads: TL [n, d_model, d_head] <-> HF [(n d_head), d_model]
    plan = {
        "model.embed_tokens.weight": ("embed.W_E", lambda t: t),
        "model.norm.weight": ("ln_final.w", lambda t: t),
        "lm_head.weight": ("unembed.W_U", lambda t: t.T),
    }
    for layer in range(cfg.n_layers):
        b, h = f"blocks.{layer}.", f"model.layers.{layer}."
        k = b + ("attn._W_K" if b + "attn._W_K" in params else "attn.W_K")
        v = b + ("attn._W_V" if b + "attn._W_V" in params else "attn.W_V")
        plan.update({
            h + "input_layernorm.weight": (b + "ln1.w", lambda t: t),
            h + "post_attention_layernorm.weight": (b + "ln2.w", lambda t: t),
            h + "self_attn.q_proj.weight": (b + "attn.W_Q", _heads_to_hf),
            h + "self_attn.k_proj.weight": (k, _heads_to_hf),
            h + "self_attn.v_proj.weight": (v, _heads_to_hf),
            h + "self_attn.o_proj.weight": (b + "attn.W_O", lambda t: t.reshape(-1, t.shape[-1]).T),
            h + "mlp.gate_proj.weight": (b + "mlp.W_gate", lambda t: t.T),
            h + "mlp.up_proj.weight": (b + "mlp.W_in", lambda t: t.T),
            h + "mlp.down_proj.weight": (b + "mlp.W_out", lambda t: t.T),
        })
    hf_sd, copies, shared = {}, {}, []
    with torch.no_grad():
        for hf_name, (tl_name, to_hf) in plan.items():
            src = params[tl_name].detach()
            t = to_hf(src)
            if _same_storage(t, src) and t.dtype == cfg.dtype:
                hf_sd[hf_name] = t
                shared.append(tl_name)
            else:
                hf_sd[hf_name] = t.to(cfg.dtype).contiguous().clone()
                copies[tl_name] = _copy_check(params, tl_name, hf_sd[hf_name], src.shape)
    zeros = [n for n in params if n not in shared and n not in copies]
    device = params["embed.W_E"].device
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    hf.load_state_dict(hf_sd, assign=True, strict=True)
    # buffers (rotary inv_freq) were created on meta: rebuild them on the real device
    with torch.device(device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config)
    hf.to(device).eval().requires_grad_(False)
    _self_check(model, hf)
    identity = {n: (id(p), p.data_ptr()) for n, p in params.items()}
    return Mirror(hf, identity, copies, zeros, shared)


def _heads_to_hf(t: torch.Tensor) -> torch.Tensor:
    return einops.rearrange(t, "n d h -> (n h) d")


def _copy_check(params, tl_name: str, copy: torch.Tensor, tl_shape):
    """(the TL parameter, the HF copy viewed back in the TL layout): equal exactly while the mirror is current."""
    if len(tl_shape) == 3 and copy.dim() == 2 and copy.shape[0] == tl_shape[0] * tl_shape[2]:
        back = einops.rearrange(copy, "(n h) d -> n d h", n=tl_shape[0])  # a view: no copy per check
    elif copy.dim() == 2 and tuple(copy.shape) == (tl_shape[-1], tl_shape[0]) and len(tl_shape) == 2:
        back = copy.T
    elif len(tl_shape) == 3:  # W_O [n, h, d] -> HF [d, (n h)]
        back = copy.T.reshape(tl_shape)
    else:
        back = copy.reshape(tl_shape)

    def pair():
        return params[tl_name], back

    return pair


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
