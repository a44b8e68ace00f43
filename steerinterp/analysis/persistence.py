"""Persistence: how a vector's effect at layer l propagates to the later layers' residual stream.

PAPER_NOTES section 4.2. Each vector ``s_l`` is put into the model alone; teacher-forced runs with
and without it give ``delta_{l -> l'}(t) = h_steered_{l'}(t) - h_base_{l'}(t)`` at every observed
layer's ``hook_resid_post``. By construction delta is 0 before l and exactly ``s_l`` at l.

* Diff-Vector ``[l, l']``: mean over tokens of cos(delta_{l->l'}(t), s_{l'}), averaged over samples
  (the later layer's own vector; NaN where the set has none);
* Diff-Diff ``[l, l']``: mean over tokens of cos(delta(t), mean_t' delta(t')) within a sample,
  averaged over samples (how uniform the propagated shift is);
* mean-diff vs vector ``[l, l']``: cos of delta averaged over all tokens and samples with ``s_{l'}``;
* ``final_shifts[l]``: delta at the last block averaged over all tokens (read it with
  ``vector_logit_lens``).

Rows are steered layers, columns observed layers; cells before the steered layer are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from steerinterp.analysis.batch import as_batch, entering, rows_per_forward, run_blocks, run_cached
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.vectors import as_vector_dict, single_layer_sets
from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel, is_bridge

METRICS = ("diff_vector", "diff_diff", "mean_diff_vector", "delta_norm")


@dataclass
class PersistenceResult(AnalysisResult):
    steered_layers: list[int]
    observed_layers: list[int]
    diff_vector: Float[torch.Tensor, "steered observed"]
    diff_diff: Float[torch.Tensor, "steered observed"]
    mean_diff_vector: Float[torch.Tensor, "steered observed"]
    delta_norm: Float[torch.Tensor, "steered observed"]  # mean |delta(t)|
    diff_diff_per_sample: Float[torch.Tensor, "steered observed samples"]
    final_shifts: dict[int, torch.Tensor]
    n_tokens: int

    def to_frame(self):
        import pandas as pd

        rows = []
        for i, s in enumerate(self.steered_layers):
            for j, o in enumerate(self.observed_layers):
                if o >= s:
                    rows.append({"steered_layer": s, "observed_layer": o,
                                 **{m: float(getattr(self, m)[i, j]) for m in METRICS}})
        return pd.DataFrame(rows)

    def plot(self, metrics: Sequence[str] = ("diff_diff", "diff_vector", "mean_diff_vector")):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise SteerInterpError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRICS)}")
        titles = {"diff_diff": "Diff-Diff cos", "diff_vector": "Diff-Vector cos",
                  "mean_diff_vector": "mean diff vs vector cos", "delta_norm": "mean |delta|"}
        fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[titles[m] for m in metrics])
        for k, m in enumerate(metrics):
            z = getattr(self, m)
            signed = m != "delta_norm"
            fig.add_trace(go.Heatmap(z=[[None if v != v else v for v in row] for row in z.tolist()],
                                     x=self.observed_layers, y=self.steered_layers,
                                     zmin=-1 if signed else None, zmax=1 if signed else None,
                                     colorscale="RdBu" if signed else "Viridis", reversescale=signed,
                                     showscale=k == 0), 1, k + 1)
            fig.update_xaxes(title_text="observed layer", row=1, col=k + 1)
        fig.update_yaxes(title_text="steered layer", autorange="reversed")
        fig.update_layout(title=f"steering-vector persistence ({self.n_tokens} tokens)")
        return fig


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def _first_block(steering) -> int | None:
    """The first block a single-layer set's hooks sit in (None when one is outside the blocks)."""
    layers = [v.layer for v in steering]
    return None if not layers or None in layers else min(layers)


