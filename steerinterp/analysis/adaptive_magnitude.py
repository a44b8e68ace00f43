"""Adaptive steering: where along a sequence the token-wise magnitude goes (PAPER_NOTES section 4.9).

For a trained ``AdaptiveSteering`` (direction b, magnitude ``m_t = |b| a . u_t`` from the MLP hidden
activation ``u_t``), teacher-force prompt + completion with the adapters on and record, per layer and
token, ``m_t``, the norm of the MLP output and its cosine with ``b / |b|``. Magnitudes are normalised
by the layer's mean MLP-output norm over the analysed tokens. Tokens are labelled by chat segment
(system, user header, user message, assistant header, generation), the borders of the papers' heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerinterp.analysis.batch import as_batch, run_cached, token_strings
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.segments import boundaries, token_segments
from steerinterp.errors import SteerInterpError
from steerinterp.steering import AdaptiveSteering


@dataclass
class AdaptiveMagnitudeResult(AnalysisResult):
    """``frame``: one row per (sample, layer, token)."""

    frame: object
    layers: list[int]

    def to_frame(self):
        return self.frame

    def summary(self):
        """Per layer: mean, median and mean |.| of the normalised magnitude (sign flipped so the mean is
        positive, as the papers do) and the Pearson r of magnitude against cosine."""
        import pandas as pd

        rows = []
        for layer, g in self.frame.groupby("layer"):
            m = g["normalised"]
            sign = 1.0 if m.mean() >= 0 else -1.0
            rows.append({"layer": layer, "sign": sign, "mean": sign * m.mean(), "median": sign * m.median(),
                         "mean_abs": m.abs().mean(), "pearson_r_vs_cos": g["magnitude"].corr(g["cos_mlp_b"])})
        return pd.DataFrame(rows)

    def by_segment(self, *, per_sample: bool = False):
        """Mean |normalised magnitude| per layer and chat segment: which segments carry the steering.

        ``per_sample=True`` keeps one row per (sample, layer), so intervals can resample the sequences; a
        segment a sample lacks is NaN there. The default pools every token of a segment over all samples."""
        index = ["sample", "layer"] if per_sample else "layer"
        return (self.frame.assign(abs_normalised=self.frame["normalised"].abs())
                .pivot_table(index=index, columns="segment", values="abs_normalised", aggfunc="mean"))

    def plot(self, kind: str = "heatmap", *, sample: int = 0):
        """``"heatmap"``: layers x positions of one sample with segment borders; ``"scatter"``: m_t vs cosine."""
        import plotly.graph_objects as go

        if kind == "scatter":
            fig = go.Figure()
            for layer, g in self.frame.groupby("layer"):
                fig.add_trace(go.Scattergl(x=g["cos_mlp_b"], y=g["magnitude"], mode="markers", name=f"layer {layer}",
                                           marker={"size": 4, "opacity": 0.6}))
            fig.update_layout(title="token-wise magnitude vs cos(MLP output, b)", xaxis_title="cos", yaxis_title="m_t")
            return fig
        if kind != "heatmap":
            raise SteerInterpError(f"kind={kind!r}; choose 'heatmap' or 'scatter'")
        d = self.frame[self.frame["sample"] == sample]
        if d.empty:
            raise SteerInterpError(f"no sample {sample} in this result")
        z = d.pivot(index="layer", columns="position", values="normalised")
        toks = d[d["layer"] == self.layers[0]].sort_values("position")
        lim = float(z.abs().max().max()) or 1.0
        fig = go.Figure(go.Heatmap(z=z.values.tolist(), x=list(z.columns), y=list(z.index), colorscale="RdBu", zmid=0,
                                   zmin=-lim, zmax=lim, customdata=[toks["token"].tolist()] * len(z),
                                   hovertemplate="layer %{y} pos %{x} %{customdata!r}<br>%{z:.3f}<extra></extra>"))
        for pos, label in boundaries(toks["segment"].tolist()):
            fig.add_vline(x=pos - 0.5, line_color="black", line_width=1)
            fig.add_annotation(x=pos, y=1.02, yref="paper", text=label, showarrow=False, textangle=-30, xanchor="left")
        fig.update_layout(title=f"adaptive steering: m_t / mean |MLP out| (sample {sample})", xaxis_title="position",
                          yaxis_title="layer", yaxis_autorange="reversed")
        return fig


@torch.no_grad()
def adaptive_magnitudes(model, inputs, adaptive, *, batch_size: int = 8) -> AdaptiveMagnitudeResult:
    """Per-token magnitudes of an ``AdaptiveSteering`` on teacher-forced sequences."""
    import pandas as pd

    if not isinstance(adaptive, AdaptiveSteering):
        raise SteerInterpError("adaptive_magnitudes needs an AdaptiveSteering (rank-1, token-wise)")
    batch = as_batch(inputs, model)
    layers = adaptive.layers
    names = [f"blocks.{x}.mlp.hook_post" for x in layers] + [f"blocks.{x}.hook_mlp_out" for x in layers]
    special = set(getattr(model.tokenizer, "all_special_tokens", []))
    parts = []
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        _, cache = run_cached(model, chunk, adaptive, names)
        for r in range(len(chunk)):
            real = chunk.attention_mask[r].bool()
            ids = chunk.tokens[r][real]
            pieces = token_strings(model, ids)
            n_prompt = int(chunk.prompt_mask[r][real].sum())
            seg = token_segments(pieces, n_prompt, special)
            for layer in layers:
                u = cache[f"blocks.{layer}.mlp.hook_post"][r][real].double()
                out = cache[f"blocks.{layer}.hook_mlp_out"][r][real].double()
                b = adaptive.b[layer].detach().double().to(out.device)
                mag = adaptive.magnitude(layer, u).detach().double()
                cos = (out @ b) / (out.norm(dim=-1) * b.norm()).clamp_min(1e-30)
                parts.append(pd.DataFrame({"sample": start + r, "layer": layer, "position": range(len(ids)),
                                           "token": pieces, "segment": seg, "magnitude": mag.cpu().numpy(),
                                           "mlp_norm": out.norm(dim=-1).cpu().numpy(), "cos_mlp_b": cos.cpu().numpy()}))
    df = pd.concat(parts, ignore_index=True)
    mean_norm = df.groupby("layer")["mlp_norm"].transform("mean")
    df["normalised"] = df["magnitude"] / mean_norm
    return AdaptiveMagnitudeResult(df, layers)
