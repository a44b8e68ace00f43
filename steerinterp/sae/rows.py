"""Which rows a DiffSAE trains on and is measured on: completion rows (optionally), distinct rows, held
out by problem, and a dictionary size suggested by the amount of distinct data.

Several generations of one problem share their prompt, so their prompt rows are the same rows; the
chat template's prefix is shared by every problem; and short answers repeat. Counting such rows once
per generation inflates the data, and splitting by generation puts copies of training rows into the
held-out set, so held-out quality measures memory, not generalisation. ``training_rows``:

* keeps ``rows="all"`` collected rows or only ``rows="completion"`` rows (positions that predict a
  completion token);
* holds out a seeded fraction of the *problems* (``heldout_by="problem"``; every generation is its own
  problem when the differences carry no problem ids) or of the generations (``"generation"``, the
  earlier rule);
* drops every held-out row that equals a training row, always, and with ``dedupe=True`` (default)
  keeps one copy of each row within each split (``collect.row_keys`` says which rows are equal);
* reports the counts: rows, rows of the chosen kind, distinct rows, train / held-out rows, problems.

``suggest_d_sae(n_rows, d_in, k)``: a dictionary size sized to the data (rule in its docstring).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from steerinterp.analysis.result import AnalysisResult
from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations, heldout_samples, row_keys
from steerinterp.sae.store import ShardedDiffs, check_source

ROWS = ("all", "completion")
HELDOUT_BY = ("problem", "generation")


@dataclass
class TrainingRows(AnalysisResult):
    """The training and held-out views of a source, and how many rows went where."""

    train: DiffActivations | ShardedDiffs
    heldout: DiffActivations | ShardedDiffs | None
    rows: str
    dedupe: bool
    heldout_by: str  # "problem", "generation", or "generation (no problem ids)"
    n_rows: int  # rows in the source
    n_kind: int  # rows of the chosen kind (all, or completion rows)
    n_distinct: int  # distinct rows among those
    n_train: int
    n_heldout: int
    n_heldout_duplicates: int  # held-out rows left out because a training row equals them
    n_problems: int  # the groups the split draws from: problems, or generations when held out by generation
    n_heldout_problems: int

    def summary(self) -> dict:
        return {"rows": self.rows, "dedupe": self.dedupe, "heldout_by": self.heldout_by, "collected_rows": self.n_rows,
                "rows_of_kind": self.n_kind, "distinct_rows": self.n_distinct, "train_rows": self.n_train,
                "heldout_rows": self.n_heldout, "heldout_duplicates_dropped": self.n_heldout_duplicates,
                "problems": self.n_problems, "heldout_problems": self.n_heldout_problems}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([self.summary()])

    def plot(self):
        import plotly.graph_objects as go

        names = ["collected_rows", "rows_of_kind", "distinct_rows", "train_rows", "heldout_rows"]
        s = self.summary()
        fig = go.Figure(go.Bar(x=names, y=[s[n] for n in names]))
        fig.update_layout(title=f"DiffSAE rows ({self.rows} rows, held out by {self.heldout_by}, "
                                f"{self.n_heldout_problems} of {self.n_problems} problems)", yaxis_title="rows")
        return fig


def _pieces(source) -> Iterator[tuple[DiffActivations, torch.Tensor]]:
    """(stored rows, which of them the source keeps), part by part."""
    if isinstance(source, DiffActivations):
        yield source, torch.ones(len(source), dtype=torch.bool)
    else:
        for i in range(source.n_shards):
            stored = source.stored_shard(i)
            yield stored, source.kept_rows(i, stored)


def _first_of_each(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of ``mask`` that are the first row with their key among the rows of ``mask``."""
    idx = mask.nonzero().flatten()
    out = torch.zeros_like(mask)
    if len(idx):
        uniq, inverse = torch.unique(keys[idx], return_inverse=True)
        first = torch.full((len(uniq),), len(mask), dtype=torch.long).scatter_reduce(0, inverse, idx, "amin")
        out[first] = True
    return out


def heldout_problems(problem: torch.Tensor, heldout: float, seed: int = 0) -> torch.Tensor:
    """Which samples to hold out: every sample of a seeded ``heldout`` fraction of the problems (at least
    one problem, never all). With one problem per sample this is ``collect.heldout_samples``."""
    uniq, inverse = torch.unique(torch.as_tensor(problem, dtype=torch.long), return_inverse=True)
    if 0 < heldout < 1 and max(1, round(len(uniq) * heldout)) >= len(uniq):
        raise SteerInterpError(f"{len(uniq)} problem(s) are too few to hold out {heldout:.0%} of them; sample more "
                               "problems, or pass heldout_by='generation' (held-out rows equal to training rows are "
                               "still dropped)")
    return heldout_samples(len(uniq), heldout, seed)[inverse]


