"""What the analyses that do algebra on a network need to know about it, read once from the loaded model.

Most analyses only run forwards with hooks and read activations, which is right for any network the
model class runs. A few redo part of the network by hand: they read the residual stream out through
the final norm and the unembedding (token shift, residual lens, block and path patching), or split the
logits linearly over the residual stream (route attribution, direct logit attribution, the norm-aware
logit lens). Those read ``Architecture``: a small declared description built from the model's config
(``cfg.normalization_type``, ``output_logits_soft_cap``, ``rmsnorm_uses_offset``) and the checkpoint's
own ``transformers`` config, never from the model's name.

* ``final_norm``: ``"rms"`` (RMSNorm), ``"ln"`` (LayerNorm: centres first) or None.
* ``norm_offset``: the final norm multiplies by ``norm_offset + ln_final.w`` (1 for Gemma on a
  TransformerBridge, which keeps Hugging Face's stored weight; TransformerLens's own Gemma conversion
  stores ``1 + w`` and needs 0).
* ``logit_soft_cap``: the logits are ``cap * tanh(logits / cap)`` (Gemma-2), or None.
* ``post_norms``: each block normalises its attention output before adding it to the residual stream
  (Gemma-2/3 sandwich norms, OLMo-2's post-norms): the attention output is no sum over heads then.
  Read from ``cfg.use_normalization_before_and_after``, TransformerLens's ``POST_NORM_ARCHITECTURES``,
  a ``ln1_post`` module, or (TransformerBridge) ``hook_attn_out`` being declared on a norm's output.
* ``qk_norm_spans_heads``: the query / key norm normalises all heads together (OLMo-2; a ``q_norm`` whose
  weight is wider than a head), so one head's ``hook_q`` (before it) moves every head's queries.

``final_norm(model)`` gives the final norm as linear algebra (kind, gain with the offset applied, bias,
eps) and checks it against the model's own ``ln_final`` on a probe, so an unknown convention is a
refusal, never a silently wrong result. ``final_logits(model, resid)`` is the read-out the model's own
forward does after its last block: final norm, unembedding, soft-cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerinterp.errors import SteerInterpError
from steerinterp.generation.engines import logit_soft_cap
from steerinterp.models.loading import checkpoint_config
from steerinterp.types import is_bridge


@dataclass(frozen=True)
class Architecture:
    """The network facts the analyses' algebra depends on (see the module docstring)."""

    name: str
    backend: str
    final_norm: str | None
    norm_offset: float
    eps: float
    logit_soft_cap: float | None
    post_norms: bool
    qk_norm_spans_heads: bool = False

    def refusal(self, analysis: str, missing: str) -> SteerInterpError:
        """The one-line error of an analysis that does not apply to this architecture."""
        return SteerInterpError(f"{analysis} does not support {self.name} ({self.backend}): {missing}")


def _post_norm_architectures() -> set:
    """TransformerLens's own declaration of the post-norm blocks of a HookedTransformer (OLMo-2/3)."""
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # another TransformerLens: the other declarations still apply
        return set()
    return set(POST_NORM_ARCHITECTURES)


_NORMS = {"RMS": "rms", "RMSPre": "rms", "LN": "ln", "LNPre": "ln"}


def architecture(model) -> Architecture:
    """The declared description of ``model``'s network (read from its configs; see the module docstring)."""
    cfg = model.cfg
    hf = checkpoint_config(model)
    names = list(getattr(hf, "architectures", None) or [])
    name = names[0] if names else (getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
                                   or getattr(cfg, "model_name", None) or type(model).__name__)
    cap = logit_soft_cap(model)
    blocks = getattr(model, "blocks", None)
    post = bool(getattr(cfg, "use_normalization_before_and_after", False))
    post = post or getattr(cfg, "original_architecture", None) in _post_norm_architectures()
    if blocks is not None and len(blocks):
        block = blocks[0]
        post = post or isinstance(block._modules.get("ln1_post"), torch.nn.Module)
        # a TransformerBridge declares where hook_attn_out sits: on a norm's output for post-norm blocks
        aliases = vars(block).get("hook_aliases") or getattr(type(block), "hook_aliases", None) or {}
        target = aliases.get("hook_attn_out", "") if isinstance(aliases, dict) else ""
        post = post or target.split(".")[0].startswith("ln")
        q_norm = block.attn._modules.get("q_norm") if isinstance(block._modules.get("attn"), torch.nn.Module) else None
        weight = next(q_norm.parameters(), None) if isinstance(q_norm, torch.nn.Module) else None
        spans = weight is not None and weight.numel() > cfg.d_head
    else:
        spans = False
    return Architecture(
        name=str(name),
        backend="bridge" if is_bridge(model) else "hooked",
        final_norm=_NORMS.get(getattr(cfg, "normalization_type", None)),
        norm_offset=1.0 if getattr(cfg, "rmsnorm_uses_offset", False) else 0.0,
        eps=float(getattr(cfg, "eps", 1e-5)),
        logit_soft_cap=cap,
        post_norms=post,
        qk_norm_spans_heads=spans,
    )


