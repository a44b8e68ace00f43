"""General path patching: the effect of sender nodes on receiver nodes along direct paths only.

The field's two-step recipe (Wang et al. 2022, "Interpretability in the Wild"), with a *reference*
run (default: unsteered) and a *new* run (default: steered) on the same tokens:

1. Run the reference with every attention head's output (``hook_z``) frozen to its reference value
   (and every MLP output too, with ``freeze_mlps=True``), except the senders, which take their values
   from the new run. Record what the receivers compute from that residual stream.
2. Run the reference again with only the receivers' activations replaced by the recorded ones, and
   evaluate the metric on its logits (for the receiver ``Node.logits()``, step 1's final residual is
   read out directly).

Nodes: senders ``Node.head(l, h)`` (its ``z``), ``Node.mlp(l)``, ``Node.resid(l)`` (the residual after
block l, e.g. where a steering vector enters); receivers ``Node.q(l, h)``, ``Node.k(l, g)``,
``Node.v(l, g)`` (key-value group under GQA), ``Node.mlp_in(l)`` and ``Node.logits()``. Patching a
receiver's query / key / value (or MLP output) with the value computed from the patched residual is
patching its input. Many sender sets are swept in one batched forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.batch import Batch, as_batch, run_cached, steering_context
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.steering.vectors import add_hooks

SENDERS = ("z", "mlp", "resid")
RECEIVERS = ("q", "k", "v", "mlp_in", "logits")
_HOOK = {"z": "attn.hook_z", "mlp": "hook_mlp_out", "resid": "hook_resid_post", "q": "attn.hook_q",
         "k": "attn.hook_k", "v": "attn.hook_v", "mlp_in": "hook_mlp_out"}


@dataclass(frozen=True)
class Node:
    kind: str
    layer: int = -1
    index: int | None = None

    @classmethod
    def head(cls, layer: int, head: int) -> Node:
        return cls("z", layer, head)

    @classmethod
    def mlp(cls, layer: int) -> Node:
        return cls("mlp", layer)

    @classmethod
    def resid(cls, layer: int) -> Node:
        return cls("resid", layer)

    @classmethod
    def q(cls, layer: int, head: int) -> Node:
        return cls("q", layer, head)

    @classmethod
    def k(cls, layer: int, group: int) -> Node:
        return cls("k", layer, group)

    @classmethod
    def v(cls, layer: int, group: int) -> Node:
        return cls("v", layer, group)

    @classmethod
    def mlp_in(cls, layer: int) -> Node:
        return cls("mlp_in", layer)

    @classmethod
    def logits(cls) -> Node:
        return cls("logits")

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{_HOOK[self.kind]}"

    def __str__(self) -> str:
        if self.kind == "logits":
            return "logits"
        idx = "" if self.index is None else f".{self.index}"
        return f"{self.kind}{self.layer}{idx}"


def token_logprob_metric(token: int, positions: str = "first") -> Callable:
    """Metric: mean log-probability of ``token`` per sequence at the chosen positions (``first`` / ``completion``)."""
    def metric(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        sel = batch.positions(positions).to(logits.device)
        lp = torch.log_softmax(logits.double(), -1)[..., token]
        return (lp * sel).sum(-1) / sel.sum(-1).clamp_min(1)

    metric.__name__ = f"logprob[{token}]@{positions}"
    return metric


def completion_logprob_metric() -> Callable:
    """Metric: summed log-probability of each sequence's completion tokens (teacher-forced), e.g. of the
    reference answer when the batch's completions are the references."""
    def metric(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        lp = torch.log_softmax(logits[:, :-1].double(), -1)
        target = batch.tokens[:, 1:].to(logits.device)
        picked = lp.gather(-1, target[..., None])[..., 0]
        return (picked * batch.predicting_mask[:, :-1].to(logits.device)).sum(-1)

    metric.__name__ = "completion_logprob"
    return metric


@dataclass
class PathPatchingResult(AnalysisResult):
    senders: list[str]
    receivers: list[str]
    values: torch.Tensor  # [n_sender_sets] metric after patching, mean over sequences
    reference: float  # metric of the reference run
    new: float  # metric of the new run
    metric: str

    @property
    def normalised(self) -> torch.Tensor:
        """(value - reference) / (new - reference): the share of the full effect carried by the path."""
        d = self.new - self.reference
        return (self.values - self.reference) / d if abs(d) > 1e-12 else torch.full_like(self.values, float("nan"))

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"senders": self.senders, "value": self.values.tolist(), "normalised": self.normalised.tolist()})

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        heads = df["senders"].str.fullmatch(r"z\d+\.\d+")
        if heads.all() and len(df) > 1:  # a layer x head grid
            parts = df["senders"].str.extract(r"z(\d+)\.(\d+)").astype(int)
            z = df.assign(layer=parts[0], head=parts[1]).pivot(index="layer", columns="head", values="normalised")
            fig = go.Figure(go.Heatmap(z=z.values.tolist(), x=list(z.columns), y=list(z.index), colorscale="RdBu", zmid=0))
            fig.update_yaxes(autorange="reversed", title_text="layer")
            fig.update_xaxes(title_text="head")
        else:
            fig = go.Figure(go.Bar(x=df["senders"], y=df["normalised"]))
        fig.update_layout(title=f"path patching -> {', '.join(self.receivers)} ({self.metric}, normalised)")
        return fig


