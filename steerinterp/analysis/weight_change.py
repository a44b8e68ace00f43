"""How far apart two members of a model family are: the relative change of their weights.

Transfer of steering vectors (PAPER_NOTES section 4.7) only means something next to the distance it
crosses: the papers' families (Qwen2.5 base, -Math, -Instruct) differ by whole training stages, a model
fine-tuned for a few steps barely at all. ``weight_change`` compares two models of the same architecture
parameter by parameter, ``||theta_b - theta_a|| / ||theta_a||`` (L2 over each tensor's entries), and over
all parameters together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError


@dataclass
class WeightChangeResult(AnalysisResult):
    """Per parameter: its norm in the reference model and the norm of the other model's difference from it."""

    names: list[str]
    norms: list[float]  # ||theta_a|| per parameter
    changes: list[float]  # ||theta_b - theta_a|| per parameter

    @property
    def relative(self) -> float:
        """All parameters together: ||theta_b - theta_a|| / ||theta_a|| over every entry."""
        total = sum(n * n for n in self.norms)
        return (sum(c * c for c in self.changes) / total) ** 0.5 if total > 0 else float("nan")

    @property
    def changed(self) -> list[str]:
        """The parameters that differ at all."""
        return [n for n, c in zip(self.names, self.changes) if c > 0]

    def to_frame(self):
        import pandas as pd

        df = pd.DataFrame({"parameter": self.names, "norm": self.norms, "change": self.changes})
        df["relative"] = (df["change"] / df["norm"]).where(df["norm"] > 0)
        return df

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df["parameter"], y=df["relative"]))
        fig.update_layout(title=f"relative weight change per parameter (all together: {self.relative:.2e})",
                          xaxis_title="parameter", yaxis_title="||b - a|| / ||a||", yaxis_type="log")
        return fig


@torch.no_grad()
def weight_change(reference, other) -> WeightChangeResult:
    """Compare ``other``'s parameters with ``reference``'s, name by name (float64 norms). Both models must have
    the same parameter names and shapes (same architecture and width)."""
    a, b = dict(reference.named_parameters()), dict(other.named_parameters())
    if a.keys() != b.keys():
        missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise SteerInterpError(f"the models' parameters differ (only in the reference: {missing[:3]}, only in the "
                               f"other: {extra[:3]}); compare two models of the same architecture")
    names, norms, changes = [], [], []
    for name, pa in a.items():
        pb = b[name]
        if pa.shape != pb.shape:
            raise SteerInterpError(f"{name} has shape {tuple(pa.shape)} in the reference but {tuple(pb.shape)} in "
                                   "the other model; compare two models of the same width")
        x, y = pa.detach().double().cpu(), pb.detach().double().cpu()
        names.append(name)
        norms.append(float(x.norm()))
        changes.append(float((y - x).norm()))
    return WeightChangeResult(names, norms, changes)
