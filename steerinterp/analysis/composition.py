"""Composition: put two independently trained single-layer vectors in together, untrained as a pair.

PAPER_NOTES section 4.8. For every pair i <= j of single-layer vectors, evaluate the model with
both; the diagonal is the single vector. The normalised gain over the better single layer is

    R_ij = (acc_ij - max(acc_i, acc_j)) / (acc_all - max(acc_i, acc_j)),

with ``acc_all`` the accuracy of all-layer steering: R = 1 matches it, R < 0 means the pair
interferes. Cells with R > 0.99 are marked.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.vectors import single_layer_sets
from steerinterp.errors import SteerInterpError
from steerinterp.steering.vectors import SteeringSet, SteeringVector


def combine(*sets, scales: Sequence[float] | None = None) -> SteeringSet:
    """One SteeringSet adding several (times ``scales``); vectors at the same hook are summed."""
    if not sets:
        raise SteerInterpError("nothing to combine")
    scales = [1.0] * len(sets) if scales is None else list(scales)
    if len(scales) != len(sets):
        raise SteerInterpError(f"{len(sets)} steering sets but {len(scales)} scales")
    summed: dict[str, tuple[torch.Tensor, SteeringVector]] = {}
    for s, scale in zip(sets, scales):
        s = SteeringSet([s]) if isinstance(s, SteeringVector) else s
        if not isinstance(s, SteeringSet):
            raise SteerInterpError(f"combine takes SteeringSets or SteeringVectors, got {type(s).__name__}")
        for v in s:
            add = v.vector.detach() * (v.scale * scale)
            if v.hook_name in summed:
                prev, first = summed[v.hook_name]
                if first.positions != v.positions:
                    raise SteerInterpError(f"two vectors at {v.hook_name} act on different positions; they cannot be summed")
                summed[v.hook_name] = (prev + add, first)
            else:
                summed[v.hook_name] = (add, v)
    return SteeringSet([SteeringVector(t, name, 1.0, first.positions) for name, (t, first) in summed.items()])


def normalised_gain(pair_acc: torch.Tensor, single_acc: torch.Tensor, all_acc: float) -> torch.Tensor:
    """R_ij from a pair-accuracy grid [n, n] (upper triangle used), single accuracies [n] and acc_all."""
    best = torch.maximum(single_acc[:, None], single_acc[None, :]).double()
    denom = all_acc - best
    r = (pair_acc.double() - best) / denom
    r[denom.abs() < 1e-12] = float("nan")
    upper = torch.triu(torch.ones_like(r, dtype=torch.bool))
    return r.masked_fill(~upper, float("nan"))


@dataclass
class CompositionResult(AnalysisResult):
    layers: list[int]
    accuracy: torch.Tensor  # [n, n], upper triangle; diagonal = single layer
    all_layer_accuracy: float
    base_accuracy: float
    mode: str
    per_problem: object = None  # DataFrame: variant ("base", "i+j", "all"), sample seed, problem, correct

    @property
    def gain(self) -> torch.Tensor:
        """R_ij (NaN below the diagonal and where max(acc_i, acc_j) already equals acc_all)."""
        return normalised_gain(self.accuracy, self.accuracy.diagonal(), self.all_layer_accuracy)

    def to_frame(self):
        import pandas as pd

        g = self.gain
        rows = []
        for a, i in enumerate(self.layers):
            for b, j in enumerate(self.layers):
                if b >= a:
                    rows.append({"layer_i": i, "layer_j": j, "accuracy": float(self.accuracy[a, b]),
                                 "R": float(g[a, b]), "matches_all_layers": bool(g[a, b] > 0.99)})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go

        g = self.gain
        z = [[None if v != v else v for v in row] for row in g.tolist()]
        text = [[("X" if (v is not None and v > 0.99) else "") for v in row] for row in z]
        fig = go.Figure(go.Heatmap(z=z, x=self.layers, y=self.layers, text=text, texttemplate="%{text}",
                                   colorscale="RdBu", zmid=0, customdata=self.accuracy.tolist(),
                                   hovertemplate="layers %{y} + %{x}<br>R=%{z:.2f}<br>acc=%{customdata:.3f}<extra></extra>"))
        fig.update_layout(title=f"pairs of single-layer vectors: normalised gain R ({self.mode}; all layers "
                                f"{self.all_layer_accuracy:.1%}, base {self.base_accuracy:.1%})",
                          xaxis_title="layer j", yaxis_title="layer i", yaxis_autorange="reversed")
        return fig


def compose_pairs(
    model,
    task,
    singles,
    all_layers,
    *,
    layers: Sequence[int] | None = None,
    mode: str = "greedy",
    samples: int = 4,
    problems=None,
    max_new_tokens: int = 32,
    extra: Mapping[str, SteeringSet] | None = None,
    known=None,
    progress: bool = True,
) -> CompositionResult:
    """Evaluate every pair of single-layer vectors on ``task`` and compute R_ij.

    ``singles``: ``{layer: SteeringSet}`` of independently trained one-layer sets, or one SteeringSet
    / ``{layer: tensor}`` whose vectors are taken one layer at a time. ``all_layers``: the all-layer
    SteeringSet (evaluated here) or its accuracy as a float. ``mode``: ``"greedy"`` or ``"sampled"``
    (avg@``samples``). ``per_problem`` on the result keeps every (variant, problem) outcome, for intervals.
    ``extra``: more named sets evaluated beside them (e.g. a second all-layer reference); their outcomes are in
    ``per_problem`` only. ``known``: per-problem rows (columns variant, seed, problem, correct, as in an earlier
    result's ``per_problem``) of variants already evaluated with these settings: those variants are taken from it,
    not evaluated again; every variant must then cover the same (sample seed, problem) pairs, or an error says so.
    """
    from tqdm.auto import tqdm

    from steerinterp.tasks.evaluation import evaluate

    if mode not in ("greedy", "sampled"):
        raise SteerInterpError(f"mode={mode!r}; choose 'greedy' or 'sampled'")
    if isinstance(singles, Mapping) and all(isinstance(v, SteeringSet) for v in singles.values()):
        single_sets = {int(k): v for k, v in sorted(singles.items())}
    else:
        single_sets = single_layer_sets(model, singles)
    chosen = sorted(single_sets) if layers is None else [int(x) for x in layers]
    missing = [x for x in chosen if x not in single_sets]
    if missing:
        raise SteerInterpError(f"no single-layer vector for layer {missing[0]} (have {sorted(single_sets)})")
    variants: dict[str, SteeringSet | None] = {"base": None}
    for i, j in itertools.combinations_with_replacement(chosen, 2):
        variants[f"{i}+{j}"] = single_sets[i] if i == j else combine(single_sets[i], single_sets[j])
    if not isinstance(all_layers, (int, float)):
        variants["all"] = all_layers
    for name, steering in (extra or {}).items():
        if name in variants:
            raise SteerInterpError(f"extra variant {name!r} clashes with a pair, 'base' or 'all'; rename it")
        variants[name] = steering
    import pandas as pd

    cols = ["variant", "seed", "problem", "correct"]
    if known is not None and not set(cols) <= set(known.columns):
        missing = [c for c in cols if c not in known.columns]
        raise SteerInterpError(f"known rows lack column {missing[0]!r}; pass an earlier result's per_problem")
    known = pd.DataFrame(columns=cols) if known is None else known[cols]
    kw = dict(problems=problems, greedy=mode == "greedy", samples=samples if mode == "sampled" else 0,
              max_new_tokens=max_new_tokens)
    acc, rows, reuse = {}, [], set(known["variant"])
    for name, steering in tqdm(variants.items(), desc="pairs", disable=not progress):
        if name in reuse:
            got = known[known["variant"] == name]
        else:
            d = evaluate(model, task, {name: steering}, **kw).details()
            got = d[d["mode"] == mode][cols]
        acc[name] = float(got["correct"].astype(float).mean())
        rows.append(got)

    def outcome_keys(r) -> list[tuple]:
        return sorted((-1 if s is None or s != s else int(s), str(p)) for s, p in zip(r["seed"], r["problem"]))

    first = outcome_keys(rows[0])
    for name, r in zip(variants, rows):
        if outcome_keys(r) != first:
            raise SteerInterpError(f"the outcomes of {name!r} cover other (sample seed, problem) pairs than those of "
                                   "'base'; pass known rows from a run with the same task, problems, mode and samples")
    n = len(chosen)
    grid = torch.full((n, n), float("nan"), dtype=torch.float64)
    for a, i in enumerate(chosen):
        for b, j in enumerate(chosen):
            if b >= a:
                grid[a, b] = acc[f"{i}+{j}"]
    all_acc = float(all_layers) if isinstance(all_layers, (int, float)) else acc["all"]
    return CompositionResult(chosen, grid, all_acc, acc["base"], mode, pd.concat(rows, ignore_index=True))
