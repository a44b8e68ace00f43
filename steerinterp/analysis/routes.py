"""Route attribution: along which paths the steering effect reaches chosen logits.

The final residual's change ``h_s - h_b`` splits exactly into the vectors themselves (carried by the
residual stream, the direct path) and every later block's change in attention and MLP output (what the
block adds to the residual stream: after the post-attention / post-MLP norms of Gemma-2/3). With the
steered run's final-norm scale ``sigma_s``,

    logit_s(v) - logit_b(v) = sum_c  W_U[:, v] . (gamma * P c) / sigma_s  +  norm term,

over components c (direct, attn l, mlp l), where ``P`` centres a vector for a LayerNorm (identity for an
RMSNorm), ``gamma`` is the final norm's gain (``1 + w`` for Gemma) and the norm term ``W_U[:, v] . gamma
* P h_b (1/sigma_s - 1/sigma_b)`` is what the final norm's rescaling adds (the norm's bias and ``b_U``
cancel). This is direct logit attribution of the
difference (PAPER_NOTES section 4.5): how much goes through the next block's attention, its MLP,
the later blocks, and straight to the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.architecture import architecture, final_norm
from steerinterp.analysis.batch import as_batch, paired_caches
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_ids
from steerinterp.analysis.vectors import as_vector_dict
from steerinterp.errors import SteerInterpError


@dataclass
class RouteResult(AnalysisResult):
    """``frame``: one row per (token, component) with its mean contribution to the logit change."""

    frame: object
    first_steered: int
    positions: str
    n_positions: int

    def to_frame(self):
        return self.frame

    def summary(self):
        """Direct path, next block's attention and MLP, later blocks, norm term, and the total per token."""
        nxt = self.first_steered + 1

        def route(c: str) -> str:
            if c in ("direct", "norm"):
                return c
            kind, layer = c.split(" ")
            layer = int(layer)
            if layer < nxt:
                return f"{kind} (at or before the steered layer)"
            return f"{kind} {nxt} (next block)" if layer == nxt else f"{kind} later blocks"

        df = self.frame.assign(route=self.frame["component"].map(route))
        out = df.pivot_table(index="route", columns="token", values="contribution", aggfunc="sum")
        out.loc["total"] = out.sum()
        return out

    def plot(self):
        import plotly.graph_objects as go

        s = self.summary().drop(index="total")
        fig = go.Figure([go.Bar(x=list(s.index), y=s[t], name=repr(t)) for t in s.columns])
        fig.update_layout(barmode="group", yaxis_title="mean logit change",
                          title=f"routes of the steering effect to chosen logits ({self.positions} positions, "
                                f"n={self.n_positions})")
        return fig


@torch.no_grad()
def route_attribution(model, inputs, steering, tokens: Sequence[str | int], *, positions: str = "first",
                      batch_size: int = 8) -> RouteResult:
    """Split each chosen token's logit change into direct / attention / MLP / norm contributions.

    The final norm is the architecture's (``architecture.final_norm``: RMSNorm, or LayerNorm, whose
    centring applies to every component; Gemma's ``1 + w`` gain). A soft-capped model (Gemma-2) is refused:
    its logit change does not split linearly. ``attrs["exact_logit_change"]`` of the frame is the model's
    own mean logit change, which the rows add up to."""
    import pandas as pd

    batch = as_batch(inputs, model)
    if any(getattr(v, "positions", None) is not None and v.positions.kind != "all" for v in getattr(steering, "vectors", [])):
        raise SteerInterpError("route attribution needs vectors acting at every position (Positions.all())")
    off_resid = [v.hook_name for v in getattr(steering, "vectors", []) if not v.hook_name.endswith(".hook_resid_post")]
    if off_resid:
        raise SteerInterpError(f"route attribution reads vectors at blocks.L.hook_resid_post, got {off_resid[0]}; "
                               "move the vector to the residual stream after its block")
    vecs = as_vector_dict(steering)
    if not vecs:
        raise SteerInterpError("no steering vectors given")
    ids = token_ids(model, tokens)
    if not ids:
        raise SteerInterpError("name at least one token to attribute, e.g. tokens=['To']")
    arch = architecture(model)
    if arch.logit_soft_cap is not None:
        raise arch.refusal("route attribution", f"its logits are soft-capped after the unembedding (cap "
                                                f"{arch.logit_soft_cap:g}), so a logit change does not split linearly")
    norm = final_norm(model, "route attribution")
    n_layers = model.cfg.n_layers
    first = min(vecs)
    comps = ["direct"] + [f"{k} {x}" for x in range(first + 1, n_layers) for k in ("attn", "mlp")] + ["norm"]
    names = [f"blocks.{x}.hook_{k}_out" for x in range(first + 1, n_layers) for k in ("attn", "mlp")]
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    cols = list(ids.values())
    w = model.W_U.detach().double()[:, cols]  # [d, n_tokens]
    totals = torch.zeros(len(comps), len(ids), dtype=torch.float64)
    exact = torch.zeros(len(ids), dtype=torch.float64)
    n = 0
    steer_sum = sum(vecs.values()).double()
    for chunk, (lb, base), (ls, st) in paired_caches(model, batch, steering, names + [final], batch_size=batch_size,
                                                     logits=True):
        sel = chunk.positions(positions)
        n += int(sel.sum())
        hb, hs = base[final][sel].double(), st[final][sel].double()
        wd = w.to(hs.device)
        inv_b, inv_s = norm.inverse_scale(hb), norm.inverse_scale(hs)
        parts = [steer_sum.to(hs.device).expand_as(hs)]
        parts += [(st[nm][sel] - base[nm][sel]).double() for nm in names]
        for i, c in enumerate(parts):
            totals[i] += ((norm.linear(c) * inv_s) @ wd).sum(0).cpu()
        totals[-1] += ((norm.linear(hb) * (inv_s - inv_b)) @ wd).sum(0).cpu()
        exact += (ls[sel][:, cols].double() - lb[sel][:, cols].double()).sum(0).cpu()
    if n == 0:
        raise SteerInterpError("no positions selected")
    rows = [{"token": tok, "component": c, "contribution": float(totals[i, j] / n)}
            for j, tok in enumerate(ids) for i, c in enumerate(comps)]
    df = pd.DataFrame(rows)
    df.attrs["exact_logit_change"] = {tok: float(exact[j] / n) for j, tok in enumerate(ids)}
    return RouteResult(df, first, positions, n)
