"""Attribution of a metric to SAE features: activation x gradient, with the SAE's error term.

At the SAE's hook the activation ``x`` is replaced by an exact decomposition

    x = reference + decode(f) + error,   f = encode(x - reference),   error = (x - reference) - decode(f)

with ``reference = 0`` for an ordinary SAE and ``reference = h_base`` (the unsteered run's activation
at the hook) for a DiffSAE, which reads the steering-induced difference. Because ``error`` is added
back, the model's output is unchanged (``output_change`` reports the largest logit change the
splice caused, rounding only). One backward pass of the metric gives, per sample and feature,

    attribution[f] = f * d metric / d f

summed over the chosen positions, plus the same for the error term (``error``), the SAE's output for
zero features (``bias``) and the reference (``reference``). Given the input, ``decode`` is affine in
the features, ``decode(f) = J f + decode(0)``, so these add up exactly to ``gradient . x``
(``grad_x_input``), the first-order estimate of the whole activation's effect. ``decode(0)`` is what
sae-lens's decoder adds besides the features, after its run-time output normalisation, which reuses
statistics of the input:

* ``normalize_activations="none"``, ``"expected_average_only_in"`` (and an unfolded
  ``"covariance_whitening"``, which sae-lens runs as the identity): ``b_dec``;
* ``"constant_norm_rescale"``: ``b_dec * |x_in| / sqrt(d_in)`` (the input was scaled to norm ``sqrt(d_in)``);
* ``"layer_norm"``: ``b_dec * std(x_in) + mean(x_in)`` (the input was centred and scaled to unit std);

with ``x_in = x - reference`` (the matching-pursuit SAEs add ``b_dec`` only with ``apply_b_dec_to_input``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float

from steerinterp.analysis.batch import Batch, as_batch, run_cached, steering_context
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.sae.model import DiffSAE, as_sae_lens, sae_hook_name
from steerinterp.steering.hooks import hooks_applied
from steerinterp.types import HookedModel


@dataclass
class FeatureAttributionResult(AnalysisResult):
    hook_name: str
    attribution: Float[torch.Tensor, "samples d_sae"]
    error: Float[torch.Tensor, "samples"]
    bias: Float[torch.Tensor, "samples"]
    reference: Float[torch.Tensor, "samples"]
    grad_x_input: Float[torch.Tensor, "samples"]
    metric: Float[torch.Tensor, "samples"]
    output_change: float
    metric_name: str = "metric"

    @property
    def total(self) -> Float[torch.Tensor, "d_sae"]:
        """Each feature's attribution summed over samples."""
        return self.attribution.sum(0)

    def top(self, k: int = 10, *, sign: str = "either") -> list[int]:
        """Features with the largest summed attribution: ``"positive"``, ``"negative"`` or ``"either"`` (|.|)."""
        score = {"positive": self.total, "negative": -self.total, "either": self.total.abs()}.get(sign)
        if score is None:
            raise SteerInterpError(f"sign={sign!r}; choose 'positive', 'negative' or 'either'")
        return torch.argsort(score, descending=True, stable=True)[:k].tolist()

    def to_frame(self, k: int | None = 20):
        """Top-k features by |attribution| (summed over samples), then the error, bias and reference terms."""
        import pandas as pd

        ids = self.top(k or self.attribution.shape[1])
        n = self.attribution.shape[0]
        rows = [{"term": f"feature {i}", "feature": i, "attribution": float(self.total[i]),
                 "mean_per_sample": float(self.total[i]) / n,
                 "samples_nonzero": int((self.attribution[:, i] != 0).sum())} for i in ids]
        for name in ("error", "bias", "reference"):
            v = getattr(self, name)
            rows.append({"term": name, "feature": None, "attribution": float(v.sum()), "mean_per_sample": float(v.mean()),
                         "samples_nonzero": int((v != 0).sum())})
        return pd.DataFrame(rows)

    def plot(self, k: int = 15):
        import plotly.graph_objects as go

        frame = self.to_frame(k)
        fig = go.Figure(go.Bar(x=frame["attribution"], y=frame["term"], orientation="h",
                               marker_color=["#2471a3" if v >= 0 else "#c0392b" for v in frame["attribution"]]))
        fig.update_layout(title=f"attribution of {self.metric_name} to SAE features at {self.hook_name} "
                                f"(activation x gradient; sum over {self.attribution.shape[0]} samples)",
                          xaxis_title="attribution", yaxis={"autorange": "reversed"}, height=260 + 22 * len(frame))
        return fig


