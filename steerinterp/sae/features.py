"""Which DiffSAE features tell correct from incorrect generations, and what they look like.

PAPER_NOTES section 4.6, step 4 (Figs 7-8 of the second paper):

* ``feature_frequencies``: per feature, the share of correct and of incorrect generations in which
  it fires on at least one analysed token (the papers' "frequency"), the same at token level, and a
  two-sided Fisher exact test of fires x correct per feature with Benjamini-Hochberg q-values (the
  papers do not say which test they used). Ranked by the frequency difference.
* ``FrequencyByLayer``: the top features of several layers' SAEs side by side (Fig 7).
* ``top_contexts``: the tokens where a feature fires most, with the text around them (Fig 8).
* ``decoder_logit_lens``: decoder directions read through the unembedding, like steering vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from steerinterp.analysis.batch import token_strings
from steerinterp.analysis.logit_lens import LogitLensResult, Mode, vector_logit_lens
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.stats import benjamini_hochberg
from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations
from steerinterp.sae.model import as_sae_lens
from steerinterp.sae.store import ShardedDiffs, check_source
from steerinterp.types import HookedModel

ROWS = ("completion", "all")


@torch.no_grad()
def encode_rows(sae, delta: torch.Tensor, batch_size: int = 4096) -> Float[torch.Tensor, "rows d_sae"]:
    """Feature activations of each row (dense, float32)."""
    sae = as_sae_lens(sae)
    if delta.shape[-1] != sae.cfg.d_in:
        raise SteerInterpError(f"the SAE reads width {sae.cfg.d_in} but the differences have width {delta.shape[-1]}")
    out = [sae.encode(delta[i : i + batch_size].to(sae.device, sae.dtype)).float().cpu()
           for i in range(0, len(delta), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, sae.cfg.d_sae)


def fisher_exact_pvalues(fired_correct: torch.Tensor, n_correct: int, fired_incorrect: torch.Tensor,
                         n_incorrect: int) -> torch.Tensor:
    """Two-sided Fisher exact p-value of each feature's 2x2 table (fires / not x correct / incorrect)."""
    from scipy.stats import fisher_exact

    cache: dict[tuple[int, int], float] = {}
    out = torch.ones(len(fired_correct), dtype=torch.float64)
    for i, (a, b) in enumerate(zip(fired_correct.tolist(), fired_incorrect.tolist())):
        key = (int(a), int(b))
        if key not in cache:
            cache[key] = float(fisher_exact([[key[0], n_correct - key[0]], [key[1], n_incorrect - key[1]]])[1])
        out[i] = cache[key]
    return out


def cmh_pvalues(fired: torch.Tensor, correct: torch.Tensor, strata: torch.Tensor) -> torch.Tensor:
    """Cochran-Mantel-Haenszel test (continuity-corrected, 1 d.o.f.) of fires x correct within strata.

    ``fired``: [samples, features] bool; ``correct``: [samples] bool; ``strata``: [samples] ids (e.g. the
    problem). Strata with only one label carry no information and drop out.
    """
    from scipy.stats import chi2

    num = torch.zeros(fired.shape[1], dtype=torch.float64)
    var = torch.zeros(fired.shape[1], dtype=torch.float64)
    for k in torch.unique(strata):
        rows = strata == k
        n = int(rows.sum())
        n_c = int(correct[rows].sum())
        if n < 2 or n_c in (0, n):
            continue
        f = fired[rows].double()
        m1 = f.sum(0)  # samples of the stratum where the feature fires
        a = f[correct[rows]].sum(0)  # ... and that are correct
        num += a - n_c * m1 / n
        var += n_c * (n - n_c) * m1 * (n - m1) / (n * n * (n - 1))
    stat = (num.abs() - 0.5).clamp_min(0) ** 2 / var.clamp_min(1e-300)
    p = torch.from_numpy(chi2.sf(stat.numpy(), 1)).double()
    return torch.where(var > 0, p, torch.ones_like(p))


