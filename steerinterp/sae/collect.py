"""Steering-induced activation differences on labelled generations: the DiffSAE's training data.

PAPER_NOTES section 4.6, steps 1-2: sample completions from the steered model, label each one with
the task's verifier, then teacher-force every completion with and without steering and keep

    delta(t) = h_steered(t) - h_base(t)

at the chosen hooks (``blocks.L.hook_resid_post`` by default) for the chosen positions. The papers'
exact choices are not public; the defaults here are documented in docs/sae.md:

* positions ``"completion"``: every position that predicts a completion token (the last prompt token,
  which predicts the first generated token, onward). ``"all"`` adds the prompt but never position 0,
  whose huge "attention sink" norm (about 24,000 on SmolLM2 against about 180 elsewhere) would swamp
  any SAE loss.
* one ``DiffActivations`` per hook: rows are tokens, with their sample, position and token id, and
  the sample's label and problem (``LabelledGenerations.problem_index``: the samples of one problem
  share their prompt, so their prompt rows are the same rows). ``iter_differences`` yields the same
  thing chunk by chunk for runs that do not fit in memory (``DiffActivationStore`` writes the chunks
  to disk).
* ``row_keys``: a 62-bit key per row that is equal for equal rows (the same token prefix, the same
  place relative to the prompt's end), so ``sae.rows.training_rows`` can de-duplicate them and keep
  held-out rows out of the training rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int

from steerinterp.analysis.batch import Batch, as_batch, paired_caches
from steerinterp.errors import SteerInterpError
from steerinterp.generation.decode import GenerationOutput, generate
from steerinterp.steering.vectors import DEFAULT_HOOK
from steerinterp.tasks.base import Problem, Task
from steerinterp.types import HookedModel

POSITIONS = ("completion", "all")


@dataclass
class LabelledGenerations:
    """Completions sampled from one model, each labelled correct / incorrect by the task's verifier."""

    output: GenerationOutput
    correct: Bool[torch.Tensor, "n"]
    problem_index: Int[torch.Tensor, "n"]
    problems: list[Problem]

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    def __len__(self) -> int:
        return len(self.correct)

    def to_frame(self):
        frame = self.output.to_frame()
        frame["problem"] = [self.problems[i].question for i in self.problem_index.tolist()]
        frame["correct"] = self.correct.tolist()
        return frame

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def label_generations(task: Task, problems: Sequence[Problem], output: GenerationOutput,
                      problem_index: Sequence[int] | None = None) -> LabelledGenerations:
    """Label existing completions: ``problem_index[i]`` is the problem completion ``i`` answers."""
    problems = list(problems)
    index = list(range(len(output))) if problem_index is None else [int(i) for i in problem_index]
    if len(index) != len(output):
        raise SteerInterpError(f"{len(output)} completions but {len(index)} problem indices; give one per completion")
    if index and not 0 <= min(index) <= max(index) < len(problems):
        raise SteerInterpError(f"problem_index must lie in 0..{len(problems) - 1}")
    correct = torch.tensor([task.is_correct(text, problems[i]) for text, i in zip(output.texts, index)], dtype=torch.bool)
    return LabelledGenerations(output, correct, torch.tensor(index, dtype=torch.long), problems)


def sample_labelled(model: HookedModel, task: Task, steering, *, problems: Sequence[Problem] | None = None,
                    samples_per_problem: int = 1, temperature: float = 1.0, max_new_tokens: int = 32,
                    seed: int = 0, batch_size: int = 64, progress: bool = False) -> LabelledGenerations:
    """Sample ``samples_per_problem`` completions per problem (the papers: one, at temperature 1) with
    ``steering`` applied, and label them. ``problems`` defaults to the task's training split."""
    problems = list(task.train if problems is None else problems)
    if samples_per_problem < 1:
        raise SteerInterpError(f"samples_per_problem must be >= 1, got {samples_per_problem}")
    index = [i for i in range(len(problems)) for _ in range(samples_per_problem)]
    prompts = task.prompts(model, problems)
    out = generate(model, [prompts[i] for i in index], steering=steering, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=[seed * 1_000_003 + j for j in range(len(index))],
                   batch_size=batch_size, progress=progress)
    return label_generations(task, problems, out, index)


