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

Positions: by default the averages run over completion positions (those predicting a completion
token, from the last prompt token on); ``result.prompt`` holds the same matrices over the prompt's
other positions, reported separately. ``positions="all"`` averages over both, the last token dropped
(the earlier default, and literally what the papers' ``match_effect.py`` does; there the completions,
up to 4,096 tokens, dwarf the prompt, whereas with short completions the prompt would dominate).
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
    positions: str = "completion"  # the positions averaged over: "completion", "all" or "prompt"
    prompt: PersistenceResult | None = None  # the same over the prompt's positions (reported separately)
    diff_vector_per_sample: Float[torch.Tensor, "steered observed samples"] | None = None

    def per_sample_frame(self):
        """One row per (steered, observed, sample) with observed >= steered: that sample's token-mean Diff-Vector
        and Diff-Diff (NaN where there is nothing to compare with), for intervals that resample the samples."""
        import pandas as pd

        rows = []
        dv = self.diff_vector_per_sample
        for i, s in enumerate(self.steered_layers):
            for j, o in enumerate(self.observed_layers):
                if o >= s:
                    for k in range(self.diff_diff_per_sample.shape[-1]):
                        rows.append({"steered_layer": s, "observed_layer": o, "sample": k,
                                     "diff_vector": float(dv[i, j, k]) if dv is not None else float("nan"),
                                     "diff_diff": float(self.diff_diff_per_sample[i, j, k])})
        return pd.DataFrame(rows)

    def to_frame(self, *, include_prompt: bool = False):
        """One row per (steered, observed) pair with observed >= steered. ``include_prompt``: also the
        prompt's rows, with a ``positions`` column telling them apart."""
        import pandas as pd

        rows = []
        for i, s in enumerate(self.steered_layers):
            for j, o in enumerate(self.observed_layers):
                if o >= s:
                    rows.append({"steered_layer": s, "observed_layer": o,
                                 **{m: float(getattr(self, m)[i, j]) for m in METRICS}})
        df = pd.DataFrame(rows)
        if include_prompt:
            df.insert(0, "positions", self.positions)
            if self.prompt is not None:
                df = pd.concat([df, self.prompt.to_frame(include_prompt=True)], ignore_index=True)
        return df

    @classmethod
    def stack(cls, results: Sequence[PersistenceResult]) -> PersistenceResult:
        """The rows of several results (each on its own inputs, e.g. one steered layer on its own rollouts) as
        one result, rows in the given order; ``n_tokens`` becomes the total. The observed layers and positions
        must agree; samples per row may differ (``diff_diff_per_sample`` is NaN-padded)."""
        results = list(results)
        if not results:
            raise SteerInterpError("nothing to stack")
        first = results[0]
        for r in results[1:]:
            if r.observed_layers != first.observed_layers or r.positions != first.positions:
                raise SteerInterpError("persistence results with different observed layers or positions cannot be "
                                       "stacked; compute them with the same observed_layers and positions")
        steered = [layer for r in results for layer in r.steered_layers]
        if len(set(steered)) != len(steered):
            raise SteerInterpError(f"steered layers repeat across the results ({steered}); stack distinct rows")
        n = max(r.diff_diff_per_sample.shape[-1] for r in results)
        pad = lambda t: torch.nn.functional.pad(t, (0, n - t.shape[-1]), value=float("nan"))
        per_sample = torch.cat([pad(r.diff_diff_per_sample) for r in results])
        dv = (torch.cat([pad(r.diff_vector_per_sample) for r in results])
              if all(r.diff_vector_per_sample is not None for r in results) else None)
        prompts = [r.prompt for r in results]
        return cls(steered, list(first.observed_layers),
                   *(torch.cat([getattr(r, m) for r in results]) for m in METRICS), per_sample,
                   {k: v for r in results for k, v in r.final_shifts.items()}, sum(r.n_tokens for r in results),
                   first.positions, cls.stack(prompts) if all(p is not None for p in prompts) else None, dv)

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
        fig.update_layout(title=f"steering-vector persistence ({self.n_tokens} tokens) over {self.positions} positions")
        return fig


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def _first_block(steering) -> int | None:
    """The first block a single-layer set's hooks sit in (None when one is outside the blocks)."""
    layers = [v.layer for v in steering]
    return None if not layers or None in layers else min(layers)


