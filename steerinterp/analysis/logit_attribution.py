"""Direct logit attribution on unprocessed weights: a logit (difference) split over the residual stream.

The residual stream before the final norm is a sum of components, ``h = embed + sum_l (attn_l + mlp_l)
+ other`` (``other``: what hooks such as steering vectors wrote, plus the stream's own rounding). The
logits are ``unembed(ln_final(h))``; for the final RMSNorm (LayerNorm: centre ``h`` first)

    logit(t) - logit(t') = sum_c  (c / sigma) . (gamma * u)  +  beta . u + b_U[t] - b_U[t'],
    u = W_U[:, t] - W_U[:, t'],

with ``sigma`` the norm's scale (``ln_final.hook_scale``), ``gamma`` / ``beta`` its weight and bias and
``W_U``, ``b_U`` the unembedding. With ``sigma`` frozen at its cached value the map is linear, so the
components (plus the constant ``bias`` term) add up to the model's own logit difference exactly, to
rounding: the float64 tiny model checks it to 1e-9. The nonlinearity of the norm is what this leaves
out: a component's share is not what removing it would do, since removing it changes ``sigma``.

TransformerLens's ``cache.logit_attrs(cache.decompose_resid(...), ...)`` divides by ``sigma`` but never
multiplies by ``gamma``, which is right only for processed weights (``fold_ln`` moves ``gamma`` into
``W_U``); on ``load_model``'s default unprocessed weights its terms do not add up to the logit
difference (docs/patching.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from steerinterp.analysis.architecture import architecture, final_norm
from steerinterp.analysis.batch import Batch, TokenBatch, as_batch, run_cached
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_id
from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel


@dataclass
class LogitAttributionResult(AnalysisResult):
    """Per analysed position, each component's share of the logit (difference).

    ``contributions[i, c]`` for position ``i`` (row ``sample[i]``, column ``position[i]``) and component
    ``components[c]``; the last component, ``bias``, is the part that does not come from the residual
    stream (final-norm bias and ``b_U``). ``logit`` is the model's own logit (difference) at each position;
    ``contributions.sum(1)`` equals it up to rounding (``gap``).
    """

    components: list[str]
    contributions: Float[torch.Tensor, "positions components"]
    logit: Float[torch.Tensor, "positions"]
    sample: Int[torch.Tensor, "positions"]
    position: Int[torch.Tensor, "positions"]
    label: str = "logit"

    @property
    def total(self) -> Float[torch.Tensor, "positions"]:
        """The sum of all components at each position."""
        return self.contributions.sum(1)

    @property
    def gap(self) -> float:
        """Largest ``|sum of components - the model's logit (difference)|`` over positions."""
        return float((self.total - self.logit).abs().max()) if len(self.logit) else 0.0

    def to_frame(self, per_position: bool = False):
        """One row per component: its mean and summed contribution over positions (``per_position=True``:
        one row per position and component). ``attrs["logit_mean"]`` is the mean logit (difference)."""
        import pandas as pd

        if per_position:
            n, k = self.contributions.shape
            frame = pd.DataFrame({"sample": self.sample.repeat_interleave(k).tolist(),
                                  "position": self.position.repeat_interleave(k).tolist(),
                                  "component": self.components * n,
                                  "contribution": self.contributions.reshape(-1).tolist()})
        else:
            frame = pd.DataFrame({"component": self.components,
                                  "mean": self.contributions.mean(0).tolist(),
                                  "total": self.contributions.sum(0).tolist()})
        frame.attrs["logit_mean"] = float(self.logit.mean()) if len(self.logit) else float("nan")
        frame.attrs["label"] = self.label
        return frame

    def plot(self):
        import plotly.graph_objects as go

        frame = self.to_frame()
        fig = go.Figure(go.Bar(x=frame["component"], y=frame["mean"],
                               marker_color=["#2471a3" if v >= 0 else "#c0392b" for v in frame["mean"]]))
        fig.update_layout(title=f"direct logit attribution of {self.label} (mean over {len(self.logit)} positions; "
                                f"mean {self.label} = {frame.attrs['logit_mean']:.3g})",
                          yaxis_title="contribution", xaxis_title="component")
        return fig


