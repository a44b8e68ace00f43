"""Attention diff: how steering changes where each head attends (PAPER_NOTES section 4.5).

For every layer and head, compare the steered and unsteered attention patterns query by query: total
variation distance (half the L1 distance between the two distributions over keys) and Jensen-Shannon
divergence (float64), averaged over the chosen query positions. Where the mass moves: the change in
attention mass on the first token (the attention sink), on the rest of the prompt, on generated tokens,
and on the query token itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.batch import as_batch, paired_caches
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError

KEY_GROUPS = ("first_token", "prompt", "generated", "self")


@dataclass
class AttentionDiffResult(AnalysisResult):
    """``frame``: one row per (layer, head) with tv, js and the mass shift on each key group."""

    frame: object
    positions: str
    n_queries: int

    def to_frame(self):
        return self.frame

    def top(self, k: int = 10, by: str = "tv"):
        return self.frame.sort_values(by, ascending=False).head(k).reset_index(drop=True)

    def plot(self, metric: str = "tv"):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if metric not in self.frame.columns:
            raise SteerInterpError(f"metric={metric!r}; choose one of {', '.join(self.frame.columns[2:])}")
        z = self.frame.pivot(index="layer", columns="head", values=metric)
        top = self.top(8, metric)
        fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                            subplot_titles=(f"{metric} per head", "mass shift of the top heads"))
        fig.add_trace(go.Heatmap(z=z.values.tolist(), x=list(z.columns), y=list(z.index), colorscale="Viridis",
                                 colorbar={"x": 0.5}), 1, 1)
        labels = [f"L{r.layer}H{r.head}" for r in top.itertuples()]
        for g in KEY_GROUPS:
            fig.add_trace(go.Bar(x=labels, y=top[f"mass_{g}"], name=g), 1, 2)
        fig.update_yaxes(autorange="reversed", title_text="layer", row=1, col=1)
        fig.update_xaxes(title_text="head", row=1, col=1)
        fig.update_layout(barmode="group", title=f"attention: steered vs base ({self.positions} queries, n={self.n_queries})")
        return fig


def _kl_terms(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Elementwise p log(p / q), 0 where p = 0."""
    return torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), 0.0)


def _key_groups(batch) -> dict[str, torch.Tensor]:
    """[batch, key] masks of each key group (``self`` is handled per query)."""
    real = batch.attention_mask.bool()
    first = torch.zeros_like(real)
    first[torch.arange(len(batch)), real.long().argmax(-1)] = True
    return {"first_token": first, "prompt": batch.prompt_mask.bool() & ~first, "generated": batch.completion_mask.bool()}


@torch.no_grad()
def attention_diff(model, inputs, steering, *, layers: Sequence[int] | None = None, positions: str = "completion",
                   batch_size: int = 4, layer_chunk: int = 8) -> AttentionDiffResult:
    """Per-head divergence between steered and unsteered attention patterns (see the module docstring).

    Patterns are cached ``layer_chunk`` layers at a time (``hook_pattern`` only), so memory stays
    bounded for long sequences.
    """
    import pandas as pd

    batch = as_batch(inputs)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    n_heads = model.cfg.n_heads
    tv = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    js = torch.zeros_like(tv)
    mass = {g: torch.zeros_like(tv) for g in KEY_GROUPS}
    n = 0
    for c0 in range(0, len(layers), layer_chunk):
        group = layers[c0 : c0 + layer_chunk]
        names = [f"blocks.{x}.attn.hook_pattern" for x in group]
        count = 0
        for chunk, (_, base), (_, steered) in paired_caches(model, batch, steering, names, batch_size=batch_size):
            q = chunk.positions(positions)
            count += int(q.sum())
            keys = _key_groups(chunk)
            b_idx, q_idx = q.nonzero(as_tuple=True)
            for i, name in enumerate(names):
                pb = base[name].double()[b_idx, :, q_idx]  # [n_q, heads, keys]
                ps = steered[name].double()[b_idx, :, q_idx]
                diff = ps - pb
                tv[c0 + i] += 0.5 * diff.abs().sum(-1).sum(0).cpu()
                mid = 0.5 * (pb + ps)
                js[c0 + i] += (0.5 * (_kl_terms(pb, mid) + _kl_terms(ps, mid))).sum(-1).sum(0).cpu()
                for g in ("first_token", "prompt", "generated"):
                    m = keys[g][b_idx][:, None, :].double()
                    mass[g][c0 + i] += (diff * m).sum(-1).sum(0).cpu()
                mass["self"][c0 + i] += diff[torch.arange(len(q_idx)), :, q_idx].sum(0).cpu()
        n = count
    if n == 0:
        raise SteerInterpError("no query positions selected")
    rows = {"layer": [x for x in layers for _ in range(n_heads)], "head": list(range(n_heads)) * len(layers),
            "tv": (tv / n).flatten().tolist(), "js": (js / n).flatten().tolist()}
    rows.update({f"mass_{g}": (mass[g] / n).flatten().tolist() for g in KEY_GROUPS})
    return AttentionDiffResult(pd.DataFrame(rows), positions, n)