@dataclass(frozen=True)
class FinalNorm:
    """The final norm as algebra: ``y = gain * centre(x) / sqrt(mean(centre(x)^2) + eps) + bias``
    (``centre`` subtracts the mean for a LayerNorm, nothing for an RMSNorm). ``gain`` / ``bias`` are
    float64, None when the norm has none (processed weights fold the gain into ``W_U``)."""

    kind: str | None
    gain: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.kind == "ln" else x

    def inverse_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``1 / sigma(x)`` [..., 1] (ones without a norm)."""
        if self.kind is None:
            return torch.ones_like(x[..., :1])
        return (self.centre(x).pow(2).mean(-1, keepdim=True) + self.eps).rsqrt()

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's linear part with the scale frozen at 1: ``gain * centre(x)``."""
        x = self.centre(x)
        return x * self.gain.to(x.device, x.dtype) if self.gain is not None else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x) * self.inverse_scale(x)
        return y + self.bias.to(y.device, y.dtype) if self.bias is not None else y


def final_norm(model, analysis: str) -> FinalNorm:
    """The final norm of ``model`` as ``FinalNorm``, checked against ``model.ln_final`` on a probe.

    A norm the description does not reproduce (another offset convention, a norm of another kind) is a
    ``SteerInterpError`` naming ``analysis`` and the architecture."""
    arch = architecture(model)
    ln = getattr(model, "ln_final", None)
    if arch.final_norm is None or ln is None:
        return FinalNorm(None, None, None, arch.eps)
    w, b = getattr(ln, "w", None), getattr(ln, "b", None)
    gain = w.detach().double() + arch.norm_offset if isinstance(w, torch.Tensor) else None
    bias = b.detach().double() if isinstance(b, torch.Tensor) and arch.final_norm == "ln" else None
    norm = FinalNorm(arch.final_norm, gain, bias, arch.eps)
    probe = torch.randn(2, model.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = probe * 3 + 0.5
    dtype = next((p.dtype for p in ln.parameters()), model.cfg.dtype)
    device = next((p.device for p in ln.parameters()), torch.device("cpu"))
    with torch.no_grad():
        got = ln(probe.to(device, dtype)[None])[0].double().cpu()
    want = norm(probe)
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2  # a wrong convention is off by O(1)
    if not torch.allclose(got, want, rtol=tol, atol=tol):
        raise arch.refusal(analysis, f"its final norm ({type(ln).__name__}) is not the {arch.final_norm} norm with "
                                     f"gain {arch.norm_offset:g} + ln_final.w the analysis computes with")
    return norm


def soft_cap(arch: Architecture, logits: torch.Tensor) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` for a soft-capped architecture, else the logits."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(logits, arch.logit_soft_cap)


def final_logits(model, resid: torch.Tensor, arch: Architecture | None = None) -> torch.Tensor:
    """The logits the model's forward computes from final-block residuals ``[..., pos, d_model]`` (a batch
    dimension is added and removed for ``[n, d_model]``): ``ln_final``, the unembedding, the soft-cap."""
    arch = architecture(model) if arch is None else arch
    flat = resid.dim() == 2
    x = resid[None] if flat else resid
    logits = soft_cap(arch, model.unembed(model.ln_final(x)))
    return logits[0] if flat else logits
