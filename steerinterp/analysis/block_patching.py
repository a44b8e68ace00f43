"""Patching inside the block after a steered layer: which parts of that block carry the steering effect.

PAPER_NOTES sections 4.5 and 8.6 (the penultimate-layer circuit). With a vector at layer L-2, the last
block sees ``h + s`` in the steered run and ``h`` in the base run. Each ``Patch`` takes some of that
block's activations from the base run while the residual stream keeps ``s``:

* ``no_patch`` (the steered model), ``base`` (the unsteered model);
* ``skip_attn``: the block's attention output from the base run; ``skip_layer``: attention and MLP
  outputs from the base run, so ``s`` reaches the unembedding only along the residual stream (for a
  penultimate vector: the unsteered last block with ``s`` added before ``ln_final``);
* ``skip_head[h]``: head h's ``z`` from the base run; ``steer_head[h]``: every other head's ``z`` from the
  base run (only head h sees the vector);
* ``q[h]`` / ``k[g]`` / ``v[g]``: a query head's queries, or a key-value group's keys / values (GQA);
* ``path="mlp"`` / ``"resid"``: the patched attention output reaches only the MLP (the residual keeps
  the steered attention output), or only the residual stream (the MLP sees the steered one).

``block_patching`` measures each patch as the papers do: the share of the steering effect it removes,
``effect_lost`` = KL(steered || patched) / KL(steered || base) (0 = nothing removed, 1 = the base
model); the earlier variant ``retained`` = KL(patched || base) / KL(steered || base) stays a column.

The patches of a sweep run as stacked copies of the batch through the patched block and the blocks
after it, starting from the steered residual at the block's input (the blocks before run once),
``patch_chunk`` patches per forward so that memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from steerinterp.analysis.architecture import architecture
from steerinterp.analysis.batch import Batch, as_batch, budget_rows, rows_per_forward, run_blocks
from steerinterp.analysis.readout import final_logprobs
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_ids
from steerinterp.errors import SteerInterpError
from steerinterp.steering.protocol import as_steering

PATHS = ("both", "mlp", "resid")


@dataclass(frozen=True)
class Patch:
    """Which activations of the patched block come from the base run (see the module docstring)."""

    name: str
    z_heads: tuple[int, ...] = ()
    q_heads: tuple[int, ...] = ()
    k_groups: tuple[int, ...] = ()
    v_groups: tuple[int, ...] = ()
    attn: bool = False
    mlp: bool = False
    path: str = "both"
    base_run: bool = False

    def __post_init__(self):
        if self.path not in PATHS:
            raise SteerInterpError(f"path={self.path!r}; choose one of {', '.join(PATHS)}")
        if self.path != "both" and self.mlp:
            raise SteerInterpError("path='mlp' / 'resid' routes the attention output; it cannot combine with mlp=True")

    @property
    def touches_attention(self) -> bool:
        return bool(self.z_heads or self.q_heads or self.k_groups or self.v_groups or self.attn)


def standard_patches(model, *, heads: bool = True, steer_heads: bool = True, qkv: bool = True,
                     paths: bool = True) -> list[Patch]:
    """The papers' configurations for one block: references, per head, per Q/K/V, per path."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    out = [Patch("no_patch"), Patch("base", base_run=True), Patch("skip_attn", attn=True),
           Patch("skip_layer", attn=True, mlp=True)]
    if heads:
        out += [Patch(f"skip_head[{h}]", z_heads=(h,)) for h in range(n_heads)]
    if steer_heads:
        out += [Patch(f"steer_head[{h}]", z_heads=tuple(x for x in range(n_heads) if x != h)) for h in range(n_heads)]
    if qkv:
        out += [Patch(f"q[{h}]", q_heads=(h,)) for h in range(n_heads)]
        out += [Patch(f"k[{g}]", k_groups=(g,)) for g in range(n_kv)]
        out += [Patch(f"v[{g}]", v_groups=(g,)) for g in range(n_kv)]
    if paths:
        out += [Patch("skip_attn->mlp", attn=True, path="mlp"), Patch("skip_attn->resid", attn=True, path="resid")]
        out += [Patch(f"skip_head[{h}]->mlp", z_heads=(h,), path="mlp") for h in range(n_heads)]
        out += [Patch(f"skip_head[{h}]->resid", z_heads=(h,), path="resid") for h in range(n_heads)]
    return out


