"""Which languages the logit lens's boosted and suppressed tokens belong to.

The papers sent token lists to GPT-4.1 (PAPER_NOTES section 4.3); offline, tokens are classified by
Unicode script. A token is *non-English* when its letters are of a non-Latin script (CJK, Cyrillic,
Arabic, ...) or Latin letters outside ASCII (``é``, ``ß``: other Latin-script languages). Tokens
without letters (digits, punctuation, whitespace) are *neutral* and left out of the shares, and so
are byte fragments of multi-byte characters (tokens that decode to U+FFFD): they are pieces of
characters, not a language (``include_fragments=True`` counts them as non-English, the earlier rule).
Each share among the top/bottom-k is compared with the vocabulary's base rate with a one-sided
hypergeometric p-value; the p-values of one direction are corrected across layers with
Benjamini-Hochberg, and a layer is significant when its q-value is below ``alpha``.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass

from steerinterp.analysis.logit_lens import LogitLensResult
from steerinterp.analysis.result import AnalysisResult
from steerinterp.analysis.stats import benjamini_hochberg

NEUTRAL = ("digits", "punctuation", "whitespace", "empty")


def token_script(text: str) -> str:
    """Script of a decoded token: ``latin_ascii``, ``latin_extended``, ``cjk``, ``cyrillic``, ...,
    ``byte_fragment`` (undecodable piece), or a neutral class (``digits``, ``punctuation``,
    ``whitespace``, ``empty``)."""
    if text == "":
        return "empty"
    if "\ufffd" in text:
        return "byte_fragment"
    stripped = text.strip()
    if not stripped:
        return "whitespace"
    scripts: Counter[str] = Counter()
    for ch in stripped:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        word = name.split(" ")[0] if name else "unknown"
        if word == "LATIN":
            scripts["latin_ascii" if ch.isascii() else "latin_extended"] += 1
        elif word in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"):
            scripts["cjk" if word == "CJK" else word.lower()] += 1
        else:
            scripts[word.lower()] += 1
    if not scripts:
        return "digits" if any(ch.isdigit() for ch in stripped) else "punctuation"
    if "latin_extended" in scripts and set(scripts) <= {"latin_ascii", "latin_extended"}:
        return "latin_extended"
    return scripts.most_common(1)[0][0]


def is_non_english(script: str, *, include_fragments: bool = False) -> bool | None:
    """True / False for letter-bearing tokens, None for neutral ones (byte fragments too, unless
    ``include_fragments``: then they count as non-English)."""
    if script in NEUTRAL or (script == "byte_fragment" and not include_fragments):
        return None
    return script != "latin_ascii"


def hypergeom_sf(x: int, total: int, successes: int, draws: int) -> float:
    """P(X >= x) for X ~ Hypergeometric(total, successes, draws) (exact, in log space)."""

    def log_comb(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    lo, hi = max(x, 0, draws - (total - successes)), min(draws, successes)
    if lo > hi:
        return 0.0 if x > hi else 1.0
    denom = log_comb(total, draws)
    terms = [log_comb(successes, i) + log_comb(total - successes, draws - i) - denom for i in range(lo, hi + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


@dataclass
class LanguageResult(AnalysisResult):
    """One row per layer and direction: ``non_english`` / ``letter_tokens`` among the top-k,
    ``byte_fragments`` (left out unless ``include_fragments``), the share, the base rate, the raw
    ``p_value``, the Benjamini-Hochberg ``q_value`` across the layers of that direction and
    ``significant`` (q < ``alpha``)."""

    rows: list[dict]
    base_rate: float
    vocab_scripts: dict[str, int]
    alpha: float = 0.05
    include_fragments: bool = False

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for direction, colour in (("suppressed", "#c0392b"), ("boosted", "#2471a3")):
            d = df[df["direction"] == direction]
            fig.add_trace(go.Bar(x=d["layer"].astype(str), y=d["non_english_share"], name=direction, marker_color=colour,
                                 text=["*" if s else "" for s in d["significant"]], textposition="outside"))
        fig.add_hline(y=self.base_rate, line_dash="dash", annotation_text=f"vocabulary {self.base_rate:.1%}")
        fragments = "byte fragments counted as non-English" if self.include_fragments else "byte fragments left out"
        fig.update_layout(barmode="group", title=f"share of non-English tokens among the top-k of the logit lens "
                                                 f"(* BH q < {self.alpha:g} across layers; {fragments})",
                          xaxis_title="layer", yaxis_title="non-English share (letter tokens)", yaxis_tickformat=".0%")
        return fig


def language_shares(lens: LogitLensResult, *, k: int | None = None, by: str = "cos", include_fragments: bool = False,
                    alpha: float = 0.05) -> LanguageResult:
    """Non-English share of each layer's top-k boosted and suppressed tokens vs the vocabulary.

    Byte fragments (U+FFFD) are neutral unless ``include_fragments``; p-values are corrected across
    layers (Benjamini-Hochberg, separately for boosted and suppressed) and ``significant`` is q < ``alpha``.
    """
    k = k or lens.k
    scripts = [token_script(t) for t in lens.vocab]
    flags = [is_non_english(s, include_fragments=include_fragments) for s in scripts]
    letter_total = sum(f is not None for f in flags)
    non_en_total = sum(bool(f) for f in flags)
    base = non_en_total / letter_total if letter_total else float("nan")
    rows = []
    for layer in lens.layers:
        for direction, suppressed in (("boosted", False), ("suppressed", True)):
            ids = lens.top(layer, k, by=by, suppressed=suppressed)
            f = [flags[i] for i in ids]
            letters = sum(x is not None for x in f)
            non_en = sum(bool(x) for x in f)
            share = non_en / letters if letters else float("nan")
            counts = Counter(scripts[i] for i in ids)
            rows.append({"layer": layer, "direction": direction, "k": k, "letter_tokens": letters, "non_english": non_en,
                         "byte_fragments": counts.get("byte_fragment", 0),
                         "non_english_share": share, "base_rate": base,
                         "enrichment": share / base if base else float("nan"),
                         "p_value": hypergeom_sf(non_en, letter_total, non_en_total, letters) if letters else float("nan"),
                         "q_value": float("nan"), "significant": False, "scripts": dict(counts.most_common())})
    for direction in ("boosted", "suppressed"):
        mine = [r for r in rows if r["direction"] == direction]
        for r, q in zip(mine, benjamini_hochberg([r["p_value"] for r in mine]).tolist()):
            r["q_value"], r["significant"] = q, bool(q < alpha)
    return LanguageResult(rows, base, dict(Counter(scripts).most_common()), alpha, include_fragments)