@dataclass
class FeatureFrequencyResult(AnalysisResult):
    """Per-feature firing on correct vs incorrect generations (``[d_sae]`` tensors)."""

    hook_name: str
    freq_correct: torch.Tensor  # share of correct generations where the feature fires
    freq_incorrect: torch.Tensor
    token_freq_correct: torch.Tensor  # share of analysed tokens of correct generations
    token_freq_incorrect: torch.Tensor
    mean_activation: torch.Tensor  # mean activation where it fires
    p_value: torch.Tensor
    q_value: torch.Tensor
    n_correct: int
    n_incorrect: int
    test: str = "fisher"  # or "cmh" (within strata, e.g. problems)

    @property
    def difference(self) -> torch.Tensor:
        """freq_correct - freq_incorrect: positive for features of correct generations."""
        return self.freq_correct - self.freq_incorrect

    def top(self, k: int = 10, *, toward: str = "either") -> list[int]:
        """Features with the largest frequency difference, ``toward`` ``"correct"``, ``"incorrect"`` or ``"either"``."""
        score = {"correct": self.difference, "incorrect": -self.difference, "either": self.difference.abs()}.get(toward)
        if score is None:
            raise SteerInterpError(f"toward={toward!r}; choose 'correct', 'incorrect' or 'either'")
        return torch.argsort(score, descending=True, stable=True)[:k].tolist()

    def to_frame(self, k: int | None = 20):
        """The k features with the largest |difference| (all with k=None), most different first."""
        import pandas as pd

        ids = self.top(k or len(self.difference))
        return pd.DataFrame({
            "hook": self.hook_name, "feature": ids,
            "freq_correct": self.freq_correct[ids].tolist(), "freq_incorrect": self.freq_incorrect[ids].tolist(),
            "difference": self.difference[ids].tolist(),
            "token_freq_correct": self.token_freq_correct[ids].tolist(),
            "token_freq_incorrect": self.token_freq_incorrect[ids].tolist(),
            "mean_activation": self.mean_activation[ids].tolist(),
            "p_value": self.p_value[ids].tolist(), "q_value": self.q_value[ids].tolist(), "test": self.test})

    def plot(self, k: int = 10):
        """Every feature: frequency on incorrect (x) vs correct (y) generations; the top k labelled."""
        import plotly.graph_objects as go

        alive = ((self.freq_correct + self.freq_incorrect) > 0).nonzero().flatten().tolist()
        top = self.top(k)
        sig = (-torch.log10(self.q_value.clamp_min(1e-300))).tolist()
        fig = go.Figure(go.Scatter(
            x=self.freq_incorrect[alive].tolist(), y=self.freq_correct[alive].tolist(), mode="markers",
            marker={"color": [sig[i] for i in alive], "colorscale": "Viridis", "showscale": True, "size": 6,
                    "colorbar": {"title": "-log10 q"}},
            text=[f"feature {i}" for i in alive], name="features"))
        fig.add_trace(go.Scatter(x=self.freq_incorrect[top].tolist(), y=self.freq_correct[top].tolist(),
                                 mode="text", text=[str(i) for i in top], textposition="top center", showlegend=False))
        fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "grey"})
        fig.update_layout(title=f"DiffSAE features at {self.hook_name}: firing frequency on correct "
                                f"({self.n_correct}) vs incorrect ({self.n_incorrect}) generations",
                          xaxis_title="share of incorrect generations", yaxis_title="share of correct generations",
                          xaxis_range=[-0.02, 1.02], yaxis_range=[-0.02, 1.02])
        return fig


