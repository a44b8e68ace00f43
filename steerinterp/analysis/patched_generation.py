"""Generation with a patched block, for the accuracy of each patching configuration.

Each decoding step runs the base model and (for routed patches) the unpatched steered model on the
same tokens up to the patched block, each with its own KV cache, then the steered model with the
block's activations patched from them. Every configuration thus decodes with KV caches, as fast as
two or three ordinary decoding passes, and its completions are graded by the task's verifier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerinterp.analysis.architecture import architecture, final_logits
from steerinterp.analysis.block_patching import SOURCE_KEYS, Patch, PatchHooks, block_hook, check_layer, patch_figure
from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.generation.engines import MultiCacheEngine
from steerinterp.steering.hooks import hooks_applied
from steerinterp.types import is_bridge


def _check_backend(model) -> None:
    if is_bridge(model):
        raise architecture(model).refusal(
            "patched generation", "it decodes with TransformerLens KV caches, which a TransformerBridge lacks; "
            "load the model with backend='hooked'")


class PatchedEngine(MultiCacheEngine):
    """A rollout engine (the ``steerinterp.generation.Engine`` protocol) that applies one ``Patch`` at block ``layer``."""

    name = "patched"
    cache_names = ("base", "steered", "patched")

    def __init__(self, model, layer: int, patch: Patch):
        if patch.base_run:
            raise SteerInterpError("the 'base' configuration is the unsteered model; generate without steering instead")
        _check_backend(model)
        self.arch = architecture(model)
        self.model, self.layer, self.patch = model, layer, patch
        self.hooks = PatchHooks(layer, [patch], model)
        self._need_steered = patch.path != "both" and patch.touches_attention

    def _sources(self, ids, new_mask, which: str, steered: bool) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}

        def grab(key):
            def fn(act, hook):
                got[key] = act
                return None

            return fn

        pairs = [(block_hook(self.layer, k, self.model), grab(k)) for k in SOURCE_KEYS]
        with (self.steered() if steered else contextlib.nullcontext()), hooks_applied(self.model, pairs):
            self.model(ids, attention_mask=new_mask, past_kv_cache=self.caches[which], stop_at_layer=self.layer + 1)
        return got

    def forward(self, ids, new_mask, full_mask):
        m = self.model
        base = self._sources(ids, new_mask, "base", steered=False)
        steered = self._sources(ids, new_mask, "steered", steered=True) if self._need_steered else base
        self.hooks.set_sources(base, steered)
        with self.steered(), hooks_applied(m, self.hooks.hooks()):
            resid = m(ids, attention_mask=new_mask, past_kv_cache=self.caches["patched"], stop_at_layer=m.cfg.n_layers)
        return final_logits(m, resid[:, -1:, :], self.arch)[:, 0, :]


@dataclass
class PatchedAccuracyResult(AnalysisResult):
    """Accuracy per patch; ``evaluation`` holds every graded completion (``details()``)."""

    evaluation: object  # EvalResult, variant = patch name
    layer: int

    def to_frame(self):
        return self.evaluation.to_frame()

    def accuracy(self, patch: str, mode: str = "greedy") -> float:
        return self.evaluation.accuracy(patch, mode)

    def plot(self, mode: str = "greedy", *, prefix: str = "skip_head["):
        """Accuracy per head-level patch with reference lines (steered, Skip-Attn, Skip-Layer, base)."""
        col = "greedy_acc" if mode == "greedy" else "sampled_acc"
        df = self.to_frame()
        if col not in df.columns:
            raise SteerInterpError(f"no {mode} evaluation in this result")
        return patch_figure(dict(zip(df["variant"], df[col])), prefix, f"{mode} accuracy",
                            f"accuracy with block {self.layer} patched ({mode})")


def patched_accuracy(model, task, steering, patches: Sequence[Patch], *, layer: int | None = None, problems=None,
                     greedy: bool = True, samples: int = 0, max_new_tokens: int = 32, seed: int = 0, progress: bool = True):
    """Held-out accuracy of the steered model under each patch (graded by the task's verifier)."""
    from tqdm.auto import tqdm

    from steerinterp.tasks.evaluation import EvalResult, evaluate

    layer = check_layer(model, steering, layer)
    if any(not p.base_run and p != Patch(p.name) for p in patches):
        _check_backend(model)
    result = EvalResult(task.name)
    kw = dict(problems=problems, greedy=greedy, samples=samples, max_new_tokens=max_new_tokens, seed=seed)
    for patch in tqdm(list(patches), desc="patched generation", disable=not progress):
        if patch.base_run:
            res = evaluate(model, task, {patch.name: None}, **kw)
        elif patch == Patch(patch.name):  # nothing patched: the steered model
            res = evaluate(model, task, {patch.name: steering}, **kw)
        else:
            res = evaluate(model, task, {patch.name: steering}, engine=PatchedEngine(model, layer, patch), **kw)
        result.rows += res.rows
    return PatchedAccuracyResult(result, layer)
