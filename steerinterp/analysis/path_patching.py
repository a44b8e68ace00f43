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

Both steps start at the first block a sender (or receiver) sits in, from the reference run's cached
residual: the blocks before it are the reference run's, the same operations giving the same values.
The metric reads the logits only at the positions it needs: ``token_logprob_metric`` and
``completion_logprob_metric`` are ``LogitMetric``s, evaluated from the final residual
``position_chunk`` positions at a time; any other callable gets the full logits one sequence at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.architecture import architecture, final_logits
from steerinterp.analysis.batch import Batch, as_batch, budget_rows, entering, rows_per_forward, run_blocks, selected_chunks
from steerinterp.analysis.block_patching import block_hook
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError

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

    def hook_in(self, model) -> str:
        """The hook of this node in ``model``: queries and keys where the attention scores read them (after
        the q/k norms and the rotation on a rotary model: ``hook_rot_q`` / ``hook_rot_k``, as block patching)."""
        if self.kind in ("q", "k"):
            return block_hook(self.layer, self.kind, model)
        return self.hook

    def __str__(self) -> str:
        if self.kind == "logits":
            return "logits"
        idx = "" if self.index is None else f".{self.index}"
        return f"{self.kind}{self.layer}{idx}"


class LogitMetric:
    """A per-sequence metric that reads the logits at some positions only, so that path patching can
    unembed just those positions, a chunk at a time: ``value[row] = finish(sum over the row's selected
    positions of term(logits at the position))``.

    ``select(batch)``: the [batch, pos] mask of the positions read; ``term(logits [n, vocab], batch, rows,
    positions)``: float64 values [n]; ``finish(sums [batch], batch)`` (default: the sums). Calling the
    metric on full logits ``[batch, pos, vocab]`` gives the same values (the plain metric interface).
    """

    def __init__(self, name: str, select: Callable, term: Callable, finish: Callable | None = None):
        self.__name__ = name
        self.select, self.term = select, term
        self.finish = finish if finish is not None else (lambda sums, batch: sums)

    def add(self, sums: torch.Tensor, logits: torch.Tensor, batch: Batch, rows: torch.Tensor, pos: torch.Tensor) -> None:
        """Add the terms of the positions ``(rows, pos)`` (logits ``[n, vocab]``) to ``sums`` [batch] in place."""
        sums.index_add_(0, rows.to(sums.device), self.term(logits, batch, rows, pos).to(sums.device, torch.float64))

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        mask = self.select(batch).to(logits.device)
        rows, pos = mask.nonzero(as_tuple=True)
        sums = torch.zeros(mask.shape[0], dtype=torch.float64, device=logits.device)
        self.add(sums, logits[rows, pos], batch, rows, pos)
        return self.finish(sums, batch)


def token_logprob_metric(token: int, positions: str = "first") -> LogitMetric:
    """Metric: mean log-probability of ``token`` per sequence at the chosen positions (``first`` / ``completion``)."""
    def term(logits, batch, rows, pos):
        return torch.log_softmax(logits.double(), -1)[:, token]

    def finish(sums, batch):
        return sums / batch.positions(positions).to(sums.device).sum(-1).clamp_min(1)

    return LogitMetric(f"logprob[{token}]@{positions}", lambda batch: batch.positions(positions), term, finish)


def completion_logprob_metric() -> LogitMetric:
    """Metric: summed log-probability of each sequence's completion tokens (teacher-forced), e.g. of the
    reference answer when the batch's completions are the references."""
    def term(logits, batch, rows, pos):
        target = batch.tokens.to(logits.device)[rows.to(logits.device), pos.to(logits.device) + 1]
        return torch.log_softmax(logits.double(), -1).gather(-1, target[:, None])[:, 0]

    return LogitMetric("completion_logprob", lambda batch: batch.predicting_mask, term)