@torch.no_grad()
def feature_frequencies(sae, source: DiffActivations | ShardedDiffs, *, rows: str = "completion",
                        threshold: float = 0.0, strata=None, batch_size: int = 4096) -> FeatureFrequencyResult:
    """Firing statistics of every feature on correct vs incorrect generations.

    ``rows``: ``"completion"`` (positions predicting completion tokens) or ``"all"`` collected rows.
    A feature fires on a token when its activation exceeds ``threshold``. ``strata``: one id per sample
    (e.g. ``LabelledGenerations.problem_index``); then the p-values come from a Cochran-Mantel-Haenszel
    test within strata, so a feature that only marks the problems the model gets wrong is not
    significant. Without it, a two-sided Fisher exact test over all samples.
    """
    if rows not in ROWS:
        raise SteerInterpError(f"rows={rows!r}; choose 'completion' or 'all'")
    check_source(source)
    d_sae = as_sae_lens(sae).cfg.d_sae
    labels = source.labels
    n_samples = len(labels)
    fired_in_sample = torch.zeros(n_samples, d_sae, dtype=torch.int32)  # firing tokens per sample
    has_rows = torch.zeros(n_samples, dtype=torch.bool)
    token_counts = torch.zeros(2, d_sae, dtype=torch.float64)
    n_tokens = torch.zeros(2, dtype=torch.float64)
    act_sum = torch.zeros(d_sae, dtype=torch.float64)
    act_n = torch.zeros(d_sae, dtype=torch.float64)
    for part in source.parts():
        keep = part.in_completion if rows == "completion" else torch.ones(len(part), dtype=torch.bool)
        delta, sample = part.delta[keep], part.sample[keep]
        for start in range(0, len(delta), batch_size):
            acts = encode_rows(sae, delta[start : start + batch_size], batch_size)
            s = sample[start : start + batch_size]
            fires = acts > threshold
            fired_in_sample.index_add_(0, s, fires.int())
            has_rows[s] = True
            lab = labels[s].long()
            token_counts.index_add_(0, lab, fires.double())
            n_tokens += torch.bincount(lab, minlength=2).double()
            act_sum += (acts * fires).double().sum(0)
            act_n += fires.double().sum(0)
    correct = labels & has_rows
    incorrect = ~labels & has_rows
    n_c, n_i = int(correct.sum()), int(incorrect.sum())
    if n_c == 0 or n_i == 0:
        raise SteerInterpError(f"need both correct and incorrect generations with analysed tokens (have {n_c} correct, "
                               f"{n_i} incorrect); sample more, or at a temperature where the model still errs")
    f_c = (fired_in_sample[correct] > 0).sum(0)
    f_i = (fired_in_sample[incorrect] > 0).sum(0)
    if strata is None:
        p = fisher_exact_pvalues(f_c, n_c, f_i, n_i)
    else:
        strata = torch.as_tensor(strata).cpu()
        if strata.shape != (n_samples,):
            raise SteerInterpError(f"strata needs one id per sample ({n_samples}), got shape {tuple(strata.shape)}")
        p = cmh_pvalues(fired_in_sample[has_rows] > 0, labels[has_rows], strata[has_rows])
    return FeatureFrequencyResult(
        source.hook_name, f_c.double() / n_c, f_i.double() / n_i,
        token_counts[1] / n_tokens[1].clamp_min(1), token_counts[0] / n_tokens[0].clamp_min(1),
        act_sum / act_n.clamp_min(1), p, benjamini_hochberg(p), n_c, n_i, "fisher" if strata is None else "cmh")


@dataclass
class FrequencyByLayer(AnalysisResult):
    """The top features of SAEs at several layers, on correct vs incorrect generations (Fig 7)."""

    results: dict[int, FeatureFrequencyResult]
    k: int = 3
    toward: str = "either"

    def to_frame(self):
        import pandas as pd

        rows = []
        for layer, r in sorted(self.results.items()):
            for rank, f in enumerate(r.top(self.k, toward=self.toward)):
                rows.append({"layer": layer, "rank": rank, "feature": f, "freq_correct": float(r.freq_correct[f]),
                             "freq_incorrect": float(r.freq_incorrect[f]), "difference": float(r.difference[f]),
                             "q_value": float(r.q_value[f])})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go

        frame = self.to_frame()
        label = [f"L{r.layer} #{r.feature}" for r in frame.itertuples()]
        fig = go.Figure([go.Bar(x=label, y=frame["freq_correct"], name="correct generations", marker_color="#2471a3"),
                         go.Bar(x=label, y=frame["freq_incorrect"], name="incorrect generations", marker_color="#c0392b")])
        fig.update_layout(barmode="group", yaxis_title="share of generations where the feature fires", yaxis_range=[0, 1],
                          title=f"top {self.k} DiffSAE features per layer (largest frequency difference)")
        return fig