class _Step1:
    """Hooks of step 1: freeze non-senders to the reference, senders from the new run, record receivers."""

    def __init__(self, model, sender_sets, receivers, ref, new, n_rows, freeze_mlps):
        self.sets, self.receivers, self.ref, self.new, self.n = sender_sets, receivers, ref, new, n_rows
        self.freeze_mlps, self.model = freeze_mlps, model
        self.recorded: dict[Node, torch.Tensor] = {}
        self.final: torch.Tensor | None = None  # the last block's residual (receiver: logits)

    def _tile(self, cache, name, like):
        return cache[name].to(like.dtype).repeat(len(self.sets), *([1] * (like.dim() - 1)))

    def hook_z(self, layer):
        def fn(act, hook):
            out = self._tile(self.ref, hook.name, act)
            for p, senders in enumerate(self.sets):
                for s in senders:
                    if s.kind == "z" and s.layer == layer:
                        out[p * self.n : (p + 1) * self.n, :, s.index] = self.new[hook.name][:, :, s.index].to(act.dtype)
            return out

        return fn

    def hook_mlp(self, layer):
        def fn(act, hook):
            for r in self.receivers:
                if r.kind == "mlp_in" and r.layer == layer:
                    self.recorded[r] = act.clone()
            if not self.freeze_mlps and not any(s.kind == "mlp" and s.layer == layer for ss in self.sets for s in ss):
                return None
            out = self._tile(self.ref, hook.name, act) if self.freeze_mlps else act.clone()
            for p, senders in enumerate(self.sets):
                if any(s.kind == "mlp" and s.layer == layer for s in senders):
                    out[p * self.n : (p + 1) * self.n] = self.new[hook.name].to(act.dtype)
            return out

        return fn

    def hook_resid(self, layer):
        def fn(act, hook):
            out = act.clone()
            for p, senders in enumerate(self.sets):
                if any(s.kind == "resid" and s.layer == layer for s in senders):
                    out[p * self.n : (p + 1) * self.n] = self.new[hook.name].to(act.dtype)
            return out

        return fn

    def record(self, node):
        def fn(act, hook):
            self.recorded[node] = act[:, :, node.index].clone()
            return None

        return fn

    def hooks(self):
        n_layers = self.model.cfg.n_layers
        pairs = [(r.hook, self.record(r)) for r in self.receivers if r.kind in ("q", "k", "v")]
        pairs += [(f"blocks.{x}.attn.hook_z", self.hook_z(x)) for x in range(n_layers)]
        pairs += [(f"blocks.{x}.hook_mlp_out", self.hook_mlp(x)) for x in range(n_layers)]
        resid_layers = sorted({s.layer for ss in self.sets for s in ss if s.kind == "resid"})
        pairs += [(f"blocks.{x}.hook_resid_post", self.hook_resid(x)) for x in resid_layers]
        pairs.append((f"blocks.{n_layers - 1}.hook_resid_post", self.keep_final))
        return pairs

    def keep_final(self, act, hook):
        self.final = act
        return None


