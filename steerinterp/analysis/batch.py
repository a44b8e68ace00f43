"""Teacher-forced inputs for the analyses: prompt + completion tokens with their masks.

Every analysis takes a ``Batch`` (or a ``GenerationOutput``, which has the same fields): prompts
left-padded to a common length, completions right-padded, and masks marking real tokens, prompt
tokens and completion tokens. ``paired_caches`` runs a batch with and without steering, chunk by
chunk, caching only the hooks an analysis asks for, so long completions stream through memory.

Memory: TransformerLens's attention holds about five float32 ``[rows, heads, pos, pos]`` tensors at once
(scores, masked scores, pattern, its NaN-cleaned copy), 0.2 GB per row of 1,062 tokens on SmolLM2.
``rows_per_forward`` picks the default row chunk of the analyses from that and from the number of tokens,
so a forward of long sequences stays near ``generation.decode.ATTENTION_BUDGET`` bytes of attention.
Chunking rows, positions or layers does not change a result beyond float64 summation order: each row's
forward is independent of the rows beside it (bit-for-bit in float32 on CPU), the read-outs are per
position, and ``run_blocks`` running a forward block by block or from a cached residual repeats the same
operations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int

from steerinterp.errors import SteerInterpError
from steerinterp.generation.decode import attention_rows, encode_prompts
from steerinterp.steering.hooks import hook_guard, hooks_applied
from steerinterp.steering.protocol import as_steering
from steerinterp.types import HookedModel, is_bridge, model_device, pad_token_id


@dataclass
class Batch:
    """Teacher-forcing inputs: ``tokens[b] = left padding + prompt + completion + right padding``."""

    tokens: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]
    prompt_mask: Bool[torch.Tensor, "batch seq"]
    completion_mask: Bool[torch.Tensor, "batch seq"]

    def __post_init__(self):
        shapes = {tuple(t.shape) for t in (self.tokens, self.attention_mask, self.prompt_mask, self.completion_mask)}
        if len(shapes) != 1 or self.tokens.dim() != 2:
            raise SteerInterpError(f"a Batch needs tokens and masks of one [batch, seq] shape, got {sorted(shapes)}")
        if not self.prompt_mask.any(-1).all():
            raise SteerInterpError("every row of a Batch needs at least one prompt token")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def last_prompt_index(self) -> Int[torch.Tensor, "batch"]:
        """Index of each row's last prompt token: its logits predict the first generated token."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return torch.where(self.prompt_mask.bool(), pos, -1).max(-1).values

    @property
    def predicting_mask(self) -> Bool[torch.Tensor, "batch seq"]:
        """Positions whose next token is a completion token (the last prompt token onward)."""
        out = torch.zeros_like(self.completion_mask, dtype=torch.bool)
        out[:, :-1] = self.completion_mask[:, 1:].bool()
        return out

    def positions(self, which: str) -> Bool[torch.Tensor, "batch seq"]:
        """Mask of the analysed positions: ``"first"`` (the last prompt token, predicting the first
        generated token), ``"completion"`` (every position predicting a completion token) or ``"all"``."""
        if which == "first":
            mask = torch.zeros_like(self.completion_mask, dtype=torch.bool)
            mask[torch.arange(len(self)), self.last_prompt_index] = True
            return mask
        if which == "completion":
            return self.predicting_mask
        if which == "all":
            return self.attention_mask.bool()
        raise SteerInterpError(
            f"positions={which!r}; choose 'first' (predicting the first generated token), 'completion' or 'all'")

    def rows(self, index: slice) -> Batch:
        return Batch(self.tokens[index], self.attention_mask[index], self.prompt_mask[index], self.completion_mask[index])

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.tokens, self.attention_mask, self.prompt_mask, self.completion_mask)))


#: tokens (rows x positions) one forward of an analysis may hold: what the analyses cache per token scales with it
TOKEN_BUDGET = 4096


