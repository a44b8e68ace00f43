"""First-token substitution: how steering changes next-token distributions along completions.

PAPER_NOTES section 4.4. Teacher-force prompt + completion twice (without and with steering) and,
at every position from the last prompt token onward (``pos = 0`` predicts the first generated
token), compare the full softmaxes in float64: ``dp = p_steered - p_base``, the most boosted token
(``dst``), the most suppressed one (``src``), the base argmax (the "would-be" token), both
entropies and KL(steered || base). The papers' finding: a last-layer vector acts at ``pos = 0``,
raising one opening token ("To", "Step"), and barely touches later positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from steerinterp.analysis.batch import as_batch, paired_caches, token_strings
from steerinterp.analysis.readout import entropy, final_logprobs
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.tokens import token_ids
from steerinterp.errors import SteerInterpError
from steerinterp.types import HookedModel


@dataclass
class TokenShiftResult(AnalysisResult):
    """One row per (sample, position); ``frame`` holds them, the methods aggregate them."""

    frame: object  # pandas.DataFrame
    tracked: list[str] = field(default_factory=list)

    def to_frame(self):
        return self.frame

    def summary(self):
        """Position 0 against later positions: KL, max dp, reinforcement / change shares, tracked dp."""
        df = self.frame.assign(position=lambda d: d["pos"].map(lambda p: "pos 0" if p == 0 else "pos > 0"))
        agg = {"n": ("pos", "size"), "kl_mean": ("kl", "mean"), "kl_median": ("kl", "median"),
               "max_dp_mean": ("dst_dp", "mean"), "reinforce_share": ("reinforce", "mean"),
               "change_share": ("change", "mean"), "argmax_changed_share": ("argmax_changed", "mean")}
        agg.update({f"dp[{t}]_mean": (f"dp[{t}]", "mean") for t in self.tracked})
        return df.groupby("position").agg(**agg).reset_index()

    def by_token(self, key: str = "dst", *, top: int = 5, by: str = "mean", min_count: int = 1):
        """Max-dp statistics grouped by ``dst``, ``src``, ``would_be``, ``transition`` (would_be -> dst) or ``pos``."""
        if key not in ("dst", "src", "would_be", "transition", "pos"):
            raise SteerInterpError(f"key={key!r}; choose dst, src, would_be, transition or pos")
        df = self.frame.assign(transition=self.frame["would_be"] + " -> " + self.frame["dst"])
        g = df.groupby(key)["dst_dp"].agg(["count", "mean", "max", "median"]).reset_index()
        g = g[g["count"] >= min_count]
        return g.sort_values(by, ascending=False).head(top).reset_index(drop=True)

    def plot(self, kind: str = "positions", *, key: str = "dst", top: int = 5):
        """``"positions"``: max dp at pos 0 vs later (box); ``"tokens"``: max dp grouped by ``key``;
        ``"tracked"``: dp of each tracked token at pos 0 vs later."""
        import plotly.graph_objects as go

        df = self.frame
        first = df["pos"] == 0
        if kind == "positions":
            fig = go.Figure([go.Box(y=df.loc[first, "dst_dp"], name="pos 0"), go.Box(y=df.loc[~first, "dst_dp"], name="pos > 0")])
            fig.update_layout(title="largest probability gain per position (steered - base)", yaxis_title="max dp")
            return fig
        if kind == "tokens":
            keys = self.by_token(key, top=top)[key].tolist()
            df = df.assign(transition=df["would_be"] + " -> " + df["dst"])
            fig = go.Figure([go.Box(y=df.loc[df[key] == k, "dst_dp"], name=repr(k)) for k in keys])
            fig.update_layout(title=f"max dp grouped by {key} (top {top} by mean)", yaxis_title="max dp")
            return fig
        if kind == "tracked":
            if not self.tracked:
                raise SteerInterpError("no tracked tokens; pass track=['To'] to token_shift")
            fig = go.Figure()
            for t in self.tracked:
                fig.add_trace(go.Box(y=df.loc[first, f"dp[{t}]"], name=f"{t!r} pos 0"))
                fig.add_trace(go.Box(y=df.loc[~first, f"dp[{t}]"], name=f"{t!r} pos > 0"))
            fig.update_layout(title="dp of tracked tokens at the first generated token vs later", yaxis_title="dp")
            return fig
        raise SteerInterpError(f"kind={kind!r}; choose 'positions', 'tokens' or 'tracked'")


@torch.no_grad()
def token_shift(
    model: HookedModel,
    inputs,
    steering,
    *,
    track: Sequence[str | int] = (),
    max_positions: int | None = None,
    batch_size: int | None = None,
    position_chunk: int = 128,
) -> TokenShiftResult:
    """Per-position distribution shift caused by ``steering`` on teacher-forced completions.

    ``inputs``: a ``Batch`` / ``GenerationOutput`` (prompt + completion). ``max_positions`` keeps
    only the first positions of each completion. Only the last block's residual is cached, ``batch_size``
    sequences at a time (default: ``rows_per_forward``, as many as fit the attention budget), and the
    unembedding runs on the analysed positions in chunks of ``position_chunk``, so long completions fit
    in memory. Neither chunk changes a value.
    """
    import pandas as pd

    batch = as_batch(inputs, model)
    tracked = token_ids(model, track)
    cols: dict[str, list] = {k: [] for k in ("sample", "pos", "next_token", "dst_id", "dst_dp", "src_id", "src_dp",
                                             "would_be_id", "steered_argmax_id", "p_base_would_be", "entropy_base",
                                             "entropy_steered", "kl")}
    for t in tracked:
        cols[f"dp[{t}]"] = []
    row0 = 0
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for chunk, (_, base), (_, steered) in paired_caches(model, batch, steering, [final], batch_size=batch_size):
        sel = chunk.predicting_mask
        pos = sel.long().cumsum(-1) - 1
        if max_positions is not None:
            sel = sel & (pos < max_positions)
        b_idx, t_idx = sel.nonzero(as_tuple=True)
        next_tok = chunk.tokens[b_idx, t_idx + 1]
        for s in range(0, len(b_idx), position_chunk):
            bi, ti = b_idx[s : s + position_chunk], t_idx[s : s + position_chunk]
            lp_b = final_logprobs(model, base[final][bi, ti])
            lp_s = final_logprobs(model, steered[final][bi, ti])
            p_b, p_s = lp_b.exp(), lp_s.exp()
            dp = p_s - p_b
            dst_dp, dst = dp.max(-1)
            src_dp, src = dp.min(-1)
            would_be = p_b.argmax(-1)
            cols["sample"] += (bi + row0).tolist()
            cols["pos"] += pos[bi, ti].tolist()
            cols["next_token"] += next_tok[s : s + position_chunk].tolist()
            cols["dst_id"] += dst.tolist()
            cols["dst_dp"] += dst_dp.tolist()
            cols["src_id"] += src.tolist()
            cols["src_dp"] += src_dp.tolist()
            cols["would_be_id"] += would_be.tolist()
            cols["steered_argmax_id"] += p_s.argmax(-1).tolist()
            cols["p_base_would_be"] += p_b.gather(-1, would_be[:, None])[:, 0].tolist()
            cols["entropy_base"] += entropy(lp_b).tolist()
            cols["entropy_steered"] += entropy(lp_s).tolist()
            cols["kl"] += (p_s * (lp_s - lp_b)).sum(-1).tolist()
            for t, i in tracked.items():
                cols[f"dp[{t}]"] += dp[:, i].tolist()
        row0 += len(chunk)
    if not cols["pos"]:
        raise SteerInterpError("the batch has no completion tokens to analyse")
    df = pd.DataFrame(cols)
    vocab_ids = sorted(set(df["dst_id"]) | set(df["src_id"]) | set(df["would_be_id"]) | set(df["steered_argmax_id"])
                       | set(df["next_token"]))
    names = dict(zip(vocab_ids, token_strings(model, vocab_ids)))
    for col in ("dst", "src", "would_be", "steered_argmax"):
        df.insert(df.columns.get_loc(f"{col}_id"), col, df[f"{col}_id"].map(names))
    df.insert(df.columns.get_loc("next_token") + 1, "next_token_str", df["next_token"].map(names))
    df["reinforce"] = df["dst_id"] == df["would_be_id"]
    df["argmax_changed"] = df["steered_argmax_id"] != df["would_be_id"]
    df["change"] = (df["dst_id"] == df["steered_argmax_id"]) & df["argmax_changed"]
    return TokenShiftResult(df, list(tracked))
