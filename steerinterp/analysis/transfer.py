"""Transfer: vectors trained on one model applied to another.

PAPER_NOTES section 4.7. Within a family (same architecture and width) the papers copy every
layer's vector unchanged and report, per recipient, the accuracy normalised as
``(acc_transfer - acc_base) / (acc_own - acc_base)``: 1 = as good as the recipient's own vectors,
0 = no better than its base model.

Beyond the papers, for models of different width: ``fit_residual_map`` fits an affine least-squares
map ``h_target ~ h_source W + c`` on paired residual activations of the same tokens, per layer pair,
and ``ResidualMap.apply`` carries vectors across with the linear part ``W`` only (a steering vector is
a difference of activations, so the offset ``c`` cancels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from steerinterp.analysis.batch import Batch, as_batch, run_cached
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.vectors import as_vector_dict
from steerinterp.errors import SteerInterpError
from steerinterp.steering.vectors import DEFAULT_HOOK, SteeringSet, SteeringVector, vector_dtype
from steerinterp.types import model_device, pad_token_id

UNSTEERED = "unsteered"


def transfer_vectors(vectors, recipient, *, layer_map: Mapping[int, int] | None = None) -> SteeringSet:
    """Copy vectors onto ``recipient`` (same block index unless ``layer_map``), checking shapes.

    A SteeringSet's vectors keep their hook (renumbered to the target block), scale and positions.
    """
    if isinstance(vectors, SteeringVector):
        vectors = SteeringSet([vectors])
    as_vector_dict(vectors)  # one vector per block, all at blocks
    items = ([(v.layer, v) for v in vectors] if isinstance(vectors, SteeringSet)
             else list(as_vector_dict(vectors).items()))
    out = []
    for layer, v in items:
        target = int(layer_map.get(layer, layer)) if layer_map else layer
        if not 0 <= target < recipient.cfg.n_layers:
            raise SteerInterpError(f"layer {target} does not exist in the recipient ({recipient.cfg.n_layers} layers); "
                                   "pass layer_map={donor_layer: recipient_layer}")
        t = v.vector.detach() if isinstance(v, SteeringVector) else v
        if t.shape[0] != recipient.cfg.d_model:
            raise SteerInterpError(f"the donor's vectors have width {t.shape[0]} but the recipient's d_model is "
                                   f"{recipient.cfg.d_model}; fit a map with fit_residual_map(donor, recipient, texts)")
        t = t.to(device=model_device(recipient), dtype=vector_dtype(recipient)).clone()
        if isinstance(v, SteeringVector):
            out.append(SteeringVector(t, f"blocks.{target}.{v.hook_name.split('.', 2)[2]}", v.scale, v.positions))
        else:
            out.append(SteeringVector(t, DEFAULT_HOOK.format(layer=target)))
    result = SteeringSet(out)
    result.validate(recipient)
    return result


@dataclass
class TransferResult(AnalysisResult):
    accuracy: object  # DataFrame: recipients x (UNSTEERED, donors...)
    mode: str
    per_problem: object = None  # DataFrame: recipient, donor, sample seed, problem, correct (for intervals)

    @property
    def normalised(self):
        """(acc_transfer - acc_base) / (acc_own - acc_base) per recipient row (NaN without an own vector)."""
        acc = self.accuracy
        out = acc.drop(columns=UNSTEERED).copy()
        for r in out.index:
            base = float(acc.loc[r, UNSTEERED])
            own = float(acc.loc[r, r]) if r in out.columns else float("nan")
            denom = own - base
            out.loc[r] = (acc.loc[r].drop(UNSTEERED) - base) / denom if abs(denom) > 1e-12 else float("nan")
        return out

    def to_frame(self):
        import pandas as pd

        acc, norm = self.accuracy, self.normalised
        rows = []
        for r in acc.index:
            rows.append({"recipient": r, "donor": UNSTEERED, "accuracy": float(acc.loc[r, UNSTEERED]), "normalised": 0.0})
            for d in norm.columns:
                rows.append({"recipient": r, "donor": d, "accuracy": float(acc.loc[r, d]), "normalised": float(norm.loc[r, d])})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        acc, norm = self.accuracy, self.normalised
        fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "normalised to the recipient's own vectors"))
        fig.add_trace(go.Heatmap(z=acc.values.tolist(), x=list(acc.columns), y=list(acc.index), texttemplate="%{z:.2f}",
                                 colorscale="Viridis", showscale=False), 1, 1)
        fig.add_trace(go.Heatmap(z=norm.values.tolist(), x=list(norm.columns), y=list(norm.index), texttemplate="%{z:.2f}",
                                 colorscale="RdBu", zmid=0, showscale=False), 1, 2)
        fig.update_xaxes(title_text="donor of the vectors")
        fig.update_yaxes(title_text="recipient model", col=1)
        fig.update_layout(title=f"transfer of steering vectors ({self.mode})")
        return fig


def transfer_grid(models: Mapping[str, object], vectors: Mapping[str, object], task, *, mode: str = "greedy",
                  samples: int = 4, problems=None, max_new_tokens: int = 32) -> TransferResult:
    """Accuracy of every donor's vectors (``vectors[name]``) on every recipient (``models[name]``);
    ``per_problem`` on the result keeps every graded completion's outcome, for intervals."""
    import pandas as pd

    from steerinterp.tasks.evaluation import evaluate

    if mode not in ("greedy", "sampled"):
        raise SteerInterpError(f"mode={mode!r}; choose 'greedy' or 'sampled'")
    kw = dict(problems=problems, greedy=mode == "greedy", samples=samples if mode == "sampled" else 0,
              max_new_tokens=max_new_tokens)
    if UNSTEERED in vectors:
        raise SteerInterpError(f"{UNSTEERED!r} names the recipients' own unsteered accuracy; call the donor something else")
    acc = pd.DataFrame(index=list(models), columns=[UNSTEERED, *vectors], dtype=float)
    rows = []
    for r, model in models.items():
        variants = {UNSTEERED: None, **{d: transfer_vectors(v, model) for d, v in vectors.items()}}
        res = evaluate(model, task, variants, **kw)
        for name in variants:
            acc.loc[r, name] = res.accuracy(name, mode)
        d = res.details()
        rows.append(d[d["mode"] == mode][["variant", "seed", "problem", "correct"]]
                    .rename(columns={"variant": "donor"}).assign(recipient=r))
    return TransferResult(acc, mode, pd.concat(rows, ignore_index=True))


