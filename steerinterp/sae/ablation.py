"""Causal ablation of SAE features inside the steered run: how much of the steering effect they carry.

At the SAE's hook the steered run's activation ``x`` loses the chosen features' share of the SAE's
reconstruction, and keeps everything else (the other features, the SAE's error term, the reference):

    x' = x - (decode(f) - decode(f with the chosen features set to 0)),   f = encode(x - reference)

with ``reference = h_base`` (the reference run's activation at the hook) for a DiffSAE, which reads
the steering-induced difference, and 0 for an ordinary SAE. (The difference of two decodes is the
chosen features' decoder rows times their activations, under whatever run-time normalisation
sae-lens applies.) With no feature chosen the run is the steered run, bit for bit; a DiffSAE that
reconstructs the difference exactly, with every feature ablated, gives the reference run.

* ``ablate_features``: teacher-forced, for the top-k features for each k of ``ks``: KL(steered ||
  ablated), the papers' share of the steering effect lost (KL(steered || ablated) / KL(steered ||
  base), as in block patching) and the mean log-probability of the teacher-forced tokens.
* ``ablation_accuracy``: the task's accuracy when decoding with the ablation (``FeatureAblationEngine``,
  KV-cached: the reference run up to the hook and the ablated steered run side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.architecture import architecture, final_logits
from steerinterp.analysis.batch import as_batch, entering, rows_per_forward, run_blocks
from steerinterp.analysis.readout import final_logprobs
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.generation.engines import MultiCacheEngine
from steerinterp.sae.model import DiffSAE, as_sae_lens, sae_hook_name
from steerinterp.steering.hooks import hooks_applied
from steerinterp.steering.protocol import as_steering
from steerinterp.steering.vectors import layer_of
from steerinterp.types import HookedModel, is_bridge

ABLATE_AT = ("all", "completion")


def ablation_hook(sae, features: Sequence[int], reference: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None):
    """A hook function that removes ``features``' part of the SAE's reconstruction from the activation
    (module docstring); ``reference`` [batch, pos, d] is subtracted before encoding (a DiffSAE's base
    activation), ``mask`` [batch, pos] limits the ablation to some positions."""
    sae = as_sae_lens(sae)
    feats = [int(f) for f in features]

    def fn(act, hook):
        if not feats:
            return act
        r = torch.zeros_like(act) if reference is None else reference.to(act.dtype)
        x = (act - r).to(sae.device, sae.dtype)
        with torch.no_grad():
            f = sae.encode(x)
            full = sae.decode(f)
            kept = f.clone()
            kept[..., feats] = 0
            sae.encode(x)  # run-time normalisations keep the input's statistics from encode for decode
            part = sae.decode(kept)
        removed = (full - part).to(act.device, act.dtype)
        if mask is not None:
            removed = removed * mask[..., None].to(removed.device, removed.dtype)
        return act - removed

    return fn


def _setup(model, sae, features, steering, difference, hook_name, ks):
    name = sae_hook_name(sae, hook_name)
    if name not in model.hook_dict:
        raise SteerInterpError(f"the model has no hook point {name!r}; pass hook_name= for this SAE")
    difference = isinstance(sae, DiffSAE) if difference is None else difference
    if as_steering(steering) is None:
        raise SteerInterpError("feature ablation acts inside the steered run; give the steering= the SAE explains")
    d_sae = as_sae_lens(sae).cfg.d_sae
    features = [int(f) for f in features]
    if not features or any(not 0 <= f < d_sae for f in features):
        raise SteerInterpError(f"give the features to ablate, ranked, in 0..{d_sae - 1}")
    ks = [len(features)] if ks is None else sorted({int(k) for k in ks})
    if any(not 1 <= k <= len(features) for k in ks):
        raise SteerInterpError(f"ks must lie in 1..{len(features)} (the number of features given)")
    return name, difference, features, ks


@dataclass
class FeatureAblationResult(AnalysisResult):
    """Teacher-forced effect of ablating the top-k features, for each k (means over the chosen positions)."""

    hook_name: str
    features: list[int]
    ks: list[int]
    kl_from_steered: list[float]  # KL(steered || ablated), per k
    kl_steered_base: float  # KL(steered || base)
    logprob: list[float]  # mean log p(teacher-forced next token) under the ablation, per k
    logprob_steered: float
    logprob_base: float
    positions: str
    ablate_at: str
    n_positions: int

    @property
    def effect_lost(self) -> list[float]:
        """KL(steered || ablated) / KL(steered || base): the share of the steering effect the features carry."""
        ref = self.kl_steered_base
        return [k / ref if ref > 0 else float("nan") for k in self.kl_from_steered]

    def to_frame(self):
        import pandas as pd

        rows = [{"variant": "steered", "k": 0, "features": "", "kl_from_steered": 0.0, "effect_lost": 0.0,
                 "logprob": self.logprob_steered}]
        for k, kl, lost, lp in zip(self.ks, self.kl_from_steered, self.effect_lost, self.logprob):
            rows.append({"variant": f"top-{k}", "k": k, "features": " ".join(map(str, self.features[:k])),
                         "kl_from_steered": kl, "effect_lost": lost, "logprob": lp})
        rows.append({"variant": "base", "k": None, "features": "", "kl_from_steered": self.kl_steered_base,
                     "effect_lost": 1.0 if self.kl_steered_base > 0 else float("nan"), "logprob": self.logprob_base})
        df = pd.DataFrame(rows)
        df["logprob_change"] = df["logprob"] - self.logprob_steered
        return df

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=["share of the steering effect lost",
                                                            "mean log p(token) change vs steered"])
        fig.add_trace(go.Scatter(x=[0] + self.ks, y=[0.0] + self.effect_lost, mode="lines+markers", name="effect lost"), 1, 1)
        change = [lp - self.logprob_steered for lp in self.logprob]
        fig.add_trace(go.Scatter(x=[0] + self.ks, y=[0.0] + change, mode="lines+markers", name="log p change"), 1, 2)
        fig.add_hline(y=1.0, line_dash="dash", annotation_text="base", row=1, col=1)
        fig.add_hline(y=self.logprob_base - self.logprob_steered, line_dash="dash", annotation_text="base", row=1, col=2)
        fig.update_xaxes(title_text="top-k features ablated")
        fig.update_layout(title=f"ablating DiffSAE features at {self.hook_name} in the steered run "
                                f"({self.positions} positions, n={self.n_positions})")
        return fig


@torch.no_grad()
def ablate_features(model: HookedModel, inputs, sae, features: Sequence[int], *, steering, ks: Sequence[int] | None = None,
                    base_steering=None, difference: bool | None = None, hook_name: str | None = None,
                    positions: str = "completion", ablate_at: str = "all", batch_size: int | None = None,
                    position_chunk: int = 128) -> FeatureAblationResult:
    """Ablate the top-k of ``features`` (ranked, e.g. ``freq.top(10)``) in the steered run, for each k of
    ``ks`` (default: all of them at once), on teacher-forced ``inputs``.

    ``positions`` (``"completion"`` or ``"first"``) are where the effect is read; ``ablate_at``
    (``"all"`` or ``"completion"``) where the features are removed. ``base_steering``: what the
    reference run carries (the base of the differences the SAE was trained on). ``difference``: the
    SAE reads ``h_steered - h_base`` (default: True for a ``DiffSAE``).
    """
    if positions not in ("completion", "first"):
        raise SteerInterpError(f"positions={positions!r}; choose 'completion' or 'first'")
    if ablate_at not in ABLATE_AT:
        raise SteerInterpError(f"ablate_at={ablate_at!r}; choose 'all' or 'completion'")
    name, difference, features, ks = _setup(model, sae, features, steering, difference, hook_name, ks)
    batch = as_batch(inputs, model)
    start = layer_of(name) or 0  # the ablated runs start at the hook's block from the steered residual entering it
    kl = torch.zeros(len(ks), dtype=torch.float64)
    lp_sum = torch.zeros(len(ks), dtype=torch.float64)
    kl_sb = lp_s = lp_b = 0.0
    n = 0
    step = rows_per_forward(model, batch, batch_size)
    for c0 in range(0, len(batch), step):
        chunk = batch.rows(slice(c0, c0 + step))
        sel = chunk.positions(positions)
        n += int(sel.sum())
        nxt = torch.roll(chunk.tokens, -1, dims=1)[sel]  # the token each chosen position predicts
        base_final, base = run_blocks(model, chunk, base_steering, [name] if difference else None)
        steered_final, st = run_blocks(model, chunk, steering, [entering(start)] if start else None)
        ref = base[name] if difference else None
        mask = None if ablate_at == "all" else chunk.predicting_mask
        finals = []
        for k in ks:
            hook = ablation_hook(sae, features[:k], ref, mask)
            out, _ = run_blocks(model, chunk, steering, hooks=[(name, hook)], start=start,
                                resid=st[entering(start)] if start else None)
            finals.append(out[sel])
            del out
        s_sel, b_sel = steered_final[sel], base_final[sel]
        for p0 in range(0, len(s_sel), position_chunk):
            ps = slice(p0, p0 + position_chunk)
            ls, lb = final_logprobs(model, s_sel[ps]), final_logprobs(model, b_sel[ps])
            tok = nxt[ps].to(ls.device)[:, None]
            kl_sb += float((ls.exp() * (ls - lb)).sum())
            lp_s += float(ls.gather(-1, tok).sum())
            lp_b += float(lb.gather(-1, tok).sum())
            for i, f in enumerate(finals):
                la = final_logprobs(model, f[ps])
                kl[i] += float((ls.exp() * (ls - la)).sum())
                lp_sum[i] += float(la.gather(-1, tok).sum())
                del la
    if n == 0:
        raise SteerInterpError("no positions selected; the batch has no completion tokens")
    return FeatureAblationResult(name, features, ks, (kl / n).tolist(), kl_sb / n, (lp_sum / n).tolist(), lp_s / n,
                                 lp_b / n, positions, ablate_at, n)


class FeatureAblationEngine(MultiCacheEngine):
    """A rollout engine (``steerinterp.generation.Engine``) that decodes the steered model with SAE features
    ablated at the SAE's hook. For a DiffSAE the reference run (``base_steering``, default unsteered) runs
    up to the hook's block on the same tokens with its own KV cache, for the difference the SAE reads."""

    name = "feature_ablation"
    cache_names = ("base", "steered")

    def __init__(self, model, sae, features: Sequence[int], *, difference: bool | None = None,
                 hook_name: str | None = None, base_steering=None, ablate_at: str = "all"):
        if is_bridge(model):
            raise architecture(model).refusal(
                "decoding with ablated SAE features", "it decodes with TransformerLens KV caches, which a "
                "TransformerBridge lacks; load the model with backend='hooked'")
        if ablate_at not in ABLATE_AT:
            raise SteerInterpError(f"ablate_at={ablate_at!r}; choose 'all' or 'completion'")
        self.hook = sae_hook_name(sae, hook_name)
        self.layer = layer_of(self.hook)
        if self.layer is None or self.hook not in model.hook_dict:
            raise SteerInterpError(f"cannot decode with an ablation at {self.hook!r}; it must be a hook inside a block")
        self.model, self.sae, self.features = model, sae, [int(f) for f in features]
        self.difference = isinstance(sae, DiffSAE) if difference is None else difference
        self.base_steering, self.ablate_at = as_steering(base_steering), ablate_at
        self.arch = architecture(model)

    def start(self, batch: int):
        super().start(batch)
        self._prefill = True

    def forward(self, ids, new_mask, full_mask):
        m = self.model
        ref = None
        if self.difference:
            got = {}

            def grab(act, hook):
                got["ref"] = act

            with self.steered(self.base_steering), hooks_applied(m, [(self.hook, grab)]):
                m(ids, attention_mask=new_mask, past_kv_cache=self.caches["base"], stop_at_layer=self.layer + 1)
            ref = got["ref"]
        mask = None
        if self.ablate_at == "completion" and self._prefill:  # of the prompt, only its last token predicts the completion
            mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
            mask[:, -1] = True
        self._prefill = False
        with self.steered(), hooks_applied(m, [(self.hook, ablation_hook(self.sae, self.features, ref, mask))]):
            resid = m(ids, attention_mask=new_mask, past_kv_cache=self.caches["steered"], stop_at_layer=m.cfg.n_layers)
        return final_logits(m, resid[:, -1:, :], self.arch)[:, 0, :]


