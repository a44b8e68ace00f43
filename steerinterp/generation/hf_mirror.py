"""A plain ``transformers`` model computing what a HookedTransformer computes, on the same weights.

The fast rollout engine decodes with it: HF's lean forward. The mirror is the checkpoint's own
``transformers`` class (``checkpoint_config(model)``: Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma-2,
Gemma-3, OLMo-2, GPT-2, ...), built on the meta device and given the HookedTransformer's parameters by an
architecture's *plan* (``MIRROR_PLANS``). Every HF parameter is one of

* **shared**: a view of the TransformerLens tensor (embeddings, norms, MLP, attention output, unembedding,
  biases), so any change to it, in place or through ``.data``, is seen at once;
* **read in place**: where no view exists (query / key / value heads, Phi-3's fused gate_up, GPT-2's fused
  c_attn), the HF linear module is replaced by one that multiplies by the TransformerLens tensors directly;
* **copied**: query / key / value in HF's layout while the copies stay within ``MIRROR_MEMORY_BUDGET`` of
  the model's parameters (HF's own linear is a little faster than the per-head product), and values that
  are a function of a TransformerLens tensor (Gemma's norms: TransformerLens stores ``1 + w``). Copies are
  compared element for element with the HookedTransformer before every use.

Every build is checked against the HookedTransformer on a probe input before it is trusted
(``MirrorUnsupported`` otherwise, and generation falls back to the hooked path, saying why), and before every
use ``Mirror.divergence`` proves, exactly, that no weight changed since.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import einops
import torch

from steerinterp.errors import SteerInterpError
from steerinterp.generation.packed_linear import PackableLinear
from steerinterp.types import model_device, model_spec

#: the most the mirror may hold of its own, as a fraction of the HookedTransformer's parameter elements
MIRROR_MEMORY_BUDGET = 0.10


class MirrorUnsupported(SteerInterpError):
    """The model cannot be mirrored exactly by its ``transformers`` class (architecture, processing, weights)."""


def mirror_architecture(model) -> str | None:
    """The ``transformers`` class the mirror of ``model`` would be (``Qwen2ForCausalLM``), or None."""
    config = _checkpoint_config(model)
    if config is not None:
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM._model_mapping[type(config)].__name__
        except KeyError:
            archs = getattr(config, "architectures", None) or [None]
            return archs[0]
    return getattr(getattr(model, "cfg", None), "original_architecture", None)


def _checkpoint_config(model):
    from steerinterp.models.loading import checkpoint_config

    return checkpoint_config(model)


@dataclass
class Mirror:
    """An HF model computing what a HookedTransformer computes, and what it takes to stay that way.

    ``shared`` names the TransformerLens parameters whose storage the HF model reads (as parameter views or
    through in-place modules); ``copies`` maps each copied one to a pair (expected, held) that must be equal
    exactly; ``zeros`` are TransformerLens parameters the HF model does not have (structurally zero biases),
    which must stay zero.
    """

    hf: torch.nn.Module
    architecture: str
    identity: dict[str, tuple[int, int]]  # TL parameter name -> (id, data_ptr) at build: a replaced tensor rebuilds
    copies: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]  # TL name -> (TL side, HF copy side)
    zeros: list[str]
    shared: list[str]
    total_numel: int = 0
    packing_checks: dict[int, str | None] = field(default_factory=dict)  # rows -> why packing is refused (None: fine)

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

    @property
    def copied_fraction(self) -> float:
        """``copied_numel`` over the HookedTransformer's parameter elements (at most ``MIRROR_MEMORY_BUDGET``)."""
        return self.copied_numel / max(1, self.total_numel)


# --------------------------------------------------------------------------------------------------------
# modules that read TransformerLens tensors in place


