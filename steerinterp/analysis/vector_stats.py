"""Statistics of a set of steering vectors: norms, pairwise cosines, singular values, stable rank.

The papers' vector-level readouts (PAPER_NOTES section 4.3): one vector per layer stacked into an
[n_layers, d_model] matrix; stable rank = sum(sigma^2) / sigma_1^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float

from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.vectors import as_vector_dict


@dataclass
class VectorStats(AnalysisResult):
    layers: list[int]
    norms: Float[torch.Tensor, "n"]
    cosine: Float[torch.Tensor, "n n"]
    singular_values: Float[torch.Tensor, "k"]

    @property
    def stable_rank(self) -> float:
        s2 = self.singular_values.double() ** 2
        return float(s2.sum() / s2[0]) if s2.numel() and s2[0] > 0 else float("nan")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "norm": self.norms.tolist()})

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=("norm per layer", "pairwise cosine", "singular values"))
        fig.add_trace(go.Bar(x=self.layers, y=self.norms.tolist(), name="norm"), 1, 1)
        fig.add_trace(go.Heatmap(z=self.cosine.tolist(), x=self.layers, y=self.layers, zmin=-1, zmax=1,
                                 colorscale="RdBu", reversescale=True, colorbar={"x": 0.63, "len": 0.9}), 1, 2)
        fig.add_trace(go.Scatter(y=self.singular_values.tolist(), mode="lines+markers", name="sigma"), 1, 3)
        fig.update_yaxes(autorange="reversed", row=1, col=2)
        fig.update_layout(title=f"steering vectors (stable rank {self.stable_rank:.2f})", showlegend=False)
        return fig


def vector_stats(vectors) -> VectorStats:
    """Norms, cosine matrix and singular values of ``{layer: vector}`` (or a ``SteeringSet``)."""
    vecs = as_vector_dict(vectors)
    layers = list(vecs)
    m = torch.stack([vecs[layer].detach().double().cpu() for layer in layers])
    norms = m.norm(dim=-1)
    unit = m / norms.clamp_min(1e-30)[:, None]
    cosine = unit @ unit.T
    cosine[norms == 0] = float("nan")
    cosine[:, norms == 0] = float("nan")
    return VectorStats(layers, norms, cosine, torch.linalg.svdvals(m))
