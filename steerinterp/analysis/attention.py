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

from steerinterp.analysis.batch import as_batch, paired_caches, rows_per_forward, run_blocks, selected_chunks
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.types import is_bridge

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


def _lockstep_patterns(model, chunk, steering, layers: Sequence[int]):
    """Yield ``(layer, base pattern, steered pattern)`` for each layer in ``layers`` (ascending), running the
    unsteered and the steered forward block by block side by side: one layer's patterns at a time."""
    wanted = set(layers)
    got: dict[str, torch.Tensor] = {}

    def grab(key):
        def fn(act, hook):
            got[key] = act
            return None

        return fn

    xb = xs = None
    for layer in range(max(layers) + 1):
        name = f"blocks.{layer}.attn.hook_pattern"
        xb, _ = run_blocks(model, chunk, None, hooks=[(name, grab("b"))] if layer in wanted else [], start=layer,
                           resid=xb, stop=layer + 1)
        xs, _ = run_blocks(model, chunk, steering, hooks=[(name, grab("s"))] if layer in wanted else [], start=layer,
                           resid=xs, stop=layer + 1)
        if layer in wanted:
            yield layer, got.pop("b"), got.pop("s")


def _cached_patterns(model, batch, steering, layers, layer_chunk, batch_size):
    """Fallback for models that cannot run block by block (a TransformerBridge): ``layer_chunk`` layers'
    patterns cached per pair of forwards. Yields ``(first_group, chunk, [(index in layers, base, steered), ...])``."""
    for c0 in range(0, len(layers), layer_chunk):
        group = layers[c0 : c0 + layer_chunk]
        names = [f"blocks.{x}.attn.hook_pattern" for x in group]
        for chunk, (_, base), (_, steered) in paired_caches(model, batch, steering, names, batch_size=batch_size):
            yield c0 == 0, chunk, [(c0 + i, base[nm], steered[nm]) for i, nm in enumerate(names)]


@torch.no_grad()
def attention_diff(model, inputs, steering, *, layers: Sequence[int] | None = None, positions: str = "completion",
                   batch_size: int | None = None, layer_chunk: int = 8, query_chunk: int = 256) -> AttentionDiffResult:
    """Per-head divergence between steered and unsteered attention patterns (see the module docstring).

    The unsteered and the steered forward run block by block side by side, ``batch_size`` sequences at
    a time (default: ``rows_per_forward``), so only one layer's two patterns exist at once (``hook_pattern``
    only; nothing after the last chosen layer runs), and the float64 statistics run ``query_chunk``
    query positions at a time. On a model that cannot run block by block (a TransformerBridge) the
    patterns of ``layer_chunk`` layers are cached per pair of forwards instead.
    """
    import pandas as pd

    batch = as_batch(inputs, model)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers:
        raise SteerInterpError("no layers given")
    if query_chunk < 1 or layer_chunk < 1:
        raise SteerInterpError(f"query_chunk and layer_chunk must be >= 1, got {query_chunk} and {layer_chunk}")
    n_heads = model.cfg.n_heads
    tv = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    js = torch.zeros_like(tv)
    mass = {g: torch.zeros_like(tv) for g in KEY_GROUPS}
    n = 0

    def accumulate(chunk, i, pattern_b, pattern_s):
        q = chunk.positions(positions)
        keys = _key_groups(chunk)
        for b_idx, q_idx in selected_chunks(q, query_chunk):
            pb = pattern_b[b_idx, :, q_idx].double()  # [n_q, heads, keys]
            ps = pattern_s[b_idx, :, q_idx].double()
            diff = ps - pb
            tv[i] += 0.5 * diff.abs().sum(-1).sum(0).cpu()
            mid = 0.5 * (pb + ps)
            js[i] += (0.5 * (_kl_terms(pb, mid) + _kl_terms(ps, mid))).sum(-1).sum(0).cpu()
            del mid
            for g in ("first_token", "prompt", "generated"):
                m = keys[g][b_idx][:, None, :].double()
                mass[g][i] += (diff * m).sum(-1).sum(0).cpu()
            mass["self"][i] += diff[torch.arange(len(q_idx)), :, q_idx].sum(0).cpu()

    if is_bridge(model):
        for first, chunk, triples in _cached_patterns(model, batch, steering, layers, layer_chunk, batch_size):
            for i, pb, ps in triples:
                accumulate(chunk, i, pb, ps)
            n += int(chunk.positions(positions).sum()) if first else 0
    else:
        order = sorted(set(layers))
        step = rows_per_forward(model, batch, batch_size)
        for start in range(0, len(batch), step):
            chunk = batch.rows(slice(start, start + step))
            n += int(chunk.positions(positions).sum())
            for layer, pb, ps in _lockstep_patterns(model, chunk, steering, order):
                for i in (i for i, x in enumerate(layers) if x == layer):
                    accumulate(chunk, i, pb, ps)
                del pb, ps
    if n == 0:
        raise SteerInterpError("no query positions selected")
    rows = {"layer": [x for x in layers for _ in range(n_heads)], "head": list(range(n_heads)) * len(layers),
            "tv": (tv / n).flatten().tolist(), "js": (js / n).flatten().tolist()}
    rows.update({f"mass_{g}": (mass[g] / n).flatten().tolist() for g in KEY_GROUPS})
    return AttentionDiffResult(pd.DataFrame(rows), positions, n)