def metric_values(model, final: torch.Tensor, batch: Batch, metric: Callable, position_chunk: int = 128) -> torch.Tensor:
    """``metric`` per sequence of the logits read from the final residual ``final`` [batch, pos, d_model]
    (``ln_final``, the unembedding and the logit soft-cap, no hooks), float64 [batch]. A ``LogitMetric``
    unembeds only its positions, ``position_chunk`` at a time; another callable gets full logits one
    sequence at a time."""
    arch = architecture(model)
    if isinstance(metric, LogitMetric):
        sums = torch.zeros(len(batch), dtype=torch.float64, device=final.device)
        for rows, pos in selected_chunks(metric.select(batch).to(final.device), position_chunk):
            logits = final_logits(model, final[rows, pos], arch)
            metric.add(sums, logits, batch, rows, pos)
            del logits
        return metric.finish(sums, batch).double().cpu()
    out = []
    for r in range(len(batch)):
        logits = final_logits(model, final[r : r + 1], arch)
        out.append(metric(logits, batch.rows(slice(r, r + 1))).double().reshape(-1).cpu())
        del logits
    return torch.cat(out)


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
    """Hooks of step 1: freeze non-senders to the reference, senders from the new run, record receivers.

    ``ref`` / ``new`` hold the activations of the reference and the new run (this chunk of sequences) that
    the hooks read: every head's ``z`` (and MLP output, with ``freeze_mlps``) from block ``start`` on, the
    senders' own activations from the new run."""

    def __init__(self, model, sender_sets, receivers, ref, new, n_rows, freeze_mlps, start):
        self.sets, self.receivers, self.ref, self.new, self.n = sender_sets, receivers, ref, new, n_rows
        self.freeze_mlps, self.model, self.start = freeze_mlps, model, start
        self.recorded: dict[Node, torch.Tensor] = {}

    def _tile(self, cache, name, like):
        return cache[name].to(like.dtype).repeat(len(self.sets), *([1] * (like.dim() - 1)))

    def hook_z(self, layer):
        name = f"blocks.{layer}.attn.hook_z"  # not hook.name: a TransformerBridge names the aliased hook point

        def fn(act, hook):
            out = self._tile(self.ref, name, act)
            for p, senders in enumerate(self.sets):
                for s in senders:
                    if s.kind == "z" and s.layer == layer:
                        out[p * self.n : (p + 1) * self.n, :, s.index] = self.new[name][:, :, s.index].to(act.dtype)
            return out

        return fn

    def hook_mlp(self, layer):
        name = f"blocks.{layer}.hook_mlp_out"

        def fn(act, hook):
            for r in self.receivers:
                if r.kind == "mlp_in" and r.layer == layer:
                    self.recorded[r] = act.clone()
            if not self.freeze_mlps and not any(s.kind == "mlp" and s.layer == layer for ss in self.sets for s in ss):
                return None
            out = self._tile(self.ref, name, act) if self.freeze_mlps else act.clone()
            for p, senders in enumerate(self.sets):
                if any(s.kind == "mlp" and s.layer == layer for s in senders):
                    out[p * self.n : (p + 1) * self.n] = self.new[name].to(act.dtype)
            return out

        return fn

    def hook_resid(self, layer):
        name = f"blocks.{layer}.hook_resid_post"

        def fn(act, hook):
            out = act.clone()
            for p, senders in enumerate(self.sets):
                if any(s.kind == "resid" and s.layer == layer for s in senders):
                    out[p * self.n : (p + 1) * self.n] = self.new[name].to(act.dtype)
            return out

        return fn

    def record(self, node):
        def fn(act, hook):
            self.recorded[node] = act[:, :, node.index].clone()
            return None

        return fn

    def hooks(self):
        blocks = range(self.start, self.model.cfg.n_layers)
        pairs = [(r.hook_in(self.model), self.record(r)) for r in self.receivers if r.kind in ("q", "k", "v")]
        pairs += [(f"blocks.{x}.attn.hook_z", self.hook_z(x)) for x in blocks]
        pairs += [(f"blocks.{x}.hook_mlp_out", self.hook_mlp(x)) for x in blocks]
        resid_layers = sorted({s.layer for ss in self.sets for s in ss if s.kind == "resid"})
        pairs += [(f"blocks.{x}.hook_resid_post", self.hook_resid(x)) for x in resid_layers]
        return pairs


def _step2_hooks(model, recorded: dict[Node, torch.Tensor]):
    def patch(node):
        def fn(act, hook):
            out = act.clone()
            if node.kind == "mlp_in":
                out[:] = recorded[node]
            else:
                out[:, :, node.index] = recorded[node]
            return out

        return fn

    return [(n.hook_in(model), patch(n)) for n in recorded]


def _repeat(batch: Batch, n: int) -> Batch:
    return Batch(*(t.repeat(n, 1) for t in (batch.tokens, batch.attention_mask, batch.prompt_mask, batch.completion_mask)))


def _tiled(cache: dict, name: str, n: int) -> torch.Tensor:
    return cache[name].repeat(n, *([1] * (cache[name].dim() - 1)))