def training_rows(source: DiffActivations | ShardedDiffs, *, rows: str = "all", dedupe: bool = True,
                  heldout: float = 0.1, heldout_by: str = "problem", seed: int = 0) -> TrainingRows:
    """Split ``source`` into training and held-out rows (module docstring). ``heldout=0``: no held-out set."""
    check_source(source)
    if rows not in ROWS:
        raise SteerInterpError(f"rows={rows!r}; choose 'all' or 'completion'")
    if heldout_by not in HELDOUT_BY:
        raise SteerInterpError(f"heldout_by={heldout_by!r}; choose 'problem' or 'generation'")
    n_samples = len(source.labels)
    problem = source.problem if heldout_by == "problem" else None
    by = heldout_by if heldout_by == "generation" or problem is not None else "generation (no problem ids)"
    groups = torch.arange(n_samples) if problem is None else problem
    keys, kind, sample, sizes = [], [], [], []
    for stored, keep in _pieces(source):
        keys.append(row_keys(stored))
        kind.append(keep & (stored.in_completion if rows == "completion" else torch.ones_like(keep)))
        sample.append(stored.sample)
        sizes.append(len(stored))
    keys, kind, sample = torch.cat(keys), torch.cat(kind), torch.cat(sample)
    present = torch.zeros(n_samples, dtype=torch.bool)
    present[sample[kind]] = True  # the samples with rows of the chosen kind: only their problems are split
    held_sample = torch.zeros(n_samples, dtype=torch.bool)
    if heldout:
        held_sample[present] = heldout_problems(groups[present], heldout, seed)
    held = held_sample[sample]
    groups = groups[present]
    n_rows = len(source)
    train = kind & ~held
    heldout_rows = kind & held
    if dedupe:
        train = _first_of_each(keys, train)
    in_train = torch.isin(keys, keys[train])
    n_dup = int((heldout_rows & in_train).sum())
    heldout_rows = heldout_rows & ~in_train
    if dedupe:
        heldout_rows = _first_of_each(keys, heldout_rows)
    n_distinct = int(torch.unique(keys[kind]).numel())
    if isinstance(source, DiffActivations):
        train_view, held_view = source.select(train), source.select(heldout_rows)
    else:
        cuts = list(torch.tensor(sizes).cumsum(0)[:-1].tolist())
        split = lambda m: torch.tensor_split(m, cuts)  # noqa: E731
        train_view, held_view = source.with_row_masks(split(train)), source.with_row_masks(split(heldout_rows))
    problems_held = int(torch.unique(groups[held_sample[present]]).numel())
    return TrainingRows(train_view, held_view if heldout else None, rows, dedupe, by, n_rows, int(kind.sum()), n_distinct,
                        int(train.sum()), int(heldout_rows.sum()), n_dup, int(torch.unique(groups).numel()), problems_held)


def suggest_d_sae(n_rows: int, d_in: int, *, k: int = 32, min_firings: int = 100, max_expansion: int = 8,
                  multiple: int = 16) -> int:
    """A dictionary size for ``n_rows`` distinct training rows of width ``d_in``.

    Rule: a TopK SAE fires ``k`` latents per row, ``n_rows * k`` firings in all; for every latent to
    fire on at least ``min_firings`` rows on average (enough to estimate its direction), take
    ``d_sae = n_rows * k / min_firings``, rounded down to a multiple of ``multiple``, at least ``2 k``
    (so that TopK still selects) and at most ``max_expansion * d_in``. E.g. 5,000 distinct rows at
    k = 16 give 800 latents; the papers' scale (about 200,000 rows at k = 32, d_in = 3584) hits the
    cap of 28,672.
    """
    if n_rows < 1 or d_in < 1 or k < 1 or min_firings < 1 or max_expansion < 1 or multiple < 1:
        raise SteerInterpError("suggest_d_sae needs positive n_rows, d_in, k, min_firings, max_expansion and multiple")
    size = n_rows * k // min_firings // multiple * multiple
    low = -(-2 * k // multiple) * multiple  # 2k rounded up to the multiple
    return int(min(max(size, low), max(max_expansion * d_in, low)))