@dataclass
class AblationAccuracyResult(AnalysisResult):
    """Accuracy of the base, the steered and the top-k-ablated steered model; ``evaluation`` holds every
    graded completion."""

    evaluation: object  # EvalResult, variants "base", "steered", "top-k"
    hook_name: str
    features: list[int]
    ks: list[int]

    def accuracy(self, variant: str, mode: str = "greedy") -> float:
        return self.evaluation.accuracy(variant, mode)

    def to_frame(self):
        return self.evaluation.to_frame()

    def plot(self, mode: str = "greedy"):
        import plotly.graph_objects as go

        acc = [self.accuracy(f"top-{k}", mode) for k in self.ks]
        fig = go.Figure(go.Scatter(x=[0] + self.ks, y=[self.accuracy("steered", mode)] + acc, mode="lines+markers",
                                   name="steered, top-k ablated"))
        fig.add_hline(y=self.accuracy("base", mode), line_dash="dash", annotation_text="base")
        fig.update_layout(title=f"{mode} accuracy with the top-k DiffSAE features at {self.hook_name} ablated",
                          xaxis_title="top-k features ablated", yaxis_title=f"{mode} accuracy")
        return fig


def ablation_accuracy(model: HookedModel, task, sae, features: Sequence[int], *, steering, ks: Sequence[int] | None = None,
                      base_steering=None, difference: bool | None = None, hook_name: str | None = None,
                      ablate_at: str = "all", problems=None, greedy: bool = True, samples: int = 0,
                      max_new_tokens: int = 32, seed: int = 0, progress: bool = False) -> AblationAccuracyResult:
    """The task's accuracy (its verifier) of the reference model (``base``), the steered model and the
    steered model with the top-k of ``features`` ablated for each k of ``ks`` (``ablate_features``'s
    arguments; greedy and/or ``samples`` sampled completions per problem, as ``evaluate``)."""
    from tqdm.auto import tqdm

    from steerinterp.tasks.evaluation import EvalResult, evaluate

    name, difference, features, ks = _setup(model, sae, features, steering, difference, hook_name, ks)
    kw = dict(problems=problems, greedy=greedy, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    result = EvalResult(task.name)
    runs = [("base", base_steering, "auto"), ("steered", steering, "auto")]
    runs += [(f"top-{k}", steering, FeatureAblationEngine(model, sae, features[:k], difference=difference, hook_name=name,
                                                          base_steering=base_steering, ablate_at=ablate_at)) for k in ks]
    for variant, vecs, engine in tqdm(runs, desc="ablation", disable=not progress):
        result.rows += evaluate(model, task, {variant: vecs}, engine=engine, **kw).rows
    return AblationAccuracyResult(result, name, features, ks)