@torch.no_grad()
def path_patch(model, inputs, senders: Sequence[Node | Sequence[Node]], receivers: Sequence[Node],
               metric: Callable[[torch.Tensor, Batch], torch.Tensor], *, new_steering=None, ref_steering=None,
               freeze_mlps: bool = True, batch_size: int | None = None, sender_chunk: int | None = None,
               position_chunk: int = 128) -> PathPatchingResult:
    """Path-patch each sender set (a Node or a list of Nodes) to the receivers; see the module docstring.

    ``new_steering`` / ``ref_steering``: the steering of the new and the reference run (the new run is
    usually the steered model, the reference the base model).

    Memory: ``batch_size`` sequences at a time (default: ``rows_per_forward``); ``sender_chunk`` sender sets
    stacked per forward (default: as many as keep the stacked rows within ``budget_rows``); the metric's
    read-out ``position_chunk`` positions at a time. Only the activations the hooks read are cached. None of
    the three changes a value.
    """
    batch = as_batch(inputs, model)
    n_layers = model.cfg.n_layers
    sets = [[s] if isinstance(s, Node) else list(s) for s in senders]
    for s in (x for ss in sets for x in ss):
        if s.kind not in SENDERS or not 0 <= s.layer < n_layers:
            raise SteerInterpError(f"sender {s} is not a head / mlp / resid node of this model")
    receivers = list(receivers)
    for r in receivers:
        if r.kind not in RECEIVERS or (r.kind != "logits" and not 0 <= r.layer < n_layers):
            raise SteerInterpError(f"receiver {r} is not a q / k / v / mlp_in / logits node of this model")
    if any(r.kind == "logits" for r in receivers) and len(receivers) > 1:
        raise SteerInterpError("Node.logits() is the whole output; give it as the only receiver")
    if not sets or not receivers:
        raise SteerInterpError("give at least one sender and one receiver")
    to_logits = receivers[0].kind == "logits"
    # step 1 starts at the first block holding a sender or a receiver, step 2 at the first receiver's block
    start = min([s.layer for ss in sets for s in ss] + [r.layer for r in receivers if r.kind != "logits"])
    start2 = None if to_logits else min(r.layer for r in receivers)
    frozen = [f"blocks.{x}.attn.hook_z" for x in range(start, n_layers)]
    frozen += [f"blocks.{x}.hook_mlp_out" for x in range(start, n_layers)] if freeze_mlps else []
    ref_names = set(frozen) | {entering(x) for x in (start, start2) if x}
    new_names = {s.hook for ss in sets for s in ss}
    step = rows_per_forward(model, batch, batch_size)
    values = torch.zeros(len(sets), dtype=torch.float64)
    ref_total = new_total = 0.0
    for c_start in range(0, len(batch), step):
        chunk = batch.rows(slice(c_start, c_start + step))
        ref_final, ref = run_blocks(model, chunk, ref_steering, sorted(ref_names))
        ref_total += float(metric_values(model, ref_final, chunk, metric, position_chunk).sum())
        del ref_final
        new_final, new = run_blocks(model, chunk, new_steering, sorted(new_names))
        new_total += float(metric_values(model, new_final, chunk, metric, position_chunk).sum())
        del new_final
        per_forward = sender_chunk or max(1, budget_rows(model, chunk.tokens.shape[1]) // len(chunk))
        for c0 in range(0, len(sets), per_forward):
            group = sets[c0 : c0 + per_forward]
            stacked = _repeat(chunk, len(group))
            step1 = _Step1(model, group, receivers, ref, new, len(chunk), freeze_mlps, start)
            final, _ = run_blocks(model, stacked, ref_steering, hooks=step1.hooks(), start=start,
                                  resid=_tiled(ref, entering(start), len(group)) if start else None)
            silent = [r for r in receivers if r.kind != "logits" and r not in step1.recorded]
            if silent:
                raise SteerInterpError(f"receiver {silent[0]}'s hook {silent[0].hook_in(model)} did not run in this "
                                       "model's forward; path patching cannot record it")
            if not to_logits:
                del final
                final, _ = run_blocks(model, stacked, ref_steering, hooks=_step2_hooks(model, step1.recorded), start=start2,
                                      resid=_tiled(ref, entering(start2), len(group)) if start2 else None)
            del step1
            vals = metric_values(model, final, stacked, metric, position_chunk)
            del final
            values[c0 : c0 + len(group)] += vals.reshape(len(group), len(chunk)).sum(-1)
        del ref, new
    n = len(batch)
    return PathPatchingResult([" + ".join(map(str, ss)) for ss in sets], [str(r) for r in receivers], values / n,
                              ref_total / n, new_total / n, getattr(metric, "__name__", "metric"))