def sae_feature_attribution(model: HookedModel, inputs, sae, metric: Callable[[torch.Tensor, Batch], torch.Tensor], *,
                            steering=None, difference: bool | None = None, hook_name: str | None = None,
                            positions: str = "all", batch_size: int = 4, check_output: bool = True,
                            ) -> FeatureAttributionResult:
    """Attribute ``metric(logits, batch) -> [batch]`` to the SAE's features (module docstring).

    ``sae``: a ``DiffSAE`` or any sae-lens SAE (e.g. ``SAE.load_from_disk``). ``steering``: the
    vectors applied in the analysed run. ``difference``: the SAE reads ``h_steered - h_base``
    (default: True for a ``DiffSAE``, else False). ``positions``: which positions' attributions are
    summed (``"all"``, ``"completion"`` or ``"first"``).
    """
    batch = as_batch(inputs)
    name = sae_hook_name(sae, hook_name)
    if name not in model.hook_dict:
        raise SteerInterpError(f"the model has no hook point {name!r}; pass hook_name= for this SAE")
    difference = isinstance(sae, DiffSAE) if difference is None else difference
    if difference and steering is None:
        raise SteerInterpError("a DiffSAE reads steered - base differences; give the steering= it was trained for")
    sae_ = as_sae_lens(sae)
    parts = []
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        parts.append(_attribute_chunk(model, chunk, sae_, name, metric, steering, difference, positions, check_output))
    cat = lambda i: torch.cat([p[i] for p in parts])  # noqa: E731
    return FeatureAttributionResult(name, cat(0), cat(1), cat(2), cat(3), cat(4), cat(5),
                                    max(p[6] for p in parts), getattr(metric, "__name__", "metric"))


def _attribute_chunk(model, chunk: Batch, sae, name, metric, steering, difference, positions, check_output):
    ref = run_cached(model, chunk, None, [name])[1][name] if difference else None
    mask = chunk.positions(positions).to(chunk.tokens.device)
    saved = {}

    def splice(act, hook):
        r = torch.zeros_like(act) if ref is None else ref.to(act.dtype)
        inp = (act - r).detach()
        sae_in = inp.to(sae.device, sae.dtype)
        with torch.no_grad():
            f = sae.encode(sae_in)
        f = f.detach().requires_grad_(True)
        recon = sae.decode(f).to(act.device, act.dtype)
        with torch.no_grad():
            # decode's part that does not depend on f, under this input's run-time normalisation
            # (layer_norm / constant_norm_rescale keep the input's statistics from encode to decode,
            # and decode consumes them, so encode runs again first)
            sae.encode(sae_in)
            offset = sae.decode(torch.zeros_like(f)).to(act.device, act.dtype)
        err = (inp - recon).detach().requires_grad_(True)
        ref_leaf = r.detach().requires_grad_(True)
        saved.update(f=f, err=err, ref=ref_leaf, act=act.detach(), offset=offset)
        return ref_leaf + recon + err

    with steering_context(model, steering, chunk):
        if check_output:
            with torch.no_grad():
                plain = model(chunk.tokens, attention_mask=chunk.attention_mask, return_type="logits")
        with torch.enable_grad(), hooks_applied(model, [(name, splice)]):
            logits = model(chunk.tokens, attention_mask=chunk.attention_mask, return_type="logits")
            values = metric(logits, chunk)
            values.sum().backward()
    f, err, ref_leaf, act = saved["f"], saved["err"], saved["ref"], saved["act"]
    g = err.grad  # d metric / d x at the hook
    m = mask.to(g.dtype)[..., None]
    attribution = (f.detach() * f.grad * m.to(f.dtype)).double().sum(1).cpu()
    err_term = (err.detach() * g * m).double().sum((1, 2)).cpu()
    bias_term = (saved["offset"] * g * m).double().sum((1, 2)).cpu()
    ref_term = (ref_leaf.detach() * g * m).double().sum((1, 2)).cpu()
    gx = (act * g * m).double().sum((1, 2)).cpu()
    change = float((logits.detach() - plain).abs().max()) if check_output else float("nan")
    return attribution, err_term, bias_term, ref_term, gx, values.detach().double().cpu(), change
