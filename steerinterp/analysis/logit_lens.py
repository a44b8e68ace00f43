"""Logit lens of steering vectors: which tokens a vector pushes up or down through the unembedding.

Two readouts (PAPER_NOTES sections 4.3 and 8.2):

* ``mode="raw"`` (the papers'): ``dot = W_U s`` and ``cos = cos(s, W_U[:, v])`` for every token v,
  with the raw unembedding (no final-norm gain, no centring). Needs a model loaded with
  ``processed=False`` (``load_model``'s default), where ``W_U`` is the HF ``lm_head``.
* ``mode="norm"``: the same through the final norm's linear part, ``W_U (gamma * P s)``, the direction a
  last-layer vector actually writes into the logits: ``gamma`` is the norm's gain as the model applies it
  (``1 + w`` for Gemma) and ``P`` centres ``s`` for a LayerNorm (GPT-2; identity for an RMSNorm). A
  logit soft-cap (Gemma-2) is monotone and leaves the ranking alone; ``dot`` is before it.

``prob`` is ``softmax(dot)`` (the first paper's ranking). Pass a ``SteeringSet`` or any
``{layer: vector}`` mapping, e.g. the final-layer mean shifts of ``persistence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float

from steerinterp.analysis.architecture import FinalNorm, final_norm
from steerinterp.analysis.batch import token_strings
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.vectors import as_vector_dict
from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel

Mode = Literal["raw", "norm"]


@dataclass
class LogitLensResult(AnalysisResult):
    """Per-layer scores over the vocabulary. ``dot`` / ``cos``: [n_layers, d_vocab] (float64)."""

    layers: list[int]
    dot: Float[torch.Tensor, "n vocab"]
    cos: Float[torch.Tensor, "n vocab"]
    mode: str
    vocab: list[str]
    k: int = 50
    label: str = "layer"  # what the rows are: steering-vector layers, or e.g. SAE "feature"s

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise SteerInterpError(f"{self.label} {layer} is not in this logit lens ({self.label}s {self.layers})")
        return self.layers.index(layer)

    def top(self, layer: int, k: int | None = None, *, by: str = "cos", suppressed: bool = False) -> list[int]:
        """Token ids of the k most boosted (or suppressed) tokens at a layer, ranked by ``cos`` or ``dot``."""
        scores = getattr(self, by)[self._row(layer)]
        return torch.topk(-scores if suppressed else scores, k or self.k).indices.tolist()

    def to_frame(self, k: int | None = None, by: str = "cos"):
        """Long table: layer, direction (boosted / suppressed), rank, token, id, cos, dot, prob."""
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            prob = torch.softmax(self.dot[i], -1)
            for direction, suppressed in (("boosted", False), ("suppressed", True)):
                for rank, t in enumerate(self.top(layer, k, by=by, suppressed=suppressed)):
                    rows.append({self.label: layer, "direction": direction, "rank": rank, "token": self.vocab[t],
                                 "token_id": t, "cos": float(self.cos[i, t]), "dot": float(self.dot[i, t]),
                                 "prob": float(prob[t])})
        return pd.DataFrame(rows)

    def plot(self, kind: str = "histogram", *, layer: int | None = None, k: int = 15, bins: int = 80):
        """``"histogram"``: cosine over the vocabulary, one panel per layer (the papers' grid);
        ``"top"``: the k most boosted and suppressed tokens of one layer (default: the last)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if kind == "top":
            layer = self.layers[-1] if layer is None else layer
            i = self._row(layer)
            up, down = self.top(layer, k), self.top(layer, k, suppressed=True)
            ids = down[::-1] + up
            fig = go.Figure(go.Bar(x=[float(self.cos[i, t]) for t in ids], y=[repr(self.vocab[t]) for t in ids],
                                   orientation="h", marker_color=["#c0392b"] * len(down) + ["#2471a3"] * len(up)))
            fig.update_layout(title=f"logit lens ({self.mode}) of {self.label} {layer}: top and bottom {k} tokens",
                              xaxis_title="cosine with W_U row", height=300 + 18 * len(ids))
            return fig
        if kind != "histogram":
            raise SteerInterpError(f"kind={kind!r}; choose 'histogram' or 'top'")
        n = len(self.layers)
        cols = min(n, 6)
        rows = -(-n // cols)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{self.label} {x}" for x in self.layers])
        lo, hi = float(self.cos.min()), float(self.cos.max())
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        centres = ((edges[1:] + edges[:-1]) / 2).tolist()
        for i in range(n):  # binned here, so the figure holds counts rather than the whole vocabulary
            counts = torch.histc(self.cos[i], bins=bins, min=lo, max=hi).tolist()
            fig.add_trace(go.Bar(x=centres, y=counts, marker_color="#2471a3", showlegend=False), i // cols + 1, i % cols + 1)
        fig.update_layout(title=f"cosine of each vector with every unembedding row ({self.mode} lens)",
                          height=220 * rows + 80, bargap=0)
        return fig


def unembedding_directions(model: HookedModel, mode: Mode = "raw") -> tuple[Float[torch.Tensor, "d vocab"], FinalNorm | None]:
    """``(W_U, final norm)`` for a lens mode (the norm only for ``"norm"``); errors if the weights were
    processed (gain folded into W_U) or the final norm is not one the lens can reproduce."""
    if mode not in ("raw", "norm"):
        raise SteerInterpError(f"mode={mode!r}; choose 'raw' (the papers') or 'norm' (through the final norm's gain)")
    if getattr(model.ln_final, "w", None) is None:
        raise SteerInterpError(
            "this model was loaded with processed weights (the final norm's gain is folded into W_U and the "
            "rows centred), so the papers' raw logit lens is not available; load it with processed=False"
        )
    return model.W_U.detach(), (final_norm(model, "the norm-aware logit lens") if mode == "norm" else None)


@torch.no_grad()
def vector_logit_lens(model: HookedModel, vectors, *, mode: Mode = "raw", k: int = 50) -> LogitLensResult:
    """Score every vocabulary token against each vector (``dot`` and ``cos``), in float64."""
    vecs = as_vector_dict(vectors)
    if not vecs:
        raise SteerInterpError("no vectors to read out")
    w_u, norm = unembedding_directions(model, mode)
    w = w_u.double().cpu()
    for layer, v in vecs.items():
        if v.shape[0] != w.shape[0]:
            raise SteerInterpError(f"vector for layer {layer} has width {v.shape[0]}, the model's d_model is {w.shape[0]}")
    m = torch.stack([v.double().cpu() for v in vecs.values()])
    if mode == "norm":
        m = norm.linear(m)
    dot = m @ w
    cos = (m / m.norm(dim=-1, keepdim=True).clamp_min(1e-30)) @ (w / w.norm(dim=0, keepdim=True).clamp_min(1e-30))
    vocab = token_strings(model, range(w.shape[1]))
    return LogitLensResult(list(vecs), dot, cos, mode, vocab, k)