@torch.no_grad()
def logit_attribution(model: HookedModel, inputs, token, against=None, *, positions="first", steering=None,
                      heads: bool = False, batch_size: int = 8) -> LogitAttributionResult:
    """Split ``logit(token) - logit(against)`` over the residual stream's components (module docstring).

    ``inputs``: a ``Batch`` / ``GenerationOutput`` (run here, with ``steering`` if given), or a
    TransformerLens ``ActivationCache`` of one forward (it must hold ``hook_embed``, each block's
    ``hook_attn_out`` (``hook_z`` with ``heads=True``) and ``hook_mlp_out``, the last block's
    ``hook_resid_post`` and ``ln_final.hook_scale``). ``token`` / ``against``: a token string or id for
    every position, ``"next"`` (each position's next token in the batch; not for a cache), or a long
    tensor of ids, ``[batch]`` or ``[batch, seq]``; ``against=None`` attributes the plain logit.
    ``positions``: ``"first"`` / ``"completion"`` / ``"all"`` (a ``Batch``'s positions; a cache knows only
    ``"all"``), a column index, or a bool mask ``[batch, seq]``. ``heads=True`` splits each attention
    output over its heads (``hook_z @ W_O``), the rest (``b_O``) as ``attn L bias``.
    """
    from transformer_lens import ActivationCache

    names = _hook_names(model, heads)
    if isinstance(inputs, ActivationCache):
        return _attribute(model, inputs, None, token, against, positions, heads, names)
    if not isinstance(inputs, (Batch, TokenBatch)):
        raise SteerInterpError(f"inputs must be a Batch, a GenerationOutput or an ActivationCache, got {type(inputs).__name__}")
    batch = as_batch(inputs)
    if batch_size < 1:
        raise SteerInterpError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        rows = slice(start, start + len(chunk))
        logits, cache = run_cached(model, chunk, steering, names, logits=True)
        r = _attribute(model, cache, (chunk, logits, rows), token, against, positions, heads, names)
        r.sample += start
        parts.append(r)
    first = parts[0]
    return LogitAttributionResult(first.components, torch.cat([p.contributions for p in parts]),
                                  torch.cat([p.logit for p in parts]), torch.cat([p.sample for p in parts]),
                                  torch.cat([p.position for p in parts]), first.label)