@dataclass
class DiffActivations:
    """Differences at one hook, one row per token.

    ``sample`` indexes the generation a row came from (``labels[sample]`` is its label), ``position``
    its position in that generation's padded token row, ``token`` the token at that position and
    ``in_completion`` whether the position predicts a completion token. ``problem`` (optional, one id
    per sample) says which problem each generation answers.
    """

    hook_name: str
    delta: Float[torch.Tensor, "rows d"]
    sample: Int[torch.Tensor, "rows"]
    position: Int[torch.Tensor, "rows"]
    token: Int[torch.Tensor, "rows"]
    in_completion: Bool[torch.Tensor, "rows"]
    labels: Bool[torch.Tensor, "samples"]
    sample_tokens: list[list[int]] = field(default_factory=list)  # each sample's token row, padding = -1
    problem: Int[torch.Tensor, "samples"] | None = None  # each sample's problem id

    def __post_init__(self):
        n = self.delta.shape[0]
        for name in ("sample", "position", "token", "in_completion"):
            if getattr(self, name).shape != (n,):
                got = tuple(getattr(self, name).shape)
                raise SteerInterpError(f"DiffActivations.{name} needs one entry per row ({n}), got {got}")
        if n and int(self.sample.max()) >= len(self.labels):
            raise SteerInterpError("DiffActivations has rows of a sample without a label")
        if self.problem is not None:
            self.problem = torch.as_tensor(self.problem, dtype=torch.long).cpu()
            if self.problem.shape != self.labels.shape:
                raise SteerInterpError(f"DiffActivations.problem needs one id per sample ({len(self.labels)}), "
                                       f"got shape {tuple(self.problem.shape)}")

    def __len__(self) -> int:
        return self.delta.shape[0]

    @property
    def d_in(self) -> int:
        return self.delta.shape[1]

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    @property
    def row_labels(self) -> Bool[torch.Tensor, "rows"]:
        return self.labels[self.sample]

    def select(self, rows: torch.Tensor) -> DiffActivations:
        """The given rows (a boolean mask or indices); samples and labels are kept as they are."""
        return DiffActivations(self.hook_name, self.delta[rows], self.sample[rows], self.position[rows],
                               self.token[rows], self.in_completion[rows], self.labels, self.sample_tokens, self.problem)

    def split_samples(self, heldout: float, seed: int = 0) -> tuple[DiffActivations, DiffActivations]:
        """(train, held-out) split by whole samples, so no generation contributes to both (rows may still
        repeat across the two: the samples of one problem share their prompt rows). ``sae.rows.training_rows``
        splits by problem and de-duplicates; ``train_diff_sae`` uses it."""
        mask = heldout_samples(self.n_samples, heldout, seed)[self.sample]
        return self.select(~mask), self.select(mask)

    def parts(self) -> Iterator[DiffActivations]:
        """The rows in pieces (here: all of them at once; a store's ``ShardedDiffs`` yields shard by shard)."""
        yield self

    def mean_norm(self) -> float:
        return float(self.delta.double().norm(dim=-1).mean()) if len(self) else 0.0


def heldout_samples(n_samples: int, heldout: float, seed: int = 0) -> Bool[torch.Tensor, "samples"]:
    """Which samples to hold out: a seeded ``heldout`` fraction (at least one, never all)."""
    if not 0 < heldout < 1:
        raise SteerInterpError(f"heldout must be a fraction in (0, 1), got {heldout}")
    n_held = max(1, round(n_samples * heldout))
    if n_held >= n_samples:
        raise SteerInterpError(f"{n_samples} samples are too few to hold out {heldout:.0%} of them")
    held = torch.zeros(n_samples, dtype=torch.bool)
    held[torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))[:n_held]] = True
    return held


