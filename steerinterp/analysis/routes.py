"""Route attribution: along which paths the steering effect reaches chosen logits.

The final residual's change ``h_s - h_b`` splits exactly into the vectors themselves (carried by the
residual stream, the direct path) and every later block's change in attention and MLP output. With
the steered run's final-norm scale ``sigma_s``,

    logit_s(v) - logit_b(v) = sum_c  W_U[:, v] . (gamma * c) / sigma_s  +  norm term,

over components c (direct, attn l, mlp l), where the norm term ``W_U[:, v] . gamma * h_b (1/sigma_s -
1/sigma_b)`` is what the final norm's rescaling adds. This is direct logit attribution of the
difference (PAPER_NOTES section 4.5): how much goes through the next block's attention, its MLP,
the later blocks, and straight to the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

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
    """Split each chosen token's logit change into direct / attention / MLP / norm contributions."""
    import pandas as pd

    batch = as_batch(inputs, model)
    if any(getattr(v, "positions", None) is not None and v.positions.kind != "all" for v in getattr(steering, "vectors", [])):
        raise SteerInterpError("route attribution needs vectors acting at every position (Positions.all())")
    vecs = as_vector_dict(steering)
    if not vecs:
        raise SteerInterpError("no steering vectors given")
    ids = token_ids(model, tokens)
    if not ids:
        raise SteerInterpError("name at least one token to attribute, e.g. tokens=['To']")
    n_layers = model.cfg.n_layers
    first = min(vecs)
    comps = ["direct"] + [f"{k} {x}" for x in range(first + 1, n_layers) for k in ("attn", "mlp")] + ["norm"]
    names = [f"blocks.{x}.hook_{k}_out" for x in range(first + 1, n_layers) for k in ("attn", "mlp")]
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    w_final = getattr(model.ln_final, "w", None)
    gamma = w_final.detach().double() if w_final is not None else None
    if gamma is None:
        raise SteerInterpError("route attribution reads the raw final norm; load the model with processed=False")
    w = model.W_U.detach().double()[:, list(ids.values())] * gamma[:, None]  # [d, n_tokens]
    eps = model.cfg.eps
    totals = torch.zeros(len(comps), len(ids), dtype=torch.float64)
    exact = torch.zeros(len(ids), dtype=torch.float64)
    n = 0
    steer_sum = sum(vecs.values()).double()
    for chunk, (_, base), (_, st) in paired_caches(model, batch, steering, names + [final], batch_size=batch_size):
        sel = chunk.positions(positions)
        n += int(sel.sum())
        hb, hs = base[final][sel].double(), st[final][sel].double()
        inv_b = (hb.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        inv_s = (hs.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        parts = [steer_sum.to(hs.device).expand_as(hs)]
        parts += [(st[nm][sel] - base[nm][sel]).double() for nm in names]
        for i, c in enumerate(parts):
            totals[i] += ((c * inv_s) @ w).sum(0).cpu()
        totals[-1] += ((hb * (inv_s - inv_b)) @ w).sum(0).cpu()
        exact += ((hs * inv_s) @ w - (hb * inv_b) @ w).sum(0).cpu()
    if n == 0:
        raise SteerInterpError("no positions selected")
    rows = [{"token": tok, "component": c, "contribution": float(totals[i, j] / n)}
            for j, tok in enumerate(ids) for i, c in enumerate(comps)]
    df = pd.DataFrame(rows)
    df.attrs["exact_logit_change"] = {tok: float(exact[j] / n) for j, tok in enumerate(ids)}
    return RouteResult(df, first, positions, n)