def budget_rows(model: HookedModel, width: int) -> int:
    """Rows of ``width`` positions that one forward may run: one layer's attention under ``ATTENTION_BUDGET``
    bytes (float32 [rows, heads, pos, pos], about five copies alive at once in TransformerLens) and at most
    ``TOKEN_BUDGET`` tokens; at least 1."""
    return max(1, min(attention_rows(model, width), TOKEN_BUDGET // max(1, width)))


def rows_per_forward(model: HookedModel, batch: Batch, batch_size: int | None = None) -> int:
    """Sequences per forward pass: ``batch_size`` when given, else ``budget_rows`` (at most the batch).
    Results never depend on it."""
    if batch_size is not None:
        if batch_size < 1:
            raise SteerInterpError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    return max(1, min(len(batch), budget_rows(model, batch.tokens.shape[1])))


def row_chunks(model: HookedModel, batch: Batch, batch_size: int | None = None) -> Iterator[Batch]:
    """The batch in chunks of ``rows_per_forward`` sequences."""
    step = rows_per_forward(model, batch, batch_size)
    for start in range(0, len(batch), step):
        yield batch.rows(slice(start, start + step))


def selected_chunks(mask: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, positions)`` index pairs of the True entries of a [batch, pos] mask, ``chunk`` at a time (row-major)."""
    if chunk < 1:
        raise SteerInterpError(f"position_chunk must be >= 1, got {chunk}")
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    for s in range(0, len(b_idx), chunk):
        yield b_idx[s : s + chunk], t_idx[s : s + chunk]


@runtime_checkable
class TokenBatch(Protocol):
    """Anything with a batch's tokens and masks (``Batch``, ``GenerationOutput``)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    completion_mask: torch.Tensor


def as_batch(inputs, model: HookedModel | None = None) -> Batch:
    """A ``Batch`` from a ``Batch`` or a ``GenerationOutput`` (its tokens and masks).

    With ``model``, a row with more real tokens than the model's context (``model.cfg.n_ctx``) is a
    ``SteerInterpError`` (the forward pass would fail with an IndexError). Padding does not count.
    """
    if isinstance(inputs, Batch):
        batch = inputs
    elif isinstance(inputs, TokenBatch):
        batch = Batch(inputs.tokens, inputs.attention_mask, inputs.prompt_mask, inputs.completion_mask)
    else:
        raise SteerInterpError(
            f"expected a Batch or a GenerationOutput, got {type(inputs).__name__}; "
            "build one with steerinterp.analysis.teacher_forcing_batch(model, prompts, completions)"
        )
    n_ctx = getattr(model.cfg, "n_ctx", None) if model is not None else None
    if n_ctx and len(batch):
        lengths = batch.attention_mask.bool().sum(-1)
        row = int(lengths.argmax())
        if int(lengths[row]) > n_ctx:
            raise SteerInterpError(
                f"{int(lengths[row])} tokens exceed the model's context of {n_ctx} (row {row} of the batch); "
                "shorten its prompt or completion, or load the model with a larger n_ctx"
            )
    return batch


def teacher_forcing_batch(model: HookedModel, prompts: Sequence[str], completions: Sequence[str]) -> Batch:
    """Tokenise prompts and completions (no special tokens added) into a left/right-padded ``Batch``.

    Prompt and completion are tokenised separately, as generation produces them (a completion starts
    a new token); for completions sampled by ``si.generate``, pass its ``GenerationOutput`` directly.
    """
    prompts, completions = list(prompts), list(completions)
    if len(prompts) != len(completions):
        raise SteerInterpError(f"{len(prompts)} prompts but {len(completions)} completions; give one completion per prompt")
    p_ids, _ = encode_prompts(model, prompts)
    c_ids = model.tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
    if any(len(c) == 0 for c in c_ids):
        raise SteerInterpError("an empty completion has no tokens to analyse; drop it or give at least one token")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(range(len(p_ids)), key=lambda r: len(p_ids[r]) + len(c_ids[r]))
    if n_ctx and len(p_ids[longest]) + len(c_ids[longest]) > n_ctx:
        raise SteerInterpError(
            f"{len(p_ids[longest]) + len(c_ids[longest])} tokens exceed the model's context of {n_ctx} (prompt "
            f"{longest}: {len(p_ids[longest])} prompt + {len(c_ids[longest])} completion tokens); shorten the prompt "
            "or completion, or load the model with a larger n_ctx"
        )
    p_len = max(len(p) for p in p_ids)
    width = p_len + max(len(c) for c in c_ids)
    pad = pad_token_id(model.tokenizer)
    n = len(prompts)
    tokens = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    pmask = torch.zeros((n, width), dtype=torch.bool)
    cmask = torch.zeros((n, width), dtype=torch.bool)
    for r, (p, c) in enumerate(zip(p_ids, c_ids)):
        tokens[r, p_len - len(p) : p_len] = torch.tensor(p)
        tokens[r, p_len : p_len + len(c)] = torch.tensor(c)
        attn[r, p_len - len(p) : p_len + len(c)] = 1
        pmask[r, p_len - len(p) : p_len] = True
        cmask[r, p_len : p_len + len(c)] = True
    device = model_device(model)
    return Batch(tokens, attn, pmask, cmask).to(device)


def steering_context(model: HookedModel, steering, batch: Batch):
    """``steering.applied(...)`` with the batch's masks, or a no-op for ``None``."""
    vecs = as_steering(steering)
    if vecs is None or not len(vecs):
        return contextlib.nullcontext()
    return vecs.applied(model, prompt_mask=batch.prompt_mask, attention_mask=batch.attention_mask)


@torch.no_grad()
def run_cached(model: HookedModel, batch: Batch, steering, names_filter: Callable[[str], bool] | Sequence[str],
               *, logits: bool = False):
    """One forward over a batch with the given steering; returns ``(logits or None, cache)``.

    No hook outlives the call, even an interrupted one: on a HookedTransformer the caching hooks are
    TransformerLens's own (``get_caching_hooks``) but added and removed by ``hooks_applied`` (TransformerLens's
    ``hooks()`` context can be cut short by Ctrl-C and leaves its context level raised); other models run
    ``run_with_cache`` inside ``hook_guard``."""
    kwargs = {"attention_mask": batch.attention_mask, "return_type": "logits" if logits else None}
    if is_bridge(model):
        with hook_guard(model), steering_context(model, steering, batch):
            return model.run_with_cache(batch.tokens, names_filter=names_filter, **kwargs)
    from transformer_lens import ActivationCache

    cache_dict, fwd, _ = model.get_caching_hooks(names_filter)
    with steering_context(model, steering, batch), hooks_applied(model, fwd):
        out = model(batch.tokens, **kwargs)
    return out, ActivationCache(cache_dict, model)


@torch.no_grad()
def run_blocks(model: HookedModel, batch: Batch, steering, names_filter: Callable[[str], bool] | Sequence[str] | None = None,
               *, hooks: Sequence[tuple[str, object]] = (), start: int = 0, resid: torch.Tensor | None = None,
               stop: int | None = None) -> tuple[torch.Tensor, dict]:
    """Blocks ``start`` .. ``stop - 1`` of a HookedTransformer over ``batch`` with ``steering`` and extra
    ``hooks`` on; returns the residual after block ``stop - 1`` (default: the last block; before
    ``ln_final``) and ``{name: activation}`` of the hooks in ``names_filter``.

    ``resid`` is the residual entering block ``start`` (e.g. a cached ``blocks.{start-1}.hook_resid_post``);
    without it the forward starts from the tokens' embedding (``start`` must then be 0). Hooks of the
    skipped blocks do not run, so a cached residual must come from a run that agrees with this one up to
    there. The same operations as the full forward: the results are bit-for-bit those of one pass.
    """
    n = model.cfg.n_layers
    stop = n if stop is None else stop
    if resid is None and start != 0:
        raise SteerInterpError(f"starting at block {start} needs the residual entering it")
    if is_bridge(model):
        return _bridge_blocks(model, batch, steering, names_filter, hooks, start, resid, stop)
    cache_dict, caching = {}, []
    if names_filter is not None:
        cache_dict, caching, _ = model.get_caching_hooks(names_filter)
    with steering_context(model, steering, batch), hooks_applied(model, list(hooks) + list(caching)):
        if resid is None:
            out = model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop)
        else:
            out = model(resid, start_at_layer=start, tokens=batch.tokens, attention_mask=batch.attention_mask,
                        stop_at_layer=stop)
    return out, cache_dict


def _bridge_blocks(model, batch: Batch, steering, names_filter, hooks, start: int, resid, stop: int):
    """``run_blocks`` on a TransformerBridge, which cannot start a forward at a block: the forward runs from
    the tokens and a hook on ``blocks.{start-1}.hook_resid_post`` (after the steering's own hooks there)
    replaces the residual with ``resid``, so blocks ``start`` on see exactly what ``start_at_layer`` would
    give them; the blocks before run for nothing. The residual after block ``stop - 1`` is read by a hook
    added after all others."""
    n = model.cfg.n_layers
    wanted = names_filter if callable(names_filter) else (set(names_filter) if names_filter is not None else set())
    keep = (lambda name: wanted(name)) if callable(wanted) else (lambda name: name in wanted)
    cache_dict: dict[str, torch.Tensor] = {}

    def store(name):
        def fn(act, hook):
            cache_dict[name] = act.detach()
            return None

        return fn

    pairs = []
    if resid is not None and start > 0:
        pairs.append((f"blocks.{start - 1}.hook_resid_post", lambda act, hook: resid.to(act.dtype)))
    pairs += list(hooks)
    pairs += [(name, store(name)) for name in model.hook_dict if keep(name)]
    out: dict[str, torch.Tensor] = {}

    def final(act, hook):
        out["resid"] = act.detach()
        return None

    pairs.append((f"blocks.{stop - 1}.hook_resid_post", final))
    with steering_context(model, steering, batch), hooks_applied(model, pairs):
        model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop if stop < n else None,
              return_type=None if stop == n else "logits")
    return out["resid"], cache_dict