def fit_linear_map(x: Float[torch.Tensor, "n d_in"], y: Float[torch.Tensor, "n d_out"], *, ridge: float = 0.0):
    """Least squares ``y ~ x W + c`` (ridge on W). Returns ``(W [d_in, d_out], c [d_out], r2)`` in float64."""
    if x.shape[0] != y.shape[0]:
        raise SteerInterpError(f"{x.shape[0]} source rows but {y.shape[0]} target rows")
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.lstsq(gram, xc.T @ yc).solution
    c = my - mx @ w
    resid = yc - xc @ w
    r2 = 1 - float(resid.pow(2).sum() / yc.pow(2).sum().clamp_min(1e-30))
    return w, c, r2


@dataclass
class ResidualMap(AnalysisResult):
    """Per layer pair (source -> target): a linear map of residual-stream vectors, with its fit quality."""

    pairs: dict[int, int]
    weights: dict[int, torch.Tensor]
    offsets: dict[int, torch.Tensor]
    r2: dict[int, float]
    n_tokens: int

    def apply(self, vectors, recipient) -> SteeringSet:
        """Map ``{source_layer: vector}`` to a SteeringSet for ``recipient`` at the paired layers."""
        out = {}
        for layer, v in as_vector_dict(vectors).items():
            if layer not in self.weights:
                raise SteerInterpError(f"no map was fitted for source layer {layer} (fitted: {sorted(self.weights)})")
            w = self.weights[layer]
            out[self.pairs[layer]] = (v.double().cpu() @ w).to(torch.float32)
        return SteeringSet.from_tensors(recipient, out)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"source_layer": list(self.pairs), "target_layer": list(self.pairs.values()),
                             "r2": [self.r2[s] for s in self.pairs]})

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=[f"{s}->{t}" for s, t in zip(df.source_layer, df.target_layer)], y=df.r2))
        fig.update_layout(title=f"least-squares residual map: R^2 per layer pair ({self.n_tokens} tokens)",
                          yaxis_title="R^2", xaxis_title="source -> target layer")
        return fig


def default_layer_pairs(source, target) -> dict[int, int]:
    """Layer l of the source to the target layer at the same relative depth."""
    ls, lt = source.cfg.n_layers, target.cfg.n_layers
    return {layer: round(layer * (lt - 1) / max(ls - 1, 1)) for layer in range(ls)}


@torch.no_grad()
def fit_residual_map(source, target, inputs, *, pairs: Mapping[int, int] | None = None, ridge: float = 1e-3,
                     batch_size: int = 8) -> ResidualMap:
    """Fit ``resid_post`` maps from ``source`` to ``target`` on the same tokens.

    ``inputs``: plain strings or a ``Batch`` / ``GenerationOutput``. Both models must tokenise the
    same way, so that positions pair up (checked for strings; for a batch, the vocabulary sizes).
    """
    same = source.cfg.d_vocab == target.cfg.d_vocab
    if isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str):
        texts = list(inputs)
        same = same and source.tokenizer(texts)["input_ids"] == target.tokenizer(texts)["input_ids"]
        inputs = _text_batch(source, texts)
    if not same:
        raise SteerInterpError("the two models tokenise differently; a residual map needs the same tokens in both")
    batch = as_batch(inputs, source)
    pairs = dict(default_layer_pairs(source, target) if pairs is None else {int(k): int(v) for k, v in pairs.items()})
    xs: dict[int, list] = {s: [] for s in pairs}
    ys: dict[int, list] = {s: [] for s in pairs}
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        real = chunk.attention_mask.bool()
        _, cs = run_cached(source, chunk, None, [f"blocks.{s}.hook_resid_post" for s in pairs])
        _, ct = run_cached(target, chunk.to(model_device(target)), None,
                           sorted({f"blocks.{t}.hook_resid_post" for t in pairs.values()}))
        for s, t in pairs.items():
            xs[s].append(cs[f"blocks.{s}.hook_resid_post"][real].double().cpu())
            ys[s].append(ct[f"blocks.{t}.hook_resid_post"][real.to(ct[f'blocks.{t}.hook_resid_post'].device)].double().cpu())
    weights, offsets, r2 = {}, {}, {}
    n = 0
    for s in pairs:
        x, y = torch.cat(xs[s]), torch.cat(ys[s])
        n = x.shape[0]
        weights[s], offsets[s], r2[s] = fit_linear_map(x, y, ridge=ridge)
    return ResidualMap(pairs, weights, offsets, r2, n)


def _text_batch(model, texts: Sequence[str]):
    """A batch of plain texts (all prompt, no completion)."""
    from steerinterp.generation.decode import encode_prompts, left_pad

    ids, _ = encode_prompts(model, list(texts))
    tokens, mask = left_pad(ids, pad_token_id(model.tokenizer), model_device(model))
    return Batch(tokens, mask, mask.bool(), torch.zeros_like(mask, dtype=torch.bool))
