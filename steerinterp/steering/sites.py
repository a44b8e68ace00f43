"""The one table between TransformerLens hook names and the modules of a Hugging Face model.

A steering object speaks TransformerLens hook names (``blocks.12.hook_resid_post``). An engine that runs
the same network as a plain ``transformers`` model (the fast rollout mirror) finds, here, the module and
side (its input or its output) where the same activation flows. Only the sites listed here are mirrored;
any other hook makes ``hf_site`` return None and the engine steps aside for the HookedTransformer.
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


# Llama-style decoder layers (LlamaForCausalLM and the transformers classes that share its module names)
_LLAMA_SITES: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), "model.layers.{l}", "output"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), "model.layers.{l}", "input"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_out$"), "model.layers.{l}.mlp", "output"),
    (re.compile(r"^blocks\.(\d+)\.hook_attn_out$"), "model.layers.{l}.self_attn", "output"),
    # resid_mid = resid_pre + attn_out, so adding at resid_mid is adding to the attention output
    (re.compile(r"^blocks\.(\d+)\.hook_resid_mid$"), "model.layers.{l}.self_attn", "output"),
    # the MLP's hidden activation (act(gate) * up) is the input of down_proj
    (re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$"), "model.layers.{l}.mlp.down_proj", "input"),
]


def hf_site(hook_name: str) -> Site | None:
    """Where a TransformerLens hook's activation flows in the HF model, or None when it is not mirrored."""
    for pattern, module, side in _LLAMA_SITES:
        m = pattern.match(hook_name)
        if m:
            return Site(module.format(l=m.group(1)), side)  # type: ignore[arg-type]
    return None


def hf_sites(hook_names) -> dict[str, Site | None]:
    """``hf_site`` of each name."""
    return {n: hf_site(n) for n in hook_names}
