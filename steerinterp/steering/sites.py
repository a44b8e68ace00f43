"""The one table between TransformerLens hook names and the modules of a Hugging Face model.

A steering object speaks TransformerLens hook names (``blocks.12.hook_resid_post``). An engine that runs
the same network as a plain ``transformers`` model (the fast rollout mirror) finds, here, the module and
side (its input or its output) where the same activation flows, per architecture (the ``transformers``
class name, e.g. ``Qwen2ForCausalLM``). Only the sites listed here are mirrored; any other hook, or an
architecture with no table, makes ``hf_site`` return None and the engine steps aside for the
HookedTransformer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Site:
    """An HF module path and which of its tensors carries the activation (``input`` or ``output``)."""

    module: str
    side: Literal["input", "output"]


#: per-block hook (the name after ``blocks.{l}.``) -> (HF module path with ``{l}``, side)
SiteTable = dict[str, tuple[str, Literal["input", "output"]]]

# Pre-norm decoder layers: Llama, Mistral, Qwen2, Qwen3, Phi-3 (``model.layers.{l}``, ``self_attn``, ``mlp``,
# the MLP's hidden activation act(gate) * up entering ``down_proj``)
_PRE_NORM: SiteTable = {
    "hook_resid_pre": ("model.layers.{l}", "input"),
    "hook_resid_post": ("model.layers.{l}", "output"),
    "hook_attn_out": ("model.layers.{l}.self_attn", "output"),
    # resid_mid = resid_pre + attn_out, so adding at resid_mid is adding to the attention output
    "hook_resid_mid": ("model.layers.{l}.self_attn", "output"),
    "hook_mlp_out": ("model.layers.{l}.mlp", "output"),
    "mlp.hook_post": ("model.layers.{l}.mlp.down_proj", "input"),
}

# Norms after attention and MLP, before the residual add: Gemma-2 / Gemma-3 (sandwich) and OLMo-2 (post-norm).
# TransformerLens's hook_attn_out / hook_mlp_out come after those norms (what is added to the residual).
_POST_NORM: SiteTable = {
    **_PRE_NORM,
    "hook_attn_out": ("model.layers.{l}.post_attention_layernorm", "output"),
    "hook_resid_mid": ("model.layers.{l}.post_attention_layernorm", "output"),
    "hook_mlp_out": ("model.layers.{l}.post_feedforward_layernorm", "output"),
}

# GPT-2: ``transformer.h.{l}`` with ``attn`` / ``mlp`` adding to the residual, MLP hidden entering ``c_proj``
_GPT2: SiteTable = {
    "hook_resid_pre": ("transformer.h.{l}", "input"),
    "hook_resid_post": ("transformer.h.{l}", "output"),
    "hook_attn_out": ("transformer.h.{l}.attn", "output"),
    "hook_resid_mid": ("transformer.h.{l}.attn", "output"),
    "hook_mlp_out": ("transformer.h.{l}.mlp", "output"),
    "mlp.hook_post": ("transformer.h.{l}.mlp.c_proj", "input"),
}

#: transformers class name -> its site table; ``register_site_table`` adds one
SITE_TABLES: dict[str, SiteTable] = {
    "LlamaForCausalLM": _PRE_NORM,
    "MistralForCausalLM": _PRE_NORM,
    "Qwen2ForCausalLM": _PRE_NORM,
    "Qwen3ForCausalLM": _PRE_NORM,
    "Phi3ForCausalLM": _PRE_NORM,
    "Gemma2ForCausalLM": _POST_NORM,
    "Gemma3ForCausalLM": _POST_NORM,
    "Olmo2ForCausalLM": _POST_NORM,
    "GPT2LMHeadModel": _GPT2,
}

DEFAULT_ARCHITECTURE = "LlamaForCausalLM"

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def register_site_table(architecture: str, table: SiteTable) -> None:
    """Map TransformerLens hooks to the modules of another ``transformers`` class."""
    SITE_TABLES[architecture] = dict(table)


def hf_site(hook_name: str, architecture: str | None = DEFAULT_ARCHITECTURE) -> Site | None:
    """Where a TransformerLens hook's activation flows in the HF model of ``architecture``, or None when it
    is not mirrored (an unlisted hook or architecture)."""
    table = SITE_TABLES.get(architecture or "")
    m = _BLOCK_HOOK.match(hook_name)
    if table is None or m is None or m.group(2) not in table:
        return None
    module, side = table[m.group(2)]
    return Site(module.format(l=m.group(1)), side)


def hf_sites(hook_names, architecture: str | None = DEFAULT_ARCHITECTURE) -> dict[str, Site | None]:
    """``hf_site`` of each name."""
    return {n: hf_site(n, architecture) for n in hook_names}
