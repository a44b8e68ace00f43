"""Differences on disk, for runs larger than memory, and the shuffled batch streams SAE training reads.

``write_difference_store(directory, chunks, labels)`` writes the chunks of ``iter_differences`` as
safetensors shards, one folder per hook, each shard written to a temporary name and renamed, and
the metadata last, so a store that has ``meta.json`` is complete. ``DiffActivationStore(directory)``
opens it; ``store[hook]`` is a ``ShardedDiffs`` that loads shards one at a time.

``activation_batches(source, batch_size, seed=...)`` is the endless, seeded stream of shuffled rows
that sae-lens's trainer consumes, from memory (a ``DiffActivations``) or from shards (a shuffle
buffer of whole shards). Batch ``i`` of a stream depends only on the seed and ``i``, which is what
lets an interrupted SAE training resume on the exact batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file

from steerinterp._files import give_plain_modes
from steerinterp.errors import SteerInterpError
from steerinterp.sae.collect import DiffActivations, concat_differences, heldout_samples

META = "meta.json"
FIELDS = ("delta", "sample", "position", "token", "in_completion")


def _folder(hook_name: str) -> str:
    return hook_name.replace("/", "_")


def write_difference_store(directory, chunks: Iterable[dict[str, DiffActivations]], *, labels,
                           sample_tokens: list[list[int]] | None = None, problems=None, info: dict | None = None) -> Path:
    """Write each chunk's differences as one shard per hook; returns the directory.

    ``labels``: one bool per sample (``LabelledGenerations.correct``); ``sample_tokens``: each
    sample's token row (for ``top_contexts``, and to recognise equal rows); ``problems``: one problem
    id per sample (``LabelledGenerations.problem_index``; default: the chunks' own, if they carry
    them), to hold out by problem; ``info``: anything JSON-serialisable to keep with it.
    """
    directory = Path(directory)
    if (directory / META).exists():
        raise SteerInterpError(f"{directory} already holds a difference store; choose a new directory or delete it")
    directory.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[int]] = {}
    d_in: dict[str, int] = {}
    for i, chunk in enumerate(chunks):
        for name, d in chunk.items():
            if problems is None and d.problem is not None:
                problems = d.problem
            folder = directory / _folder(name)
            folder.mkdir(exist_ok=True)
            path = folder / f"shard_{i:05d}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file({f: getattr(d, f).contiguous() for f in FIELDS}, str(tmp))
            give_plain_modes(tmp)  # safetensors writes it owner-only
            os.replace(tmp, path)
            shards.setdefault(name, []).append(len(d))
            d_in[name] = d.d_in
    if not shards:
        raise SteerInterpError("no differences were produced; the inputs were empty")
    labels = torch.as_tensor(labels, dtype=torch.bool).tolist()
    if problems is not None:
        problems = torch.as_tensor(problems, dtype=torch.long).tolist()
        if len(problems) != len(labels):
            raise SteerInterpError(f"{len(labels)} labels but {len(problems)} problem ids; give one per sample")
    meta = {"hooks": {name: {"folder": _folder(name), "rows": rows, "d_in": d_in[name]} for name, rows in shards.items()},
            "labels": labels, "sample_tokens": sample_tokens or [], "problems": problems, "info": info or {}}
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / META)
    return directory


@dataclass
class ShardedDiffs:
    """One hook's differences on disk; ``sample_mask`` (if set) keeps only those samples' rows and
    ``row_masks`` (if set, one per shard, over the shard's stored rows) only those rows."""

    directory: Path
    hook_name: str
    shard_rows: list[int]
    d_in: int
    labels: Bool[torch.Tensor, "samples"]
    sample_tokens: list[list[int]]
    sample_mask: Bool[torch.Tensor, "samples"] | None = None
    problem: torch.Tensor | None = None  # one problem id per sample
    row_masks: tuple[torch.Tensor, ...] | None = None

    @property
    def n_shards(self) -> int:
        return len(self.shard_rows)

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    def stored_shard(self, i: int) -> DiffActivations:
        """Shard ``i`` as stored, every row (no mask applied)."""
        path = self.directory / _folder(self.hook_name) / f"shard_{i:05d}.safetensors"
        try:
            t = load_file(str(path))
        except FileNotFoundError:
            raise SteerInterpError(f"shard {path} is missing; the difference store is incomplete") from None
        return DiffActivations(self.hook_name, *(t[f] for f in FIELDS), self.labels, self.sample_tokens, self.problem)

    def kept_rows(self, i: int, stored: DiffActivations | None = None) -> Bool[torch.Tensor, "rows"]:
        """Which of shard ``i``'s stored rows this view keeps."""
        stored = self.stored_shard(i) if stored is None else stored
        keep = torch.ones(len(stored), dtype=torch.bool) if self.row_masks is None else self.row_masks[i]
        return keep if self.sample_mask is None else keep & self.sample_mask[stored.sample]

    def with_row_masks(self, masks) -> ShardedDiffs:
        """The same store keeping only ``masks[i]`` of shard ``i``'s stored rows (and what this view keeps)."""
        masks = tuple(torch.as_tensor(m, dtype=torch.bool) for m in masks)
        if [len(m) for m in masks] != list(self.shard_rows):
            raise SteerInterpError(f"row masks need one entry per stored row of each of the {self.n_shards} shards")
        if self.row_masks is not None:
            masks = tuple(m & old for m, old in zip(masks, self.row_masks))
        return dataclasses.replace(self, row_masks=masks)

    def shard(self, i: int) -> DiffActivations:
        d = self.stored_shard(i)
        if self.row_masks is None and self.sample_mask is None:
            return d
        return d.select(self.kept_rows(i, d))

    def __len__(self) -> int:
        if self.sample_mask is None:
            return sum(self.shard_rows) if self.row_masks is None else sum(int(m.sum()) for m in self.row_masks)
        return sum(len(part) for part in self.parts())

    def parts(self) -> Iterator[DiffActivations]:
        """The shards one at a time (only one is in memory)."""
        for i in range(self.n_shards):
            yield self.shard(i)

    def load(self) -> DiffActivations:
        """Every shard in memory as one ``DiffActivations``."""
        return concat_differences(list(self.parts()), sample_tokens=self.sample_tokens)

    def split_samples(self, heldout: float, seed: int = 0) -> tuple[ShardedDiffs, ShardedDiffs]:
        """(train, held-out) views split by whole samples, with the same rule as ``DiffActivations``."""
        held = heldout_samples(self.n_samples, heldout, seed)
        keep = torch.ones_like(held) if self.sample_mask is None else self.sample_mask
        return tuple(dataclasses.replace(self, sample_mask=m & keep) for m in (~held, held))


class DiffActivationStore:
    """A difference store written by ``write_difference_store``; ``store[hook]`` -> ``ShardedDiffs``."""

    def __init__(self, directory):
        self.directory = Path(directory)
        meta_path = self.directory / META
        if not meta_path.exists():
            raise SteerInterpError(f"{self.directory} is not a complete difference store (no {META}); "
                                   "write one with steerinterp.sae.write_difference_store")
        self.meta = json.loads(meta_path.read_text())
        self.labels = torch.tensor(self.meta["labels"], dtype=torch.bool)

    @property
    def hooks(self) -> list[str]:
        return list(self.meta["hooks"])

    @property
    def info(self) -> dict:
        return self.meta["info"]

    def __getitem__(self, hook) -> ShardedDiffs:
        name = f"blocks.{hook}.hook_resid_post" if isinstance(hook, int) else hook
        if name not in self.meta["hooks"]:
            raise SteerInterpError(f"this store has no differences at {name!r}; it has {', '.join(self.hooks)}")
        h = self.meta["hooks"][name]
        problems = self.meta.get("problems")
        return ShardedDiffs(self.directory, name, list(h["rows"]), int(h["d_in"]), self.labels, self.meta["sample_tokens"],
                            problem=None if problems is None else torch.tensor(problems, dtype=torch.long))


def check_source(source) -> None:
    """Differences in memory or on disk, or a one-line error."""
    if not isinstance(source, (DiffActivations, ShardedDiffs)):
        raise SteerInterpError(f"expected DiffActivations or a store's ShardedDiffs, got {type(source).__name__}")


def activation_batches(source: DiffActivations | ShardedDiffs, batch_size: int, *, seed: int = 0,
                       start_batch: int = 0, buffer_shards: int = 16) -> Iterator[Float[torch.Tensor, "batch d"]]:
    """Endless seeded stream of shuffled ``[batch_size, d_in]`` rows (epoch after epoch).

    In memory every epoch is one permutation of all rows; from shards, epochs visit shards in a
    seeded order and shuffle the rows of ``buffer_shards`` shards at a time. ``start_batch`` skips
    the first batches exactly (a resumed run continues the same stream).
    """
    check_source(source)
    if batch_size < 1:
        raise SteerInterpError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise SteerInterpError(f"no rows at {source.hook_name} to train on")
    produced = 0
    buf, offset = None, 0
    for block in _row_stream(source, seed, buffer_shards):
        if buf is not None and offset < len(buf):  # fewer than batch_size rows left over: carry them
            block = torch.cat([buf[offset:], block])
        buf, offset = block, 0
        while len(buf) - offset >= batch_size:  # batches are views of the shuffled block, not copies
            if produced >= start_batch:
                yield buf[offset : offset + batch_size]
            offset += batch_size
            produced += 1


def _row_stream(source, seed: int, buffer_shards: int) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        if isinstance(source, DiffActivations):
            yield source.delta[torch.randperm(len(source), generator=g)]
        else:
            order = torch.randperm(source.n_shards, generator=g).tolist()
            for i in range(0, len(order), buffer_shards):
                buf = torch.cat([source.shard(j).delta for j in order[i : i + buffer_shards]])
                if len(buf):
                    yield buf[torch.randperm(len(buf), generator=g)]
        epoch += 1
