"""Residual-stream logit lens of a steered run against the unsteered one, layer by layer.

At each layer's ``hook_resid_post`` the residual is read out through the final norm and the
unembedding (the ordinary logit lens). Per layer, over the chosen positions, it reports the KL
divergence between the steered and unsteered readouts (float64), how often their argmax agrees,
and the mean probability of tracked tokens (e.g. ``"To"``). It shows at which depth the steering
changes what the model "would say".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from steerinterp.analysis.batch import as_batch, paired_caches
from steerinterp.analysis.readout import final_logprobs
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_ids
from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel


@dataclass
class ResidualLensResult(AnalysisResult):
    layers: list[int]
    kl: list[float]  # mean KL(steered || base) of the read-out distributions
    top1_agreement: list[float]
    tracked: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # token -> (base, steered)
    positions: str = "first"
    n_positions: int = 0

    def to_frame(self):
        import pandas as pd

        df = pd.DataFrame({"layer": self.layers, "kl": self.kl, "top1_agreement": self.top1_agreement})
        for tok, (base, steered) in self.tracked.items():
            df[f"p_base[{tok}]"] = base
            df[f"p_steered[{tok}]"] = steered
        return df

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("KL(steered || base) of the logit lens", "tracked tokens"))
        fig.add_trace(go.Scatter(x=self.layers, y=self.kl, mode="lines+markers", name="KL"), 1, 1)
        for tok, (base, steered) in self.tracked.items():
            fig.add_trace(go.Scatter(x=self.layers, y=base, mode="lines", name=f"p({tok!r}) base", line={"dash": "dot"}), 1, 2)
            fig.add_trace(go.Scatter(x=self.layers, y=steered, mode="lines+markers", name=f"p({tok!r}) steered"), 1, 2)
        fig.update_xaxes(title_text="layer (resid_post)")
        fig.update_layout(title=f"residual-stream logit lens, {self.positions} positions (n={self.n_positions})")
        return fig


@torch.no_grad()
def residual_logit_lens(
    model: HookedModel,
    inputs,
    steering,
    *,
    positions: str = "first",
    track: Sequence[str | int] = (),
    layers: Sequence[int] | None = None,
    batch_size: int | None = None,
    position_chunk: int = 128,
) -> ResidualLensResult:
    """Layer-by-layer logit lens of the steered vs unsteered residual stream.

    ``positions``: ``"first"`` (the last prompt token, which predicts the first generated token),
    ``"completion"`` (every position predicting a completion token) or ``"all"``. Only the observed
    layers' ``hook_resid_post`` is cached, ``batch_size`` sequences at a time (default: ``rows_per_forward``);
    the read-out runs ``position_chunk`` positions at a time.
    """
    batch = as_batch(inputs, model)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    tracked_ids = token_ids(model, track)
    kl = torch.zeros(len(layers), dtype=torch.float64)
    agree = torch.zeros(len(layers), dtype=torch.float64)
    p_base = torch.zeros(len(layers), len(tracked_ids), dtype=torch.float64)
    p_steer = torch.zeros_like(p_base)
    n = 0
    for chunk, (_, base), (_, steered) in paired_caches(model, batch, steering, names, batch_size=batch_size):
        sel = chunk.positions(positions)
        n += int(sel.sum())
        for i, name in enumerate(names):
            hb, hs = base[name][sel], steered[name][sel]
            for s in range(0, hb.shape[0], position_chunk):  # [chunk, vocab] float64 at a time
                lp_b = final_logprobs(model, hb[s : s + position_chunk])
                lp_s = final_logprobs(model, hs[s : s + position_chunk])
                kl[i] += (lp_s.exp() * (lp_s - lp_b)).sum(-1).sum().cpu()
                agree[i] += (lp_s.argmax(-1) == lp_b.argmax(-1)).double().sum().cpu()
                if tracked_ids:
                    idx = torch.tensor(list(tracked_ids.values()), device=lp_b.device)
                    p_base[i] += lp_b[:, idx].exp().sum(0).cpu()
                    p_steer[i] += lp_s[:, idx].exp().sum(0).cpu()
    if n == 0:
        raise SteerInterpError("no positions selected; the batch has no completion tokens")
    tracked = {tok: ((p_base[:, j] / n).tolist(), (p_steer[:, j] / n).tolist()) for j, tok in enumerate(tracked_ids)}
    return ResidualLensResult(layers, (kl / n).tolist(), (agree / n).tolist(), tracked, positions, n)