def _hook_names(model: HookedModel, hooks) -> list[str]:
    names = [DEFAULT_HOOK.format(layer=h) if isinstance(h, int) else str(h) for h in
             ([hooks] if isinstance(hooks, (int, str)) else list(hooks))]
    if not names:
        raise SteerInterpError("give at least one hook (a layer index or a hook name) to collect differences at")
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise SteerInterpError(f"the model has no hook point {missing[0]!r} (it has {model.cfg.n_layers} layers); "
                               "give a layer index or a name such as blocks.5.hook_resid_post")
    return names


def _row_mask(batch: Batch, positions: str) -> torch.Tensor:
    if positions not in POSITIONS:
        raise SteerInterpError(f"positions={positions!r}; choose 'completion' or 'all' (position 0 is always left out)")
    mask = batch.positions("completion" if positions == "completion" else "all").clone()
    first = batch.attention_mask.long().argmax(-1)  # each row's first real token: the attention sink
    mask[torch.arange(len(batch)), first] = False
    return mask


def iter_differences(model: HookedModel, inputs, steering, hooks, labels=None, *, positions: str = "completion",
                     base_steering=None, batch_size: int = 8, dtype: torch.dtype = torch.float32, problems=None,
                     ) -> Iterator[dict[str, DiffActivations]]:
    """Yield ``{hook_name: DiffActivations}`` for each chunk of ``batch_size`` samples, with sample
    indices counted over the whole input. ``inputs``: a ``LabelledGenerations`` (its labels and
    problem indices are used), a ``GenerationOutput`` or a ``Batch`` (then give ``labels`` and, to
    hold out by problem, ``problems``: one problem id per sample)."""
    if isinstance(inputs, LabelledGenerations):
        labels = inputs.correct if labels is None else labels
        problems = inputs.problem_index if problems is None else problems
        inputs = inputs.output
    batch = as_batch(inputs, model)
    labels = torch.zeros(len(batch), dtype=torch.bool) if labels is None else torch.as_tensor(labels, dtype=torch.bool).cpu()
    if labels.shape != (len(batch),):
        raise SteerInterpError(f"{len(batch)} samples but {labels.numel()} labels; give one label per sample")
    if problems is not None:
        problems = torch.as_tensor(problems, dtype=torch.long).cpu()
        if problems.shape != (len(batch),):
            raise SteerInterpError(f"{len(batch)} samples but {problems.numel()} problem ids; give one per sample")
    if steering is None:
        raise SteerInterpError("differences need steering: give the vectors whose effect the DiffSAE should explain")
    names = _hook_names(model, hooks)
    start = 0
    for chunk, (_, base), (_, steered) in paired_caches(model, batch, steering, names, batch_size=batch_size,
                                                       base_steering=base_steering):
        mask = _row_mask(chunk, positions).cpu()
        rows, pos = mask.nonzero(as_tuple=True)
        tokens = chunk.tokens.cpu()
        out = {}
        for name in names:
            delta = (steered[name].double() - base[name].double()).cpu()[rows, pos].to(dtype)
            out[name] = DiffActivations(name, delta, rows + start, pos, tokens[rows, pos],
                                        chunk.predicting_mask.cpu()[rows, pos], labels, [], problems)
        yield out
        start += len(chunk)


def collect_differences(model: HookedModel, inputs, steering, hooks, labels=None, *, positions: str = "completion",
                        base_steering=None, batch_size: int = 8, dtype: torch.dtype = torch.float32, problems=None,
                        ) -> dict[str, DiffActivations]:
    """All differences in memory: ``{hook_name: DiffActivations}`` (see ``iter_differences``)."""
    parts: dict[str, list[DiffActivations]] = {}
    for chunk in iter_differences(model, inputs, steering, hooks, labels, positions=positions,
                                  base_steering=base_steering, batch_size=batch_size, dtype=dtype, problems=problems):
        for name, d in chunk.items():
            parts.setdefault(name, []).append(d)
    return {name: concat_differences(ds, sample_tokens=sample_token_rows(inputs)) for name, ds in parts.items()}


def sample_token_rows(inputs) -> list[list[int]]:
    """Each sample's token row as positions index it, with padding marked -1 (for contexts)."""
    batch = as_batch(inputs.output if isinstance(inputs, LabelledGenerations) else inputs)
    return torch.where(batch.attention_mask.bool(), batch.tokens, -1).cpu().tolist()