class ContiguousInputLinear(PackableLinear):
    """The mirror's unembedding: HF's head unembeds ``hidden_states[:, -1:, :]``, a strided view after a prefill,
    and a 3-D strided input makes ``matmul`` broadcast the [d_model, vocab] weight over the batch (a copy of it
    per row: seconds per prefill of 40 prompts on the embedded model in bfloat16). A contiguous input keeps it
    one matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


class HeadsLinear(torch.nn.Module):
    """A query / key / value projection reading TransformerLens's per-head weights in place.

    ``weights`` are [n_heads, d_model, d_head] tensors sharing the HookedTransformer's storage (``W_Q``,
    ``_W_K``, ...), ``biases`` [n_heads, d_head] or None. The output is what the HF linear gives:
    [..., n_heads * d_head], several weights (a fused qkv projection) concatenated in order."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None]):
        super().__init__()
        self.weights, self.biases = list(weights), list(biases)  # plain attributes: no parameters, no copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        outs = []
        for w, b in zip(self.weights, self.biases):
            y = torch.matmul(flat, w)  # [n_heads, rows, d_head]
            if b is not None:
                y = y + b[:, None, :]
            outs.append(y.transpose(0, 1).reshape(*lead, -1))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class ConcatLinear(torch.nn.Module):
    """``cat([x @ W for W in weights], -1)``: a fused projection (Phi-3's gate_up) from TransformerLens's
    separate [d_in, d_out] weights, read in place."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weights = list(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x @ w for w in self.weights], dim=-1)


# --------------------------------------------------------------------------------------------------------
# the builder an architecture's plan fills in


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _heads_to_hf(t: torch.Tensor) -> torch.Tensor:
    """[n, d_model, d_head] -> HF linear weight [(n d_head), d_model]."""
    return einops.rearrange(t, "n d h -> (n h) d")


def _hf_rows_to_heads(w: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``_heads_to_hf`` as a view (no copy per check)."""
    return einops.rearrange(w, "(n h) d -> n d h", n=n)