def _hook_names(model, heads: bool) -> list[str]:
    cfg = model.cfg
    arch = architecture(model)
    if arch.logit_soft_cap is not None:
        raise arch.refusal("direct logit attribution", f"it soft-caps its logits (cap {arch.logit_soft_cap:g}), a "
                                                       "nonlinearity after the unembedding")
    if heads and arch.post_norms:
        raise arch.refusal("per-head logit attribution", "a norm follows each attention output, so it is no sum over "
                                                         "heads; use heads=False")
    names = ["hook_embed"] + (["hook_pos_embed"] if _standard_positions(model) else [])
    for layer in range(cfg.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z" if heads else f"blocks.{layer}.hook_attn_out")
        if heads:
            names.append(f"blocks.{layer}.hook_attn_out")
        if not cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    if "ln_final.hook_scale" in model.hook_dict:
        names.append("ln_final.hook_scale")
    return names


def _standard_positions(model) -> bool:
    """Learned absolute positions added to the residual stream (GPT-2), a component of their own."""
    return getattr(model.cfg, "positional_embedding_type", None) == "standard" and "hook_pos_embed" in model.hook_dict


def _final_norm(model):
    """``(kind, gamma, beta)`` of the final norm: kind ``"rms"``, ``"ln"`` (centres) or ``None`` (no norm);
    ``gamma`` is the gain the model applies (Gemma: ``1 + w``)."""
    norm = final_norm(model, "direct logit attribution")
    return norm.kind, norm.gain, norm.bias


def _attribute(model, cache, run, token, against, positions, heads, names) -> LogitAttributionResult:
    missing = [n for n in names if n not in cache.cache_dict]
    if missing:
        raise SteerInterpError(f"the cache lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
                               "cache them with run_with_cache(..., names_filter=...)")
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    n_rows, n_pos = final.shape[:2]
    chunk = run[0] if run else None
    sel = _position_mask(chunk, positions, n_rows, n_pos, final.device, rows=run[2] if run else None)
    b_idx, t_idx = sel.nonzero(as_tuple=True)
    ids_t = _token_ids(model, token, chunk, n_rows, n_pos, "token", run[2] if run else None)[b_idx.cpu(), t_idx.cpu()]
    u = model.W_U.detach().double()[:, ids_t.to(model.W_U.device)].T  # [n, d_model]
    b_u = model.b_U.detach().double()
    bias = b_u[ids_t.to(b_u.device)]
    label = "logit"
    if against is not None:
        ids_a = _token_ids(model, against, chunk, n_rows, n_pos, "against", run[2] if run else None)[b_idx.cpu(), t_idx.cpu()]
        u = u - model.W_U.detach().double()[:, ids_a.to(model.W_U.device)].T
        bias = bias - b_u[ids_a.to(b_u.device)]
        label = "logit difference"
    u = u.to(final.device)
    bias = bias.to(final.device)
    kind, gamma, beta = _final_norm(model)
    if kind is not None and "ln_final.hook_scale" not in cache.cache_dict:
        raise SteerInterpError("the cache lacks ln_final.hook_scale, the final norm's scale")
    scale = cache["ln_final.hook_scale"][b_idx, t_idx].double() if kind is not None else torch.ones(len(b_idx), 1)
    direction = (u * gamma.to(u.device) if gamma is not None else u) / scale.to(u.device)  # [n, d_model]
    if beta is not None:
        bias = bias + u @ beta.to(u.device)

    def read(x):  # a residual-stream component at the selected positions, through the frozen norm
        x = x.double()
        if kind == "ln":
            x = x - x.mean(-1, keepdim=True)
        return (x * direction).sum(-1)

    labels, cols, summed = [], [], torch.zeros(len(b_idx), model.cfg.d_model, dtype=torch.float64, device=final.device)

    def add(label, x):
        nonlocal summed
        labels.append(label)
        cols.append(read(x))
        summed = summed + x.double()

    add("embed", cache["hook_embed"][b_idx, t_idx])
    if "hook_pos_embed" in names:
        add("pos_embed", cache["hook_pos_embed"][b_idx, t_idx])
    for layer in range(model.cfg.n_layers):
        attn_out = cache[f"blocks.{layer}.hook_attn_out"][b_idx, t_idx]
        if heads:
            z = cache[f"blocks.{layer}.attn.hook_z"][b_idx, t_idx].double()  # [n, heads, d_head]
            w_o = model.blocks[layer].attn.W_O.detach().double().to(z.device)  # [heads, d_head, d_model]
            per_head = torch.einsum("nhe,hed->nhd", z, w_o)
            for h in range(per_head.shape[1]):
                add(f"attn {layer} head {h}", per_head[:, h])
            add(f"attn {layer} bias", attn_out.double() - per_head.sum(1))
        else:
            add(f"attn {layer}", attn_out)
        if not model.cfg.attn_only:
            add(f"mlp {layer}", cache[f"blocks.{layer}.hook_mlp_out"][b_idx, t_idx])
    labels.append("other")
    cols.append(read(final[b_idx, t_idx].double() - summed))
    labels.append("bias")
    cols.append(bias)
    contributions = torch.stack(cols, 1).cpu() if cols else torch.zeros(0, 0, dtype=torch.float64)
    if run is not None:
        logits = run[1][b_idx, t_idx].double()
    else:
        logits = model.unembed(model.ln_final(final[b_idx, t_idx][:, None]))[:, 0].double()
    true = logits.gather(1, ids_t.to(logits.device)[:, None])[:, 0]
    if against is not None:
        true = true - logits.gather(1, ids_a.to(logits.device)[:, None])[:, 0]
    return LogitAttributionResult(labels, contributions, true.cpu(), b_idx.cpu(), t_idx.cpu(), label)


def _position_mask(chunk: Batch | None, positions, n_rows: int, n_pos: int, device, rows=None) -> torch.Tensor:
    if isinstance(positions, torch.Tensor):
        mask = positions.bool()
        if rows is not None and mask.shape[0] != n_rows:
            mask = mask[rows]
        if tuple(mask.shape) != (n_rows, n_pos):
            raise SteerInterpError(f"a positions mask must be [batch, seq] = {(n_rows, n_pos)}, got {tuple(mask.shape)}")
        return mask.to(device)
    if isinstance(positions, int) and not isinstance(positions, bool):
        if not -n_pos <= positions < n_pos:
            raise SteerInterpError(f"positions={positions} is outside the {n_pos} columns")
        mask = torch.zeros(n_rows, n_pos, dtype=torch.bool, device=device)
        mask[:, positions] = True
        return mask
    if chunk is None:
        if positions != "all":
            raise SteerInterpError(f"positions={positions!r} needs a Batch; with a cache give 'all', a column index "
                                   "or a bool mask")
        return torch.ones(n_rows, n_pos, dtype=torch.bool, device=device)
    return chunk.positions(positions).to(device)


def _token_ids(model, spec, chunk: Batch | None, n_rows: int, n_pos: int, what: str, rows=None) -> torch.Tensor:
    """``[batch, seq]`` token ids (on the CPU) from a token, ``"next"`` or a tensor of ids."""
    if isinstance(spec, str) and spec == "next":
        if chunk is None:
            raise SteerInterpError(f"{what}='next' reads the batch's tokens; give a Batch, not a cache")
        ids = torch.zeros(n_rows, n_pos, dtype=torch.long)
        ids[:, :-1] = chunk.tokens[:, 1:].cpu()
        return ids
    if isinstance(spec, (str, int)) and not isinstance(spec, bool):
        return torch.full((n_rows, n_pos), token_id(model, spec), dtype=torch.long)
    if isinstance(spec, torch.Tensor):
        ids = spec.long().cpu()
        if rows is not None and ids.dim() >= 1 and ids.shape[0] != n_rows:
            ids = ids[rows]
        if ids.dim() == 1 and ids.shape[0] == n_rows:
            ids = ids[:, None].expand(n_rows, n_pos)
        if tuple(ids.shape) != (n_rows, n_pos):
            raise SteerInterpError(f"{what} ids must be [batch] or [batch, seq] = {(n_rows, n_pos)}, got {tuple(spec.shape)}")
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < model.cfg.d_vocab):
            raise SteerInterpError(f"{what} ids must lie in 0..{model.cfg.d_vocab - 1}")
        return ids
    raise SteerInterpError(f"{what}={spec!r}; give a token string or id, 'next', or a tensor of ids")