def concat_differences(parts: Sequence[DiffActivations], *, sample_tokens: list[list[int]] | None = None) -> DiffActivations:
    """Rows of several chunks of one hook as one ``DiffActivations`` (labels of the last chunk)."""
    if not parts:
        raise SteerInterpError("no differences to concatenate")
    if len({p.hook_name for p in parts}) != 1:
        raise SteerInterpError("can only concatenate differences of one hook")
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return DiffActivations(parts[0].hook_name, cat("delta"), cat("sample"), cat("position"), cat("token"),
                           cat("in_completion"), parts[-1].labels,
                           parts[-1].sample_tokens if sample_tokens is None else sample_tokens, parts[-1].problem)


# --- equal rows -----------------------------------------------------------------------------------------
# Two polynomial hashes modulo primes below 2^31, combined into one int64 key below 2^62: products of two
# residues stay below 2^62 and sums of up to 2^31 residues below 2^63, so everything is exact int64.
_MODULI = (2_147_483_647, 2_147_483_629)
_BASES = (1_000_003, 972_663_749)


def _powers(n: int) -> list[torch.Tensor]:
    out = []
    for p, b in zip(_MODULI, _BASES):
        pw = [1]
        for _ in range(1, n):
            pw.append(pw[-1] * b % p)
        out.append(torch.tensor(pw, dtype=torch.long))
    return out


def _combine(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    return h1 * _MODULI[1] + h2


def _prefix_hashes(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per modulus, [samples, pos]: hash of each sample's real tokens (padding = -1 skipped) up to each position."""
    real = tokens >= 0
    index = (real.long().cumsum(-1) - 1).clamp(min=0)
    out = []
    for p, pw in zip(_MODULI, _powers(tokens.shape[1])):
        val = torch.where(real, (tokens + 1) % p * pw[index] % p, torch.zeros_like(tokens))
        out.append(val.cumsum(-1) % p)
    return out[0], out[1]


def _value_hashes(delta: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per modulus, [rows]: hash of each row's bytes (rows are equal only when bitwise equal)."""
    raw = delta.contiguous().view(torch.uint8).reshape(len(delta), -1)
    pows = _powers(raw.shape[1])
    out = ([], [])
    for i in range(0, len(raw), chunk):
        b = raw[i : i + chunk].long() + 1
        for m, (p, pw) in enumerate(zip(_MODULI, pows)):
            out[m].append((b * pw % p).sum(-1) % p)
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(out[0]) if out[0] else empty), (torch.cat(out[1]) if out[1] else empty)


def row_keys(d: DiffActivations) -> Int[torch.Tensor, "rows"]:
    """A key per row, equal for rows that are the same (with a chance of about 2^-62 per pair otherwise).

    With the samples' token rows (``sample_tokens``) a row is named by the tokens up to its position
    (a causal model's activation there depends on nothing else) and, for completion rows, its distance
    from the prompt's end (steering restricted to prompt or generated tokens sees that boundary); the
    same prompt prefix in two generations is then one row whatever the padding, which bitwise
    comparison of the float values would miss. Without token rows, rows are equal when their values
    are bitwise equal.
    """
    n = len(d)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    if not d.sample_tokens:
        h1, h2 = _value_hashes(d.delta)
        return _combine(h1, h2)
    samples, local = torch.unique(d.sample, return_inverse=True)
    rows = [d.sample_tokens[s] for s in samples.tolist()]
    width = max(len(r) for r in rows)
    tokens = torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
    p1, p2 = _prefix_hashes(tokens)
    h1, h2 = p1[local, d.position], p2[local, d.position]
    big = torch.iinfo(torch.long).max
    start = torch.full((len(samples),), big, dtype=torch.long).scatter_reduce(
        0, local[d.in_completion], d.position[d.in_completion], "amin")  # each sample's first completion row
    offset = torch.where(d.in_completion, d.position - start[local] + 1, torch.zeros_like(d.position))
    h1 = (h1 * _BASES[0] + offset) % _MODULI[0]
    h2 = (h2 * _BASES[1] + offset) % _MODULI[1]
    return _combine(h1, h2)