@dataclass
class TopContextsResult(AnalysisResult):
    """The highest activations of some features, each with the tokens around it."""

    rows: list[dict]
    COLUMNS = ("feature", "rank", "activation", "sample", "position", "token", "correct", "context")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))

    def plot(self):
        import plotly.graph_objects as go

        frame = self.to_frame()
        return go.Figure(go.Table(header={"values": ["feature", "activation", "correct", "context"]},
                                  cells={"values": [frame["feature"], frame["activation"].round(3), frame["correct"],
                                                    frame["context"]], "align": "left"}))


@torch.no_grad()
def top_contexts(model: HookedModel, sae, source: DiffActivations | ShardedDiffs, features: Sequence[int], *,
                 k: int = 10, window: int = 8, batch_size: int = 4096) -> TopContextsResult:
    """The ``k`` rows where each feature is most active; ``context`` shows ``window`` tokens either side
    with the token itself in ``[[ ]]``."""
    features = [int(f) for f in features]
    d_sae = as_sae_lens(sae).cfg.d_sae
    if any(not 0 <= f < d_sae for f in features):
        raise SteerInterpError(f"features must lie in 0..{d_sae - 1}")
    check_source(source)
    tokens = source.sample_tokens
    if not tokens:
        raise SteerInterpError("these differences carry no sample tokens; collect them with collect_differences "
                               "(or write the store with sample_tokens=...) to see contexts")
    best_val = torch.full((len(features), k), -float("inf"))
    best_src = torch.zeros(len(features), k, 2, dtype=torch.long)  # (sample, position)
    for part in source.parts():
        for start in range(0, len(part), batch_size):
            acts = encode_rows(sae, part.delta[start : start + batch_size], batch_size)[:, features].T  # [f, rows]
            where = torch.stack([part.sample[start : start + batch_size], part.position[start : start + batch_size]], -1)
            vals = torch.cat([best_val, acts], 1)
            srcs = torch.cat([best_src, where.expand(len(features), -1, -1)], 1)
            top = torch.topk(vals, k, dim=1)
            best_val = top.values
            best_src = torch.gather(srcs, 1, top.indices[..., None].expand(-1, -1, 2))
    labels = source.labels
    out = []
    for i, f in enumerate(features):
        for rank in range(k):
            val = float(best_val[i, rank])
            if val <= 0:
                break
            s, pos = best_src[i, rank].tolist()
            row = tokens[s]
            lo, hi = max(0, pos - window), min(len(row), pos + window + 1)
            pieces = ["" if t < 0 else p for t, p in zip(row[lo:hi], token_strings(model, [max(t, 0) for t in row[lo:hi]]))]
            pieces[pos - lo] = f"[[{pieces[pos - lo]}]]"  # -1 marks padding
            out.append({"feature": f, "rank": rank, "activation": val, "sample": s, "position": pos,
                        "token": token_strings(model, [row[pos]])[0], "correct": bool(labels[s]),
                        "context": "".join(pieces)})
    return TopContextsResult(out)


def decoder_logit_lens(model: HookedModel, sae, features: Sequence[int], *, mode: Mode = "norm", k: int = 20) -> LogitLensResult:
    """Decoder directions ``W_dec[f]`` through the unembedding (``vector_logit_lens``), one row per feature.

    ``mode="norm"`` (default) reads them through the final norm's gain, as a shift of the last
    residual stream would act; ``"raw"`` as the papers read steering vectors."""
    w_dec = as_sae_lens(sae).W_dec.detach()
    features = [int(f) for f in features]
    if any(not 0 <= f < w_dec.shape[0] for f in features):
        raise SteerInterpError(f"features must lie in 0..{w_dec.shape[0] - 1}")
    lens = vector_logit_lens(model, {f: w_dec[f] for f in features}, mode=mode, k=k)  # rows: sorted feature ids
    lens.label = "feature"
    return lens


def frequencies_by_layer(results: Mapping[int, FeatureFrequencyResult], *, k: int = 3,
                         toward: str = "either") -> FrequencyByLayer:
    """Collect per-layer ``feature_frequencies`` results for the Fig-7 comparison."""
    if not results:
        raise SteerInterpError("give {layer: feature_frequencies(...)} for at least one layer")
    return FrequencyByLayer(dict(results), k, toward)