def _step2_hooks(recorded: dict[Node, torch.Tensor]):
    def patch(node):
        def fn(act, hook):
            out = act.clone()
            if node.kind == "mlp_in":
                out[:] = recorded[node]
            else:
                out[:, :, node.index] = recorded[node]
            return out

        return fn

    return [(n.hook, patch(n)) for n in recorded]


@torch.no_grad()
def path_patch(model, inputs, senders: Sequence[Node | Sequence[Node]], receivers: Sequence[Node],
               metric: Callable[[torch.Tensor, Batch], torch.Tensor], *, new_steering=None, ref_steering=None,
               freeze_mlps: bool = True, batch_size: int = 4, sender_chunk: int = 16) -> PathPatchingResult:
    """Path-patch each sender set (a Node or a list of Nodes) to the receivers; see the module docstring.

    ``new_steering`` / ``ref_steering``: the steering of the new and the reference run (the new run is
    usually the steered model, the reference the base model).
    """
    batch = as_batch(inputs)
    sets = [[s] if isinstance(s, Node) else list(s) for s in senders]
    for s in (x for ss in sets for x in ss):
        if s.kind not in SENDERS or not 0 <= s.layer < model.cfg.n_layers:
            raise SteerInterpError(f"sender {s} is not a head / mlp / resid node of this model")
    receivers = list(receivers)
    for r in receivers:
        if r.kind not in RECEIVERS or (r.kind != "logits" and not 0 <= r.layer < model.cfg.n_layers):
            raise SteerInterpError(f"receiver {r} is not a q / k / v / mlp_in / logits node of this model")
    if any(r.kind == "logits" for r in receivers) and len(receivers) > 1:
        raise SteerInterpError("Node.logits() is the whole output; give it as the only receiver")
    names = [f"blocks.{x}.{h}" for x in range(model.cfg.n_layers) for h in ("attn.hook_z", "hook_mlp_out", "hook_resid_post")]
    values = torch.zeros(len(sets), dtype=torch.float64)
    ref_total = new_total = 0.0
    for start in range(0, len(batch), batch_size):
        chunk = batch.rows(slice(start, start + batch_size))
        ref_logits, ref = run_cached(model, chunk, ref_steering, names, logits=True)
        new_logits, new = run_cached(model, chunk, new_steering, names, logits=True)
        ref_total += float(metric(ref_logits, chunk).sum())
        new_total += float(metric(new_logits, chunk).sum())
        for c0 in range(0, len(sets), sender_chunk):
            group = sets[c0 : c0 + sender_chunk]
            stacked = Batch(*(t.repeat(len(group), 1) for t in (chunk.tokens, chunk.attention_mask, chunk.prompt_mask,
                                                                 chunk.completion_mask)))
            step1 = _Step1(model, group, receivers, ref, new, len(chunk), freeze_mlps)
            with steering_context(model, ref_steering, stacked), add_hooks(model, step1.hooks()):
                model(stacked.tokens, attention_mask=stacked.attention_mask, return_type=None)
            if receivers[0].kind == "logits":
                logits = model.unembed(model.ln_final(step1.final))
            else:
                with steering_context(model, ref_steering, stacked), add_hooks(model, _step2_hooks(step1.recorded)):
                    logits = model(stacked.tokens, attention_mask=stacked.attention_mask)
            vals = metric(logits, stacked).double().reshape(len(group), len(chunk)).sum(-1).cpu()
            values[c0 : c0 + len(group)] += vals
    n = len(batch)
    return PathPatchingResult([" + ".join(map(str, ss)) for ss in sets], [str(r) for r in receivers], values / n,
                              ref_total / n, new_total / n, getattr(metric, "__name__", "metric"))