class _Sums:
    """Running sums of one group of positions (the analysed positions, or the prompt's)."""

    def __init__(self, n_s: int, n_o: int, n: int, d: int):
        self.dd = torch.full((n_s, n_o, n), float("nan"), dtype=torch.float64)
        self.dv = torch.full((n_s, n_o, n), float("nan"), dtype=torch.float64)
        self.delta = torch.zeros(n_s, n_o, d, dtype=torch.float64)
        self.norm = torch.zeros(n_s, n_o, dtype=torch.float64)
        self.final = torch.zeros(n_s, d, dtype=torch.float64)
        self.count = 0

    def add(self, i: int, j: int, delta: torch.Tensor, sel: torch.Tensor, rows: slice, vec: torch.Tensor | None):
        """Add observed layer j of steered layer i for one chunk: delta [b, t, d], sel [b, t]."""
        n_sel = sel.sum(1).clamp_min(1)
        mean_t = (delta * sel[..., None]).sum(1) / n_sel[:, None]
        none = sel.sum(1) == 0  # a sample without positions of this group has no value (NaN), not 0
        self.dd[i, j, rows] = ((_cos(delta, mean_t[:, None]) * sel).sum(1) / n_sel).masked_fill(none, float("nan")).cpu()
        if vec is not None:
            self.dv[i, j, rows] = ((_cos(delta, vec) * sel).sum(1) / n_sel).masked_fill(none, float("nan")).cpu()
        self.delta[i, j] += (delta * sel[..., None]).sum((0, 1)).cpu()
        self.norm[i, j] += (delta.norm(dim=-1) * sel).sum().cpu()

    def result(self, steered, observed, vecs, positions: str, prompt=None) -> PersistenceResult:
        n_s, n_o = len(steered), len(observed)
        mean_delta = self.delta / self.count
        mdv = torch.full((n_s, n_o), float("nan"), dtype=torch.float64)
        for i, layer in enumerate(steered):
            for j, o in enumerate(observed):
                if o >= layer and o in vecs:
                    mdv[i, j] = _cos(mean_delta[i, j], vecs[o].double().cpu())
        below = torch.tensor([[o < s for o in observed] for s in steered])
        delta_norm = (self.norm / self.count).masked_fill(below, float("nan"))
        return PersistenceResult(
            steered, observed, self.dv.nanmean(-1), self.dd.nanmean(-1), mdv, delta_norm, self.dd,
            {layer: self.final[i] / self.count for i, layer in enumerate(steered)}, self.count, positions, prompt,
            self.dv,
        )


POSITIONS = ("completion", "all")


@torch.no_grad()
def persistence(
    model: HookedModel,
    inputs,
    vectors,
    *,
    observed_layers: Sequence[int] | None = None,
    positions: str = "completion",
    batch_size: int | None = None,
    compare_with=None,
) -> PersistenceResult:
    """Propagation matrices for each vector of ``vectors`` applied alone (see the module docstring).

    ``positions``: ``"completion"`` (default: the positions that predict completion tokens, from the
    last prompt token on) or ``"all"`` (prompt and completion, the last token dropped; the earlier
    default). Either way ``result.prompt`` holds the same matrices over the
    prompt's other positions (every prompt token but the last), or None when there are none.
    ``compare_with``: the vectors s_{l'} that Diff-Vector and mean-diff-vs-vector compare the propagated shift
    with (a SteeringSet or ``{layer: tensor}``; default ``vectors``). The papers' design steers with one
    independently trained single-layer vector at a time, on completions sampled with it alone, and compares with
    the other layers' independently trained vectors: call this once per layer with ``vectors={l: s_l}``, that
    layer's rollouts and ``compare_with`` = all of them, then ``PersistenceResult.stack`` the rows.
    Only ``hook_resid_post`` of the observed layers is cached, one chunk of ``batch_size`` sequences at
    a time (default: ``rows_per_forward``). Each steered run starts at its vector's block from the base
    run's cached residual (the blocks before it are the base run's: the same operations, so the same
    values).
    """
    if positions not in POSITIONS:
        raise SteerInterpError(f"positions={positions!r}; choose 'completion' or 'all'")
    batch = as_batch(inputs, model)
    vecs = as_vector_dict(vectors)
    if not vecs:
        raise SteerInterpError("no vectors given")
    targets = vecs if compare_with is None else as_vector_dict(compare_with)
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
    groups = {"main": _Sums(n_s, n_o, n, model.cfg.d_model), "prompt": _Sums(n_s, n_o, n, model.cfg.d_model)}
    step = rows_per_forward(model, batch, batch_size)
    for start in range(0, n, step):
        chunk = batch.rows(slice(start, start + step))
        rows = slice(start, start + len(chunk))
        pred = chunk.predicting_mask
        masks = {"main": pred if positions == "completion" else (chunk.prompt_mask.bool() | pred),
                 "prompt": chunk.prompt_mask.bool() & ~pred}
        for g, sel in masks.items():
            groups[g].count += int(sel.sum())
        _, base = run_cached(model, chunk, None, cached + entries)
        for i, layer in enumerate(steered):
            b0 = starts[layer]
            wanted = [nm for nm, o in zip(names, observed) if o >= layer]
            wanted += [] if final_name in wanted else [final_name]
            if b0 > 0:
                _, st = run_blocks(model, chunk, alone[layer], wanted, start=b0, resid=base[entering(b0)])
            else:
                _, st = run_cached(model, chunk, alone[layer], wanted)
            final = (st[final_name] - base[final_name]).double()
            for g, sel in masks.items():
                groups[g].final[i] += (final * sel[..., None]).sum((0, 1)).cpu()
            del final
            for j, o in enumerate(observed):
                if o < layer:
                    continue
                delta = (st[names[j]] - base[names[j]]).double()  # [b, t, d]
                vec = targets[o].double().to(delta.device) if o in targets else None
                for g, sel in masks.items():
                    groups[g].add(i, j, delta, sel, rows, vec)
                del delta
            del st
        del base
    if groups["main"].count == 0:
        raise SteerInterpError("no positions selected; the batch has no completion tokens")
    prompt = groups["prompt"].result(steered, observed, targets, "prompt") if groups["prompt"].count else None
    return groups["main"].result(steered, observed, targets, positions, prompt)