@dataclass
class MirrorBuilder:
    """Where each parameter of the (meta-device) HF model comes from; filled by an architecture's plan."""

    model: object
    hf: torch.nn.Module  # on the meta device until built
    budget: int  # copied elements still allowed
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # HF parameter name -> tensor
    copies: dict[str, Callable] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # HF module path -> in-place module
    fixes: list[Callable[[torch.nn.Module], None]] = field(default_factory=list)

    @property
    def cfg(self):
        return self.model.cfg

    def tl(self, name: str, *alternatives: str) -> str:
        """The first of ``name, *alternatives`` the HookedTransformer has (``_W_K`` or ``W_K``)."""
        for n in (name, *alternatives):
            if n in self.params:
                return n
        raise MirrorUnsupported(f"the HookedTransformer has no {name}")

    def has_bias(self, module: str) -> bool:
        return getattr(self.hf.get_submodule(module), "bias", None) is not None

    def share(self, hf_name: str, tl_name: str, view: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """The HF parameter is ``view(TL parameter)`` (a view where the layout allows, else an exact copy)."""
        src = self.params[tl_name].detach()
        t = view(src)
        if _same_storage(t, src) and t.dtype == self.cfg.dtype:
            self.state[hf_name] = t
            self.shared.append(tl_name)
        else:
            self.derive(hf_name, tl_name, view)

    def derive(self, hf_name: str, tl_name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """The HF parameter is a copy of ``fn(TL parameter)``, compared with a fresh ``fn`` before every use
        (small tensors: Gemma's norms)."""
        params = self.params
        with torch.no_grad():
            copy = fn(params[tl_name].detach()).to(self.cfg.dtype).contiguous().clone()
        self.state[hf_name] = copy
        self.copies[tl_name] = lambda: (fn(params[tl_name].detach()), copy)
        self.budget -= copy.numel()

    def projection(self, module: str, weights: list[str], biases: list[str | None], conv1d: bool = False) -> None:
        """A (possibly fused) query / key / value projection: HF ``module`` computes ``x @ W + b`` for each
        TransformerLens [n, d_model, d_head] weight, outputs concatenated. Copied into HF's layout while
        the budget allows, else read in place (``HeadsLinear``). ``conv1d``: GPT-2's [in, out] layout."""
        has_bias = self.has_bias(module)
        used_biases = [b if has_bias else None for b in biases]
        size = sum(self.params[w].numel() for w in weights)
        if size > self.budget:
            self.modules[module] = HeadsLinear(
                [self.params[w].detach() for w in weights],
                [self.params[b].detach() if b is not None else None for b in used_biases])
            self.shared += weights + [b for b in used_biases if b is not None]
            return
        self.budget -= size
        params, dtype = self.params, self.cfg.dtype
        with torch.no_grad():
            parts = [_heads_to_hf(params[w].detach()) for w in weights]  # [(n h), d] each
            weight = torch.cat(parts, 0).to(dtype).contiguous()
        hf_weight = weight.T if conv1d else weight  # Conv1D holds [in, out]: a view of the same copy
        self.state[f"{module}.weight"] = hf_weight
        start = 0
        for w in weights:
            n = params[w].shape[0]
            rows = n * params[w].shape[2]
            back = _hf_rows_to_heads(weight[start : start + rows], n)  # a view into the copy
            self.copies[w] = lambda w=w, back=back: (params[w], back)
            start += rows
        if has_bias:
            if len(biases) == 1 and biases[0] is not None:
                self.share(f"{module}.bias", biases[0], lambda t: t.reshape(-1))
            else:
                if any(b is None for b in biases):
                    raise MirrorUnsupported(f"no TransformerLens bias for every part of {module}")
                with torch.no_grad():
                    bias = torch.cat([params[b].detach().reshape(-1) for b in biases]).to(dtype)
                self.state[f"{module}.bias"] = bias
                start = 0
                for b in biases:
                    k = params[b].numel()
                    back = bias[start : start + k].view(params[b].shape)
                    self.copies[b] = lambda b=b, back=back: (params[b], back)
                    start += k
                self.budget -= bias.numel()

    def in_place(self, module: str, replacement: torch.nn.Module, tl_names: list[str]) -> None:
        """Replace HF ``module`` by ``replacement``, which reads ``tl_names`` in place."""
        self.modules[module] = replacement
        self.shared += tl_names

    def fix(self, fn: Callable[[torch.nn.Module], None]) -> None:
        """Run ``fn(hf)`` once the HF model holds its weights (e.g. Gemma's embedding scale, folded in W_E)."""
        self.fixes.append(fn)


# --------------------------------------------------------------------------------------------------------
# plans: one per transformers class


def _head(b: MirrorBuilder, embed: str, final_norm: str, norm_fn=None) -> None:
    b.share(embed, "embed.W_E")
    if norm_fn is None:
        b.share(final_norm, "ln_final.w")
    else:
        b.derive(final_norm, "ln_final.w", norm_fn)
    b.share("lm_head.weight", "unembed.W_U", lambda t: t.T)


def _attention(b: MirrorBuilder, layer: int, fused_qkv: bool = False) -> None:
    """q / k / v / o of a Llama-style ``self_attn`` (separate projections, or Phi-3's fused ``qkv_proj``)."""
    t, h = f"blocks.{layer}.attn.", f"model.layers.{layer}.self_attn."
    q, k, v = t + "W_Q", b.tl(t + "_W_K", t + "W_K"), b.tl(t + "_W_V", t + "W_V")
    bq, bk, bv = t + "b_Q", b.tl(t + "_b_K", t + "b_K"), b.tl(t + "_b_V", t + "b_V")
    if fused_qkv:
        b.projection(h + "qkv_proj", [q, k, v], [bq, bk, bv])
    else:
        for proj, w, bias in (("q_proj", q, bq), ("k_proj", k, bk), ("v_proj", v, bv)):
            b.projection(h + proj, [w], [bias])
    b.share(h + "o_proj.weight", t + "W_O", lambda w: w.reshape(-1, w.shape[-1]).T)
    if b.has_bias(h + "o_proj"):
        b.share(h + "o_proj.bias", t + "b_O")


def _gated_mlp(b: MirrorBuilder, layer: int, fused: bool = False) -> None:
    t, h = f"blocks.{layer}.mlp.", f"model.layers.{layer}.mlp."
    if fused:  # Phi-3: gate_up_proj = [gate; up]
        b.in_place(h + "gate_up_proj", ConcatLinear([b.params[t + "W_gate"].detach(), b.params[t + "W_in"].detach()]),
                   [t + "W_gate", t + "W_in"])
    else:
        b.share(h + "gate_proj.weight", t + "W_gate", lambda w: w.T)
        b.share(h + "up_proj.weight", t + "W_in", lambda w: w.T)
        if b.has_bias(h + "up_proj"):
            b.share(h + "up_proj.bias", t + "b_in")
    b.share(h + "down_proj.weight", t + "W_out", lambda w: w.T)
    if b.has_bias(h + "down_proj"):
        b.share(h + "down_proj.bias", t + "b_out")


def _llama_plan(fused: bool = False) -> Callable[[MirrorBuilder], None]:
    """Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms), Phi-3 (fused projections)."""

    def plan(b: MirrorBuilder) -> None:
        _head(b, "model.embed_tokens.weight", "model.norm.weight")
        for layer in range(b.cfg.n_layers):
            t, h = f"blocks.{layer}.", f"model.layers.{layer}."
            b.share(h + "input_layernorm.weight", t + "ln1.w")
            b.share(h + "post_attention_layernorm.weight", t + "ln2.w")
            _attention(b, layer, fused_qkv=fused)
            if t + "attn.q_norm.w" in b.params:
                b.share(h + "self_attn.q_norm.weight", t + "attn.q_norm.w")
                b.share(h + "self_attn.k_norm.weight", t + "attn.k_norm.w")
            _gated_mlp(b, layer, fused=fused)

    return plan


def _gemma_norm(w: torch.Tensor) -> torch.Tensor:
    """HF Gemma norms scale by ``1 + weight``; TransformerLens stores ``1 + weight``."""
    return w - 1


def _gemma_plan(b: MirrorBuilder) -> None:
    """Gemma-2 / Gemma-3: sandwich norms stored as 1 + w in TransformerLens, the embedding scale folded into
    W_E, q/k norms (Gemma-3); soft-caps and sliding windows are the HF class's own."""
    _head(b, "model.embed_tokens.weight", "model.norm.weight", _gemma_norm)
    for layer in range(b.cfg.n_layers):
        t, h = f"blocks.{layer}.", f"model.layers.{layer}."
        b.derive(h + "input_layernorm.weight", t + "ln1.w", _gemma_norm)
        b.derive(h + "post_attention_layernorm.weight", t + "ln1_post.w", _gemma_norm)
        b.derive(h + "pre_feedforward_layernorm.weight", t + "ln2.w", _gemma_norm)
        b.derive(h + "post_feedforward_layernorm.weight", t + "ln2_post.w", _gemma_norm)
        _attention(b, layer)
        if t + "attn.q_norm.w" in b.params:
            b.derive(h + "self_attn.q_norm.weight", t + "attn.q_norm.w", _gemma_norm)
            b.derive(h + "self_attn.k_norm.weight", t + "attn.k_norm.w", _gemma_norm)
        _gated_mlp(b, layer)

    def unit_embed_scale(hf):
        emb = hf.get_input_embeddings()
        emb.embed_scale = torch.tensor(1.0, device=emb.weight.device)  # TransformerLens's W_E is pre-scaled
        emb.scalar_embed_scale = 1.0

    b.fix(unit_embed_scale)


def _olmo2_plan(b: MirrorBuilder) -> None:
    """OLMo-2: norms after attention and MLP (TransformerLens's ln1 / ln2), q/k norms over all heads."""
    _head(b, "model.embed_tokens.weight", "model.norm.weight")
    for layer in range(b.cfg.n_layers):
        t, h = f"blocks.{layer}.", f"model.layers.{layer}."
        b.share(h + "post_attention_layernorm.weight", t + "ln1.w")
        b.share(h + "post_feedforward_layernorm.weight", t + "ln2.w")
        _attention(b, layer)
        b.share(h + "self_attn.q_norm.weight", t + "attn.q_norm.w", lambda w: w.reshape(-1))
        b.share(h + "self_attn.k_norm.weight", t + "attn.k_norm.w", lambda w: w.reshape(-1))
        _gated_mlp(b, layer)


def _gpt2_plan(b: MirrorBuilder) -> None:
    """GPT-2: LayerNorms with biases, learned positions, Conv1D layers ([in, out]), fused c_attn."""
    b.share("transformer.wte.weight", "embed.W_E")
    b.share("transformer.wpe.weight", "pos_embed.W_pos")
    b.share("transformer.ln_f.weight", "ln_final.w")
    b.share("transformer.ln_f.bias", "ln_final.b")
    b.share("lm_head.weight", "unembed.W_U", lambda t: t.T)
    for layer in range(b.cfg.n_layers):
        t, h = f"blocks.{layer}.", f"transformer.h.{layer}."
        for ln, tl in (("ln_1", "ln1"), ("ln_2", "ln2")):
            b.share(f"{h}{ln}.weight", f"{t}{tl}.w")
            b.share(f"{h}{ln}.bias", f"{t}{tl}.b")
        a = t + "attn."
        b.projection(h + "attn.c_attn", [a + "W_Q", a + "W_K", a + "W_V"], [a + "b_Q", a + "b_K", a + "b_V"],
                     conv1d=True)
        b.share(h + "attn.c_proj.weight", a + "W_O", lambda w: w.reshape(-1, w.shape[-1]))
        b.share(h + "attn.c_proj.bias", a + "b_O")
        b.share(h + "mlp.c_fc.weight", t + "mlp.W_in")
        b.share(h + "mlp.c_fc.bias", t + "mlp.b_in")
        b.share(h + "mlp.c_proj.weight", t + "mlp.W_out")
        b.share(h + "mlp.c_proj.bias", t + "mlp.b_out")


def _gpt2_config(config, model) -> None:
    config.n_positions = model.cfg.n_ctx  # TransformerLens keeps the first n_ctx learned positions


@dataclass(frozen=True)
class MirrorPlan:
    """How a ``transformers`` class is given a HookedTransformer's parameters."""

    fill: Callable[[MirrorBuilder], None]
    attn_implementation: str = "sdpa"  # "eager" where sdpa cannot express the attention (Gemma-2's soft-cap)
    adjust_config: Callable | None = None  # (config copy, model) -> None


#: transformers class name -> its plan; ``register_mirror_plan`` adds one
MIRROR_PLANS: dict[str, MirrorPlan] = {
    "LlamaForCausalLM": MirrorPlan(_llama_plan()),
    "MistralForCausalLM": MirrorPlan(_llama_plan()),
    "Qwen2ForCausalLM": MirrorPlan(_llama_plan()),
    "Qwen3ForCausalLM": MirrorPlan(_llama_plan()),
    "Phi3ForCausalLM": MirrorPlan(_llama_plan(fused=True)),
    "Gemma2ForCausalLM": MirrorPlan(_gemma_plan, attn_implementation="eager"),
    "Gemma3ForCausalLM": MirrorPlan(_gemma_plan),
    "Olmo2ForCausalLM": MirrorPlan(_olmo2_plan),
    "GPT2LMHeadModel": MirrorPlan(_gpt2_plan, adjust_config=_gpt2_config),
}


def register_mirror_plan(architecture: str, plan: MirrorPlan) -> None:
    """Mirror another ``transformers`` class (its hook sites go in ``steering.sites.register_site_table``)."""
    MIRROR_PLANS[architecture] = plan


# --------------------------------------------------------------------------------------------------------
# building


def _check_supported(model) -> None:
    if type(model).__name__ != "HookedTransformer":
        raise MirrorUnsupported(f"{type(model).__name__} is not a HookedTransformer")
    spec = model_spec(model)
    if spec is not None and spec.processed:
        raise MirrorUnsupported("processed (folded/centred) weights are not in the HF basis")


def _config_for(model):
    """A private copy of the checkpoint's config (or, for a model loaded without one, a Llama config from
    TransformerLens's), set up for the mirror: untied head, no dropout, the model's dtype."""
    import copy

    config = _checkpoint_config(model)
    if config is None:
        config = _llama_config_from_tl(model.cfg)
    config = copy.deepcopy(config)
    config.tie_word_embeddings = False  # TransformerLens holds W_E and W_U apart: so does the mirror
    config.use_cache = True
    return config


def _llama_config_from_tl(cfg):
    """For HookedTransformers loaded by TransformerLens name (no checkpoint config): plain Llama-style only."""
    from transformers import LlamaConfig

    wanted = {"normalization_type": "RMS", "positional_embedding_type": "rotary", "gated_mlp": True,
              "act_fn": "silu", "final_rms": True, "rotary_adjacent_pairs": False}
    for k, v in wanted.items():
        if getattr(cfg, k, None) != v:
            raise MirrorUnsupported(f"no checkpoint config, and cfg.{k}={getattr(cfg, k, None)!r} (need {v!r})")
    if cfg.original_architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
        raise MirrorUnsupported(f"no checkpoint config for {cfg.original_architecture}")
    if getattr(cfg, "use_NTK_by_parts_rope", False) or (cfg.rotary_dim or cfg.d_head) != cfg.d_head:
        raise MirrorUnsupported("no checkpoint config, and rope scaling / partial rotary needs one")
    config = LlamaConfig(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads or cfg.n_heads, head_dim=cfg.d_head,
        max_position_embeddings=cfg.n_ctx, rope_theta=float(cfg.rotary_base), rms_norm_eps=cfg.eps,
        attention_bias=False, mlp_bias=False)
    config.architectures = ["LlamaForCausalLM"]
    return config


def _set_submodule(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def build_hf_mirror(model, attn_implementation: str | None = None, budget: float = MIRROR_MEMORY_BUDGET) -> Mirror:
    """The checkpoint's ``transformers`` model computing what ``model`` computes, on its weights (shared,
    read in place, or copied within ``budget``), in eval mode, frozen, self-checked on a probe input."""
    from transformers import AutoModelForCausalLM

    _check_supported(model)
    config = _config_for(model)
    hf_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    architecture = hf_class.__name__ if hf_class is not None else (config.architectures or ["?"])[0]
    plan = MIRROR_PLANS.get(architecture)
    if plan is None:
        raise MirrorUnsupported(f"no mirror plan for {architecture} (see hf_mirror.register_mirror_plan)")
    if plan.adjust_config is not None:
        plan.adjust_config(config, model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    device = params["embed.W_E"].device
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation or plan.attn_implementation)
        head = hf.get_output_embeddings()
        for path, module in list(hf.named_modules()):  # decoding may multiply by pre-packed weights (packed_linear)
            if type(module) is torch.nn.Linear:
                kind = ContiguousInputLinear if module is head else PackableLinear
                _set_submodule(hf, path, kind(module.in_features, module.out_features, bias=module.bias is not None))
    builder = MirrorBuilder(model, hf, budget=int(budget * total), params=params)
    plan.fill(builder)
    for path, module in builder.modules.items():
        _set_submodule(hf, path, module)
    expected = {n for n, _ in hf.named_parameters()}
    missing = sorted(expected - builder.state.keys())
    if missing:
        raise MirrorUnsupported(f"no TransformerLens parameter for {missing[0]} of {architecture}")
    hf.load_state_dict(builder.state, assign=True, strict=True)
    used = set(builder.shared) | set(builder.copies)
    zeros = [n for n in params if n not in used]
    for n in zeros:
        if params[n].detach().any():
            kind = "bias" if n.split(".")[-1].lstrip("_").startswith("b_") else "parameter"
            raise MirrorUnsupported(f"non-zero {kind} {n} (no counterpart in {architecture})")
    _materialise_buffers(hf, device)
    for fix in builder.fixes:
        fix(hf)
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise MirrorUnsupported(f"the mirror of {architecture} cannot rebuild {left[0]}")
    hf.eval().requires_grad_(False)
    check_mirror(model, hf)
    identity = {n: (id(p), p.data_ptr()) for n, p in params.items()}
    return Mirror(hf, architecture, identity, builder.copies, zeros, sorted(set(builder.shared)), total)


def _materialise_buffers(hf: torch.nn.Module, device) -> None:
    """Buffers made on the meta device (rotary frequencies) rebuilt on the model's device."""
    for path, module in list(hf.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device(device):
                fresh = type(module)(getattr(module, "config", hf.config))
            _set_submodule(hf, path, fresh)


def check_mirror(model, hf, tol: float = 1e-3) -> None:
    """Raise ``MirrorUnsupported`` unless ``hf`` computes what ``model`` computes, compared on a probe sequence
    (every build runs it; a mirror that fails is never used).

    float32 / float64 models: the two logits must agree to ``tol`` (relative to the logits' scale). Half
    precision: two implementations of one network round differently (on the embedded model in bfloat16 they
    differ by tenths of a logit), so the mirror is instead held to the HookedTransformer's own accuracy:
    both are compared with the function the stored weights define, computed in float32 arithmetic
    (``models.precision.float32_arithmetic``), and the mirror's largest error may be at most twice the
    HookedTransformer's (plus ``tol``). A structural mistake (a head permuted, a bias or norm dropped) moves
    logits by far more than rounding and fails either test."""
    from steerinterp.models.precision import HALF_DTYPES, float32_arithmetic

    gen = torch.Generator().manual_seed(0)
    probe = torch.randint(0, model.cfg.d_vocab, (1, 12), generator=gen).to(model_device(model))
    with torch.no_grad():
        ref = model(probe).float()
        got = hf(probe).logits.float()
        scale = tol * max(1.0, ref.abs().max().item() / 10)
        if model.cfg.dtype not in HALF_DTYPES:
            diff = (ref - got).abs().max().item()
            if not diff < scale:
                raise MirrorUnsupported(f"HF mirror disagrees with the HookedTransformer (max |logit diff| {diff:.2e})")
            return
        with float32_arithmetic():
            exact = model(probe).float()
        ours, theirs = (ref - exact).abs().max().item(), (got - exact).abs().max().item()
    if not theirs <= 2 * ours + scale:
        raise MirrorUnsupported(
            f"HF mirror is less accurate in {str(model.cfg.dtype).removeprefix('torch.')} than the HookedTransformer "
            f"(max |logit error| {theirs:.2e} against {ours:.2e}, both against float32 arithmetic on the same weights)")