_NAMES = {"z": "attn.hook_z", "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v",
          "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "resid_post": "hook_resid_post"}


def block_hook(layer: int, key: str, model=None) -> str:
    """The hook of activation ``key`` (``z, q, k, v, attn_out, mlp_out, resid_post``) in block ``layer``.

    With ``model``, queries and keys of an architecture whose q/k norms span all heads (OLMo-2) are read
    after the norms and the rotation (``hook_rot_q`` / ``hook_rot_k``): patching one head's ``hook_q``
    before them would move every head's queries. The rotation depends only on the position, so this is
    patching the head's normalised queries / keys. Elsewhere ``hook_q`` / ``hook_k`` (per-head norms and
    the rotation act head by head, so patching before them is the same)."""
    if key in ("q", "k") and model is not None:
        arch = architecture(model)
        if arch.qk_norm_spans_heads:
            rotated = f"blocks.{layer}.attn.hook_rot_{key}"
            if getattr(model.cfg, "positional_embedding_type", None) != "rotary" or rotated not in model.hook_dict:
                raise arch.refusal(f"patching {key} by head", "its q/k norm spans all heads and the model has no hook "
                                                             "after it (hook_rot_q / hook_rot_k)")
            return rotated
    return f"blocks.{layer}.{_NAMES[key]}"


class PatchHooks:
    """Hook functions that apply ``patches[p]`` to rows ``[p*B, (p+1)*B)`` of a stacked batch.

    ``base`` / ``steered`` map ``z, q, k, v, attn_out, mlp_out`` to the base run's and the unpatched
    steered run's activations of the patched block for the current chunk of positions ([B, pos, ...]).
    ``set_sources`` replaces them before each forward (one call per decoding step in generation).
    """

    def __init__(self, layer: int, patches: Sequence[Patch], model=None):
        self.layer, self.patches, self.model = layer, list(patches), model
        self.base: dict[str, torch.Tensor] = {}
        self.steered: dict[str, torch.Tensor] = {}
        self._patched_attn: torch.Tensor | None = None

    def set_sources(self, base: dict, steered: dict) -> None:
        self.base, self.steered = base, steered

    def _rows(self, p: int, n: int) -> slice:
        return slice(p * n, (p + 1) * n)

    def _heads(self, key: str, attr: str):
        def fn(act, hook):
            n = self.base[key].shape[0]
            act = act.clone()
            for p, patch in enumerate(self.patches):
                idx = list(getattr(patch, attr))
                if idx:
                    act[self._rows(p, n)][:, :, idx] = self.base[key][:, :, idx].to(act.dtype)
            return act

        return fn

    def _attn_out(self, act, hook):
        n = self.base["attn_out"].shape[0]
        patched = act.clone()  # already reflects any z / q / k / v patches upstream
        for p, patch in enumerate(self.patches):
            if patch.attn:
                patched[self._rows(p, n)] = self.base["attn_out"].to(act.dtype)
        self._patched_attn = patched
        out = patched.clone()
        for p, patch in enumerate(self.patches):
            if patch.path == "resid" and patch.touches_attention:
                out[self._rows(p, n)] = self.steered["attn_out"].to(act.dtype)  # the MLP sees the steered output
        return out

    def _mlp_out(self, act, hook):
        n = self.base["mlp_out"].shape[0]
        out = act.clone()
        for p, patch in enumerate(self.patches):
            if patch.mlp:
                out[self._rows(p, n)] = self.base["mlp_out"].to(act.dtype)
        return out

    def _resid_post(self, act, hook):
        n = self.base["attn_out"].shape[0]
        out = act.clone()
        steered = self.steered["attn_out"].to(act.dtype)
        for p, patch in enumerate(self.patches):
            rows = self._rows(p, n)
            if patch.path == "mlp" and patch.touches_attention:  # residual keeps the steered attention output
                out[rows] = out[rows] + steered - self._patched_attn[rows]
            elif patch.path == "resid" and patch.touches_attention:  # residual gets the patched one
                out[rows] = out[rows] + self._patched_attn[rows] - steered
        return out

    def hooks(self) -> list[tuple[str, object]]:
        layer = self.layer
        return [
            (block_hook(layer, "q", self.model), self._heads("q", "q_heads")),
            (block_hook(layer, "k", self.model), self._heads("k", "k_groups")),
            (block_hook(layer, "v"), self._heads("v", "v_groups")),
            (block_hook(layer, "z"), self._heads("z", "z_heads")),
            (block_hook(layer, "attn_out"), self._attn_out),
            (block_hook(layer, "mlp_out"), self._mlp_out),
            (block_hook(layer, "resid_post"), self._resid_post),
        ]


SOURCE_KEYS = ("z", "q", "k", "v", "attn_out", "mlp_out")


def check_layer(model, steering, layer: int | None) -> int:
    """The patched block: default, the block after the last steered layer (must not be steered itself)."""
    vecs = as_steering(steering)
    if vecs is None or not len(vecs):
        raise SteerInterpError("block patching needs steering vectors")
    layers = [v for v in vecs.layers if v is not None]
    if layer is None:
        layer = max(layers) + 1
    if not 0 < layer < model.cfg.n_layers:
        raise SteerInterpError(f"cannot patch block {layer}: the model has blocks 0..{model.cfg.n_layers - 1} and the "
                               "block must follow a steered layer (steer at most layer n_layers - 2, or pass layer=)")
    if any(v.hook_name == f"blocks.{layer}.hook_resid_pre" for v in vecs):
        raise SteerInterpError(f"a vector sits at blocks.{layer}.hook_resid_pre; steer blocks.{layer - 1}.hook_resid_post "
                               "instead (the same place)")
    if min(layers) >= layer:
        raise SteerInterpError(f"every vector is at or after block {layer}; patching it cannot isolate their effect")
    return layer


def _repeat(batch: Batch, n: int) -> Batch:
    return Batch(*(t.repeat(n, 1) for t in (batch.tokens, batch.attention_mask, batch.prompt_mask, batch.completion_mask)))


@dataclass
class BlockSources:
    """What every patch of one block reads, for one chunk of sequences: the base and the unpatched steered
    run's activations of the block (``z, q, k, v, attn_out, mlp_out``), the steered residual entering it
    and the base run's final residual."""

    base: dict[str, torch.Tensor]
    steered: dict[str, torch.Tensor]
    h_in: torch.Tensor
    base_final: torch.Tensor


@torch.no_grad()
def block_sources(model, batch: Batch, steering, layer: int) -> BlockSources:
    """The base run (all blocks) and the steered run up to the patched block, caching only what patches read."""
    sources = [block_hook(layer, k, model) for k in SOURCE_KEYS]
    resid_pre = f"blocks.{layer}.hook_resid_pre"
    base_final, base = run_blocks(model, batch, None, sources)
    _, steered = run_blocks(model, batch, steering, sources + [resid_pre], stop=layer + 1)
    return BlockSources({k: base[block_hook(layer, k, model)] for k in SOURCE_KEYS},
                        {k: steered[block_hook(layer, k, model)] for k in SOURCE_KEYS}, steered[resid_pre], base_final)


@torch.no_grad()
def patched_finals(model, batch: Batch, steering, patches: Sequence[Patch], layer: int, src: BlockSources,
                   patch_chunk: int | None = None):
    """Yield ``(index in patches, final residuals [B, pos, d_model])``: the patches run ``patch_chunk`` at a
    time (default: as many stacked copies as ``budget_rows`` allows) as one forward from ``layer``."""
    live = [(i, p) for i, p in enumerate(patches) if not p.base_run]
    for i, p in enumerate(patches):
        if p.base_run:
            yield i, src.base_final
    per_forward = patch_chunk or max(1, budget_rows(model, batch.tokens.shape[1]) // len(batch))
    for c0 in range(0, len(live), per_forward):
        group = live[c0 : c0 + per_forward]
        hooks = PatchHooks(layer, [p for _, p in group], model)
        hooks.set_sources(src.base, src.steered)
        stacked = _repeat(batch, len(group))
        resid, _ = run_blocks(model, stacked, steering, hooks=hooks.hooks(), start=layer,
                              resid=src.h_in.repeat(len(group), 1, 1))
        resid = resid.reshape(len(group), len(batch), *resid.shape[1:])
        for k, (i, _) in enumerate(group):
            yield i, resid[k]
        del resid, hooks


@torch.no_grad()
def patched_final_residuals(model, batch: Batch, steering, patches: Sequence[Patch], layer: int, *,
                            patch_chunk: int | None = None):
    """Final-block residuals for every patch ([P, B, pos, d_model]): the blocks before ``layer`` run once,
    then ``patch_chunk`` patches per stacked forward from ``layer`` (default: as many as ``budget_rows`` allows)."""
    src = block_sources(model, batch, steering, layer)
    out = torch.empty((len(patches),) + src.base_final.shape, dtype=src.base_final.dtype, device=src.base_final.device)
    for i, final in patched_finals(model, batch, steering, patches, layer, src, patch_chunk):
        out[i] = final
    return out


METRICS = {
    "effect_lost": "KL(steered || patched) / KL(steered || base)",
    "kl_from_steered": "KL(steered || patched)",
    "kl_to_base": "KL(patched || base)",
    "retained": "KL(patched || base) / KL(steered || base)",
}


@dataclass
class BlockPatchingResult(AnalysisResult):
    """Per patch, means over the chosen positions (float64):

    * ``effect_lost`` = KL(steered || patched) / KL(steered || base), the papers' metric: the share of
      the steering effect the patch removes (0 = nothing patched, 1 = back to the base model);
    * ``kl_from_steered`` = KL(steered || patched) and ``kl_to_base`` = KL(patched || base);
    * ``retained`` = KL(patched || base) / KL(steered || base), the variant kept as an option (1 = the
      effect is intact, 0 = gone);
    * ``kl_steered_base`` = KL(steered || base), the denominator of both ratios (one number);
    * tracked tokens' dp = p_patched - p_base.

    The ratios are ratios of the means over positions, not means of per-position ratios.
    """

    layer: int
    names: list[str]
    kl_to_base: list[float]
    kl_from_steered: list[float]
    tracked: dict[str, list[float]] = field(default_factory=dict)  # token -> mean dp vs base, per patch
    positions: str = "first"
    n_positions: int = 0
    kl_by_position: torch.Tensor | None = None  # [patches, completion position], KL(patched || base)
    kl_steered_base: float = float("nan")
    kl_from_steered_by_position: torch.Tensor | None = None  # [patches, completion position]
    kl_steered_base_by_position: torch.Tensor | None = None  # [completion position]

    def _ratio(self, values: list[float]) -> list[float]:
        ref = self.kl_steered_base
        if ref != ref and "no_patch" in self.names:  # results built without the reference: no_patch is the steered model
            ref = self.kl_to_base[self.names.index("no_patch")]
        return [k / ref if ref > 0 else float("nan") for k in values]

    @property
    def effect_lost(self) -> list[float]:
        """KL(steered || patched) / KL(steered || base): 0 = the patch removes nothing, 1 = all of the effect."""
        return self._ratio(self.kl_from_steered)

    @property
    def retained(self) -> list[float]:
        """KL(patched || base) / KL(steered || base): 1 = the steering effect is intact, 0 = gone."""
        return self._ratio(self.kl_to_base)

    def position_frame(self, metric: str = "effect_lost"):
        """``metric`` per completion position (rows: patches, columns: 0 = the first generated token):
        ``effect_lost`` (default; the ratio of the position's means over sequences), ``kl_from_steered``,
        ``kl_to_base`` or ``retained``."""
        import pandas as pd

        if metric not in METRICS:
            raise SteerInterpError(f"metric={metric!r}; choose one of {', '.join(METRICS)}")
        if self.kl_by_position is None:
            raise SteerInterpError("no per-position values in this result")
        if metric == "kl_to_base":
            return pd.DataFrame(self.kl_by_position.numpy(), index=self.names)
        if self.kl_from_steered_by_position is None or self.kl_steered_base_by_position is None:
            raise SteerInterpError(f"this result keeps only KL(patched || base) per position, not {metric}")
        if metric == "kl_from_steered":
            return pd.DataFrame(self.kl_from_steered_by_position.numpy(), index=self.names)
        ref = self.kl_steered_base_by_position
        num = self.kl_from_steered_by_position if metric == "effect_lost" else self.kl_by_position
        ratio = torch.where(ref > 0, num / ref.clamp_min(1e-300), torch.full_like(num, float("nan")))
        return pd.DataFrame(ratio.numpy(), index=self.names)

    def to_frame(self):
        """One row per patch: ``effect_lost`` (the papers' metric) first, then the KLs and ``retained``."""
        import pandas as pd

        df = pd.DataFrame({"patch": self.names, "effect_lost": self.effect_lost, "kl_from_steered": self.kl_from_steered,
                           "kl_to_base": self.kl_to_base, "retained": self.retained})
        for tok, vals in self.tracked.items():
            df[f"dp[{tok}]"] = vals
        df.attrs["kl_steered_base"] = self.kl_steered_base
        return df

    def plot(self, metric: str = "effect_lost", *, prefix: str = "skip_head["):
        """Bars of ``metric`` (default ``effect_lost``, the papers' share of the steering effect lost) for the
        patches whose names start with ``prefix`` (one per head), with reference lines for the steered
        model, Skip-Attn and Skip-Layer (the papers' figure)."""
        df = self.to_frame()
        if metric not in df.columns or metric == "patch":
            raise SteerInterpError(f"metric={metric!r}; choose one of {', '.join(df.columns[1:])}")
        label = f"{metric} = {METRICS[metric]}" if metric in METRICS else metric
        return patch_figure(dict(zip(df["patch"], df[metric])), prefix, metric,
                            f"block {self.layer} patching ({self.positions} positions, n={self.n_positions}): {label}")


def patch_figure(values: dict, prefix: str, ytitle: str, title: str):
    """Bars for the patches named ``prefix...`` with reference lines for no_patch / skip_attn / skip_layer / base."""
    import plotly.graph_objects as go

    bars = {k: v for k, v in values.items() if k.startswith(prefix) and "->" not in k}
    fig = go.Figure(go.Bar(x=list(bars), y=list(bars.values()), name=ytitle))
    for ref, dash in (("no_patch", "solid"), ("skip_attn", "dash"), ("skip_layer", "dot"), ("base", "dashdot")):
        if ref in values:
            fig.add_hline(y=float(values[ref]), line_dash=dash, annotation_text=ref)
    fig.update_layout(title=title, yaxis_title=ytitle)
    return fig


@torch.no_grad()
def block_patching(model, inputs, steering, patches: Sequence[Patch] | None = None, *, layer: int | None = None,
                   positions: str = "first", track: Sequence[str | int] = (), batch_size: int | None = None,
                   max_positions: int = 64, patch_chunk: int | None = None, position_chunk: int = 128) -> BlockPatchingResult:
    """Token-level effect of each patch of the block after the steered layer (float64 KL, dp).

    The headline is the papers' ``effect_lost`` = KL(steered || patched) / KL(steered || base), the share
    of the steering effect a patch removes; ``retained`` = KL(patched || base) / KL(steered || base) is
    kept as a column (see ``BlockPatchingResult``). ``positions``: ``"first"`` (the first generated
    token), ``"completion"`` or ``"all"``. Besides the means, the KLs are kept per completion position
    (0 = the first generated token, up to ``max_positions``; ``position_frame``).

    Memory: ``batch_size`` sequences at a time (default: ``rows_per_forward``), ``patch_chunk`` patches per
    stacked forward (default: as many as ``budget_rows`` allows); only the chosen positions' final
    residuals are kept, and the float64 read-outs run ``position_chunk`` positions at a time. None of
    them changes a value beyond float64 summation order.
    """
    batch = as_batch(inputs, model)
    layer = check_layer(model, steering, layer)
    patches = standard_patches(model) if patches is None else list(patches)
    names = [p.name for p in patches]
    if len(set(names)) != len(names):
        raise SteerInterpError("two patches share a name; give each a distinct name")
    if position_chunk < 1:
        raise SteerInterpError(f"position_chunk must be >= 1, got {position_chunk}")
    tracked = token_ids(model, track)
    n_p = len(patches)
    kl_b = torch.zeros(n_p, dtype=torch.float64)
    kl_s = torch.zeros(n_p, dtype=torch.float64)
    dp = torch.zeros(n_p, len(tracked), dtype=torch.float64)
    kl_sb = torch.zeros((), dtype=torch.float64)  # KL(steered || base)
    by_pos = torch.zeros(n_p, max_positions, dtype=torch.float64)  # KL(patched || base) per completion position
    by_pos_s = torch.zeros(n_p, max_positions, dtype=torch.float64)  # KL(steered || patched)
    by_pos_sb = torch.zeros(max_positions, dtype=torch.float64)  # KL(steered || base)
    pos_count = torch.zeros(max_positions, dtype=torch.float64)
    n = 0
    all_patches = [Patch("__steered__"), Patch("__base__", base_run=True)] + patches
    step = rows_per_forward(model, batch, batch_size)
    for start in range(0, len(batch), step):
        chunk = batch.rows(slice(start, start + step))
        sel = chunk.positions(positions)
        n_sel = int(sel.sum())
        n += n_sel
        rel = (chunk.predicting_mask.long().cumsum(-1) - 1)[sel].clamp(min=0).cpu()  # 0 = the first generated token
        keep = rel < max_positions
        pos_count += torch.bincount(rel[keep], minlength=max_positions).double()
        src = block_sources(model, chunk, steering, layer)
        picked = None  # [2 + P, n_sel, d_model]: the final residual of every patch at the chosen positions
        for i, final in patched_finals(model, chunk, steering, all_patches, layer, src, patch_chunk):
            if picked is None:
                picked = final.new_empty((len(all_patches), n_sel, final.shape[-1]))
            picked[i] = final[sel]
        del src
        for c in range(0, n_sel, position_chunk):
            cs = slice(c, c + position_chunk)
            rel_c, keep_c = rel[cs], keep[cs]
            lp_steer = final_logprobs(model, picked[0, cs])
            lp_base = final_logprobs(model, picked[1, cs])
            p_steer = lp_steer.exp()
            sb_tok = (p_steer * (lp_steer - lp_base)).sum(-1).cpu()
            kl_sb += sb_tok.sum()
            by_pos_sb += torch.bincount(rel_c[keep_c], weights=sb_tok[keep_c], minlength=max_positions)
            for i in range(n_p):
                lp = final_logprobs(model, picked[i + 2, cs])
                kl_tok = (lp.exp() * (lp - lp_base)).sum(-1).cpu()
                kl_b[i] += kl_tok.sum()
                by_pos[i] += torch.bincount(rel_c[keep_c], weights=kl_tok[keep_c], minlength=max_positions)
                s_tok = (p_steer * (lp_steer - lp)).sum(-1).cpu()
                kl_s[i] += s_tok.sum()
                by_pos_s[i] += torch.bincount(rel_c[keep_c], weights=s_tok[keep_c], minlength=max_positions)
                for j, tok in enumerate(tracked.values()):
                    dp[i, j] += (lp[:, tok].exp() - lp_base[:, tok].exp()).sum().cpu()
                del lp
            del lp_steer, lp_base, p_steer
        del picked
    if n == 0:
        raise SteerInterpError("no positions selected")
    used = int((pos_count > 0).nonzero().max()) + 1 if (pos_count > 0).any() else 0
    per = pos_count[:used].clamp_min(1)
    return BlockPatchingResult(layer, names, (kl_b / n).tolist(), (kl_s / n).tolist(),
                               {t: (dp[:, j] / n).tolist() for j, t in enumerate(tracked)}, positions, n,
                               by_pos[:, :used] / per, float(kl_sb / n), by_pos_s[:, :used] / per, by_pos_sb[:used] / per)