@torch.no_grad()
def persistence(
    model: HookedModel,
    inputs,
    vectors,
    *,
    observed_layers: Sequence[int] | None = None,
    positions: str = "all",
    batch_size: int | None = None,
) -> PersistenceResult:
    """Propagation matrices for each vector of ``vectors`` applied alone (see the module docstring).

    ``positions``: ``"all"`` (prompt and completion, the last token dropped as in the papers) or
    ``"completion"`` (the positions predicting completion tokens). Only ``hook_resid_post`` of the
    observed layers is cached, one chunk of ``batch_size`` sequences at a time (default:
    ``rows_per_forward``). Each steered run starts at its vector's block from the base run's cached
    residual (the blocks before it are the base run's: the same operations, so the same values).
    """
    if positions not in ("all", "completion"):
        raise SteerInterpError(f"positions={positions!r}; choose 'all' or 'completion'")
    batch = as_batch(inputs, model)
    vecs = as_vector_dict(vectors)
    if not vecs:
        raise SteerInterpError("no vectors given")
    alone = single_layer_sets(model, vectors)
    steered = list(vecs)
    observed = list(range(model.cfg.n_layers)) if observed_layers is None else sorted(int(x) for x in observed_layers)
    names = [f"blocks.{o}.hook_resid_post" for o in observed]
    final_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    cached = names + ([] if final_name in names else [final_name])
    starts = {}  # steered layer -> the block its run starts at (0: from the tokens)
    for layer in steered:
        first = None if is_bridge(model) else _first_block(alone[layer])
        starts[layer] = first if first else 0
    entries = sorted({entering(b) for b in starts.values() if b > 0} - set(cached))
    n_s, n_o, n = len(steered), len(observed), len(batch)
    dd = torch.full((n_s, n_o, n), float("nan"), dtype=torch.float64)
    dv = torch.full((n_s, n_o, n), float("nan"), dtype=torch.float64)
    delta_sum = torch.zeros(n_s, n_o, model.cfg.d_model, dtype=torch.float64)
    norm_sum = torch.zeros(n_s, n_o, dtype=torch.float64)
    final_sum = torch.zeros(n_s, model.cfg.d_model, dtype=torch.float64)
    count = 0
    step = rows_per_forward(model, batch, batch_size)
    for start in range(0, n, step):
        chunk = batch.rows(slice(start, start + step))
        sel = chunk.predicting_mask if positions == "completion" else (chunk.prompt_mask.bool() | chunk.predicting_mask)
        count += int(sel.sum())
        _, base = run_cached(model, chunk, None, cached + entries)
        for i, layer in enumerate(steered):
            b0 = starts[layer]
            wanted = [nm for nm, o in zip(names, observed) if o >= layer]
            wanted += [] if final_name in wanted else [final_name]
            if b0 > 0:
                _, st = run_blocks(model, chunk, alone[layer], wanted, start=b0, resid=base[entering(b0)])
            else:
                _, st = run_cached(model, chunk, alone[layer], wanted)
            final_sum[i] += ((st[final_name] - base[final_name]).double() * sel[..., None]).sum((0, 1)).cpu()
            for j, o in enumerate(observed):
                if o < layer:
                    continue
                delta = (st[names[j]] - base[names[j]]).double()  # [b, t, d]
                mean_t = (delta * sel[..., None]).sum(1) / sel.sum(1).clamp_min(1)[:, None]
                per_tok_dd = _cos(delta, mean_t[:, None])
                rows = slice(start, start + len(chunk))
                dd[i, j, rows] = (per_tok_dd * sel).sum(1) / sel.sum(1).clamp_min(1)
                if o in vecs:
                    per_tok_dv = _cos(delta, vecs[o].double().to(delta.device))
                    dv[i, j, rows] = (per_tok_dv * sel).sum(1) / sel.sum(1).clamp_min(1)
                masked = delta * sel[..., None]
                delta_sum[i, j] += masked.sum((0, 1)).cpu()
                norm_sum[i, j] += (delta.norm(dim=-1) * sel).sum().cpu()
                del delta, masked
            del st
        del base
    if count == 0:
        raise SteerInterpError("no positions selected; the batch has no completion tokens")
    mean_delta = delta_sum / count
    mdv = torch.full((n_s, n_o), float("nan"), dtype=torch.float64)
    for i, layer in enumerate(steered):
        for j, o in enumerate(observed):
            if o >= layer and o in vecs:
                mdv[i, j] = _cos(mean_delta[i, j], vecs[o].double().cpu())
    below = torch.tensor([[o < s for o in observed] for s in steered])
    delta_norm = (norm_sum / count).masked_fill(below, float("nan"))
    return PersistenceResult(
        steered, observed, dv.nanmean(-1), dd.nanmean(-1), mdv, delta_norm, dd,
        {layer: final_sum[i] / count for i, layer in enumerate(steered)}, count,
    )