def entering(layer: int) -> str:
    """The hook whose cached value is the residual entering block ``layer`` (``layer`` >= 1)."""
    return f"blocks.{layer - 1}.hook_resid_post"


def paired_caches(
    model: HookedModel,
    inputs,
    steering,
    names_filter: Callable[[str], bool] | Sequence[str],
    *,
    batch_size: int | None = None,
    logits: bool = False,
    base_steering=None,
) -> Iterator[tuple[Batch, tuple, tuple]]:
    """Yield ``(chunk, (base_logits, base_cache), (steered_logits, steered_cache))`` chunk by chunk.

    Only the hooks in ``names_filter`` are cached. ``base_steering`` (default none) is what the
    reference run carries, e.g. the other vectors when isolating one layer's contribution.
    ``batch_size``: sequences per chunk (default ``rows_per_forward``). A chunk's caches are emptied
    when the loop moves on to the next chunk (so two chunks never share memory): keep what you need
    by computing from them inside the loop.
    """
    batch = as_batch(inputs, model)
    step = rows_per_forward(model, batch, batch_size)
    for start in range(0, len(batch), step):
        chunk = batch.rows(slice(start, start + step))
        base = run_cached(model, chunk, base_steering, names_filter, logits=logits)
        steered = run_cached(model, chunk, steering, names_filter, logits=logits)
        try:
            yield chunk, base, steered
        finally:
            for _, cache in (base, steered):
                cache_dict = getattr(cache, "cache_dict", None)
                if isinstance(cache_dict, dict):
                    cache_dict.clear()
            del base, steered


def token_strings(model: HookedModel, ids) -> list[str]:
    """Each id decoded on its own (``" To"``, ``"\\n"``), one string per id."""
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    return model.tokenizer.batch_decode([[i] for i in ids])
