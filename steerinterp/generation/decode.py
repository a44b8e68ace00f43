"""Steered generation (batched, left-padded, KV-cached) and teacher-forced log-probs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from steerinterp.errors import SteerInterpError
from steerinterp.generation.engines import choose_engine, expand_tl_cache, final_logits, unique_rows
from steerinterp.generation.sampling import check_sampling_args, make_generators, sample_next
from steerinterp.models.loading import prompt_bos
from steerinterp.steering.hooks import check_attached
from steerinterp.steering.positions import TokenContext
from steerinterp.steering.protocol import Steering, as_steering
from steerinterp.steering.vectors import SteeringVector
from steerinterp.types import HookedModel, model_device, pad_token_id


@dataclass
class GenerationOutput:
    """Prompts and completions of one ``generate`` call.

    ``tokens`` is [batch, prompt_len + new] with prompts left-padded to a common length and
    completions right-padded after the end-of-sequence token. The masks mark real prompt tokens,
    generated tokens (EOS included, padding excluded) and all real tokens.
    """

    tokens: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]
    prompt_mask: Bool[torch.Tensor, "batch seq"]
    completion_mask: Bool[torch.Tensor, "batch seq"]
    texts: list[str]
    prompts: list[str]
    prompt_length: int
    finished: Bool[torch.Tensor, "batch"]
    engine: str
    #: the sampler's float32 log-probability of each generated token (0 elsewhere), under
    #: softmax(logits / temperature) (temperature 1 when greedy), before any nucleus cut
    logprobs: Float[torch.Tensor, "batch seq"] | None = None

    @property
    def completion_lengths(self) -> Int[torch.Tensor, "batch"]:
        return self.completion_mask.sum(-1)

    @property
    def completion_tokens(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.completion_mask)]

    def __len__(self) -> int:
        return len(self.texts)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "completion": self.texts,
                "n_tokens": self.completion_lengths.tolist(),
                "finished": self.finished.tolist(),
            }
        )

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def encode_prompts(model: HookedModel, prompts: str | Sequence[str] | Sequence[Sequence[int]]):
    """Token ids of each prompt, as written, with the tokenizer's BOS in front where its tokenizer adds one
    (Gemma, Llama) and the text does not already begin with it (chat templates write their own). Without it
    such models degrade badly on plain-text prompts; SmolLM2-style tokenizers add none."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SteerInterpError("no prompts given")
    if all(isinstance(p, str) for p in prompts):
        ids = model.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        bos = prompt_bos(model)
        if bos is not None:
            ids = [row if row[:1] == [bos] else [bos, *row] for row in ids]
        texts = prompts
    elif all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompts):
        ids = [list(map(int, p)) for p in prompts]
        texts = [model.tokenizer.decode(p) for p in ids]
    else:
        raise SteerInterpError("prompts must be all strings or all token-id lists")
    if any(len(i) == 0 for i in ids):
        raise SteerInterpError("an empty prompt has no position to predict from; give at least one token")
    return ids, texts


def left_pad(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(i) for i in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, row in enumerate(ids):
        tokens[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[r, width - len(row) :] = 1
    return tokens.to(device), mask.to(device)


@torch.no_grad()
def generate(
    model: HookedModel,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    steering: Steering | SteeringVector | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] | None = None,
    stop_at_eos: bool = True,
    engine: str | object = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> GenerationOutput:
    """Sample completions with steering applied at every position (prompt and generated tokens).

    Args:
        prompts: strings (tokenised as written, no BOS added; see ``chat_prompts``) or token-id lists.
        steering: vectors to add; their position selectors decide prompt / generated tokens.
        temperature: 0 means greedy; the papers sample at 1.
        seed: an int seeds a private generator (the global RNG is untouched); a sequence gives one seed
            per prompt, making each completion independent of batching; None uses the global RNG.
        engine: ``auto`` (the fast HF mirror when it applies, else the HookedTransformer),
            ``hooked``, ``hf`` or ``bridge``, or an engine object (e.g. ``analysis.PatchedEngine``). All run
            the same sampler on the same logits.
        batch_size: split the prompts into chunks of this size (memory); None = all at once.
    """
    check_sampling_args(temperature, top_p)
    if max_new_tokens < 1:
        raise SteerInterpError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    vecs = as_steering(steering)
    check_attached(model)
    if vecs is not None:
        vecs.validate(model)
    ids, texts = encode_prompts(model, prompts)
    n_ctx = model.cfg.n_ctx
    if max(len(i) for i in ids) + max_new_tokens > n_ctx:
        raise SteerInterpError(
            f"longest prompt ({max(len(i) for i in ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {n_ctx}; shorten it or load the model with a larger n_ctx"
        )
    generators = make_generators(seed, len(ids), model_device(model))
    chosen = choose_engine(model, engine, vecs)
    step = batch_size or len(ids)
    chunks = []
    for i in range(0, len(ids), step):
        gens = generators if generators is None or len(generators) == 1 else generators[i : i + step]
        chunks.append(_generate_batch(model, chosen, ids[i : i + step], vecs, max_new_tokens, temperature, top_p,
                                      gens, stop_at_eos, progress))
    return _concat(chunks, texts, model, chosen.name)


def _generate_batch(model, engine, ids, vecs, max_new_tokens, temperature, top_p, generators, stop_at_eos, progress):
    device = model_device(model)
    tok = model.tokenizer
    eos = tok.eos_token_id
    pad = pad_token_id(tok)
    prompt, pmask = left_pad(ids, pad, device)
    batch = prompt.shape[0]
    # identical prompts (G samples of one problem) are prefilled once and their cache rows copied
    first, group = unique_rows(prompt, pmask)
    ctx = TokenContext.from_masks(pmask[first], pmask[first].bool())
    if bool(pmask.all()):
        ctx.valid = None  # no padding: hooks can skip masking
    lengths = pmask.sum(-1)  # tokens so far per row (unpadded)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    new_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    new_logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    full_mask = pmask
    engine.start(len(first))
    with engine.steering(vecs, ctx):
        logits = engine.forward(prompt[first], pmask[first], pmask[first])
        if len(first) < batch:
            engine.expand(group)
        logits = logits[group]
        for t in tqdm(range(max_new_tokens), disable=not progress, desc="generate", leave=False):
            nxt, logprob = sample_next(logits, temperature, top_p, generators)
            alive = ~finished
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
            new_tokens[:, t] = nxt
            new_mask[:, t] = alive.long()
            new_logprobs[:, t] = torch.where(alive, logprob, torch.zeros_like(logprob))
            if stop_at_eos and eos is not None:
                finished = finished | (alive & (nxt == eos))
            if t == max_new_tokens - 1 or bool(finished.all()):
                break
            step_mask = alive.long()[:, None]
            full_mask = torch.cat([full_mask, step_mask], dim=1)
            ctx.is_prompt = torch.zeros((batch, 1), dtype=torch.bool, device=device)
            ctx.index = torch.where(alive, lengths, torch.full_like(lengths, -1))[:, None]
            ctx.valid = None if bool(alive.all()) else alive[:, None]
            lengths = lengths + alive.long()
            logits = engine.forward(nxt[:, None], step_mask, full_mask)
    used = int(new_mask.sum(0).nonzero().max().item()) + 1 if new_mask.any() else 1
    return prompt, pmask, new_tokens[:, :used], new_mask[:, :used], finished, new_logprobs[:, :used]


def _concat(chunks, texts, model, engine_name) -> GenerationOutput:
    pad = pad_token_id(model.tokenizer)
    plen = max(c[0].shape[1] for c in chunks)
    nlen = max(c[2].shape[1] for c in chunks)
    rows_t, rows_m, rows_p, rows_c, rows_l, fin = [], [], [], [], [], []
    for prompt, pmask, new, nmask, finished, logprobs in chunks:
        b, device = prompt.shape[0], prompt.device
        lp = plen - prompt.shape[1]
        rn = nlen - new.shape[1]
        t = torch.cat([torch.full((b, lp), pad, device=device), prompt, new, torch.full((b, rn), pad, device=device)], 1)
        zl = torch.zeros((b, lp), dtype=torch.long, device=device)
        zr = torch.zeros((b, rn), dtype=torch.long, device=device)
        rows_t.append(t)
        rows_p.append(torch.cat([zl, pmask, torch.zeros_like(nmask), zr], 1).bool())
        rows_c.append(torch.cat([zl, torch.zeros_like(pmask), nmask, zr], 1).bool())
        rows_m.append(torch.cat([zl, pmask, nmask, zr], 1))
        rows_l.append(torch.cat([zl.float(), torch.zeros_like(pmask, dtype=torch.float32), logprobs, zr.float()], 1))
        fin.append(finished)
    tokens = torch.cat(rows_t)
    completion_mask = torch.cat(rows_c)
    eos = model.tokenizer.eos_token_id
    out_texts = []
    for row, m in zip(tokens, completion_mask):
        ids = row[m].tolist()
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        out_texts.append(model.tokenizer.decode(ids))
    return GenerationOutput(
        tokens=tokens,
        attention_mask=torch.cat(rows_m),
        prompt_mask=torch.cat(rows_p),
        completion_mask=completion_mask,
        texts=out_texts,
        prompts=list(texts),
        prompt_length=plen,
        finished=torch.cat(fin),
        engine=engine_name,
        logprobs=torch.cat(rows_l),
    )


@contextlib.contextmanager
def frozen_weights(model):
    """Temporarily stop gradients to the model's own parameters (restored on exit)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def teacher_forced_logprobs(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch seq"],
    completion_mask: Bool[torch.Tensor, "batch seq"],
    steering: Steering | SteeringVector | None = None,
    *,
    attention_mask: Int[torch.Tensor, "batch seq"] | None = None,
    prompt_mask: Bool[torch.Tensor, "batch seq"] | None = None,
    temperature: float = 1.0,
    train_weights: bool = False,
    skip_frozen_prefix: bool = True,
    prompt_length: int | None = None,
    batch_size: int | None = None,
    position_chunk: int | None = None,
) -> Float[torch.Tensor, "batch seq"]:
    """Log-probabilities of the completion tokens under the (steered) model.

    Entry ``[b, t]`` is ``log p(tokens[b, t] | tokens[b, :t])`` where ``completion_mask[b, t]``, else 0.
    Gradients flow to the steering tensors only (the model's weights are frozen for the pass)
    unless ``train_weights=True``. Pass a ``GenerationOutput``'s masks for left-padded batches;
    ``prompt_mask`` defaults to the real tokens before the first completion token.

    On a HookedTransformer, the blocks before the first steered layer run without autograd
    (``skip_frozen_prefix``; no gradient can flow there) and the unembedding is computed only at the
    positions that predict a completion token. With ``prompt_length`` (a ``GenerationOutput``'s:
    prompts occupy ``tokens[:, :prompt_length]``), rows that share a prompt run it once and reuse its
    keys and values through a KV cache, gradients included (RL groups: G samples per prompt).
    All of these leave the result unchanged (tested). A row with more real tokens than the model's
    context (``model.cfg.n_ctx``; padding does not count) is a ``SteerInterpError``.

    Memory: ``batch_size`` runs the rows that many at a time (one forward each) and ``position_chunk``
    unembeds that many predicting positions at a time, so no [positions, vocab] tensor is larger. By
    default, when no gradient is recorded (``torch.no_grad()``, as an analysis calls it), rows run as many
    at a time as keep one layer's attention within ``ATTENTION_BUDGET`` bytes and positions 512 at a time;
    when gradients are recorded everything runs in one pass, as before (autograd keeps every row's
    activations and log-softmax anyway). Chunks change values and gradients only by float rounding of
    products whose row count changed (tested to 1e-10 in float64).
    """
    vecs = as_steering(steering)
    if tokens.shape != completion_mask.shape:
        raise SteerInterpError(f"tokens {tuple(tokens.shape)} and completion_mask {tuple(completion_mask.shape)} differ")
    if completion_mask[:, 0].any():
        raise SteerInterpError("the first token cannot be a completion token: nothing precedes it")
    if temperature <= 0:
        raise SteerInterpError("teacher-forced log-probs need temperature > 0")
    tokens = tokens.clone()  # tokens made under inference_mode cannot be saved for backward
    completion_mask = completion_mask.bool()
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens)
    n_ctx = getattr(model.cfg, "n_ctx", None)
    lengths = attention_mask.bool().sum(-1)  # padding takes no position, so only real tokens count
    if n_ctx and tokens.shape[0] and int(lengths.max()) > n_ctx:
        row = int(lengths.argmax())
        raise SteerInterpError(
            f"{int(lengths[row])} tokens exceed the model's context of {n_ctx} (row {row}); shorten the prompt or "
            "the completion (max_new_tokens), or load the model with a larger n_ctx"
        )
    if prompt_mask is None:
        started = completion_mask.long().cumsum(-1) > 0
        prompt_mask = attention_mask.bool() & ~started
    if position_chunk is not None and position_chunk < 1:
        raise SteerInterpError(f"position_chunk must be >= 1, got {position_chunk}")
    if not torch.is_grad_enabled():
        batch_size = attention_rows(model, tokens.shape[1]) if batch_size is None else batch_size
        position_chunk = 512 if position_chunk is None else position_chunk
    position_chunk = position_chunk or max(1, int(completion_mask.sum()))
    if batch_size is not None and batch_size < 1:
        raise SteerInterpError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size is not None and tokens.shape[0] > batch_size:
        kwargs = dict(temperature=temperature, train_weights=train_weights, skip_frozen_prefix=skip_frozen_prefix,
                      prompt_length=prompt_length, position_chunk=position_chunk)
        return torch.cat([
            teacher_forced_logprobs(model, tokens[r : r + batch_size], completion_mask[r : r + batch_size], vecs,
                                    attention_mask=attention_mask[r : r + batch_size],
                                    prompt_mask=prompt_mask[r : r + batch_size], batch_size=batch_size, **kwargs)
            for r in range(0, tokens.shape[0], batch_size)
        ])
    grad_ctx = contextlib.nullcontext() if train_weights else frozen_weights(model)
    def steer_ctx():
        if vecs is None or not len(vecs):
            return contextlib.nullcontext()
        return vecs.applied(model, prompt_mask=prompt_mask, attention_mask=attention_mask)

    predicts = completion_mask[:, 1:]  # position t predicts token t + 1
    targets = tokens[:, 1:][predicts]
    layers = list(vecs.layers) if vecs is not None else []
    if prompt_length is not None:
        p = prompt_length
        if completion_mask[:, :p].any() or prompt_mask[:, p:].any() or not 0 < p < tokens.shape[1]:
            raise SteerInterpError(f"prompt_length={p} does not separate prompts from completions in these tokens")
    with grad_ctx:
        if _has_block_stack(model) and None not in layers:
            start = min(layers) if (layers and skip_frozen_prefix and not train_weights) else 0
            if prompt_length is not None:
                resid = _final_residual_shared_prompts(model, tokens, attention_mask, prompt_length, start, vecs)
            else:
                with steer_ctx():
                    resid = _final_residual(model, tokens, attention_mask, start)
            picked_resid = resid[:, :-1][predicts]  # [n_completion_tokens, d_model]
            del resid
            parts = []
            with steer_ctx():
                for c in range(0, max(1, picked_resid.shape[0]), position_chunk):  # [position_chunk, vocab] at a time
                    logits = final_logits(model, picked_resid[None, c : c + position_chunk])[0]
                    parts.append(_picked_logprobs(logits, targets[c : c + position_chunk], temperature))
                    del logits
            picked = torch.cat(parts) if len(parts) > 1 else parts[0]
        else:
            with steer_ctx():
                logits = model(tokens, attention_mask=attention_mask)[:, :-1][predicts]
            picked = _picked_logprobs(logits, targets, temperature)
    out = torch.zeros(tokens.shape, dtype=picked.dtype, device=picked.device)
    out[:, 1:][predicts] = picked
    return out


#: bytes of attention scores (float32 [rows, heads, pos, pos], times the ~5 copies TransformerLens holds at once)
#: that one forward without gradients may hold: the default row chunk of ``teacher_forced_logprobs`` and the analyses
ATTENTION_BUDGET = 512 * 2**20


def attention_rows(model: HookedModel, width: int, copies: int = 1) -> int:
    """How many rows of ``width`` positions (each run ``copies`` times) keep one layer's attention under
    ``ATTENTION_BUDGET`` (at least 1)."""
    per_row = 5 * 4 * model.cfg.n_heads * width * width * copies
    return max(1, ATTENTION_BUDGET // max(1, per_row))


#: bytes of activations that autograd may keep for one forward/backward of the RL gradient pass: the trainer runs
#: at most as many rows at a time as ``gradient_rows`` estimates fit (``STEERINTERP_GRADIENT_BUDGET`` overrides, in
#: bytes). On the embedded model 8 GiB keeps 64 rows of the 32-token tasks in one pass and runs 8 rows of 100 + 256
#: tokens at a time (``benchmarks/gradient_memory.py`` measures the cost per row); two processes fit 24 GiB.
GRADIENT_BUDGET = 8 * 2**30


def gradient_budget() -> int:
    """``GRADIENT_BUDGET``, or ``STEERINTERP_GRADIENT_BUDGET`` (bytes) when set; a one-line error if it is not a
    positive integer."""
    raw = os.environ.get("STEERINTERP_GRADIENT_BUDGET")
    if raw is None:
        return GRADIENT_BUDGET
    if not raw.strip().isdigit() or int(raw) < 1:
        raise SteerInterpError(f"STEERINTERP_GRADIENT_BUDGET={raw!r} is not a positive number of bytes; "
                               "set it to e.g. 8589934592 (8 GiB) or unset it")
    return int(raw)


def gradient_row_bytes(model: HookedModel, width: int, completion: int, layers: int | None = None) -> int:
    """Estimated bytes autograd keeps for one row of ``width`` positions, ``completion`` of them sampled, when
    ``layers`` blocks (default all) record gradients: per position and block about 2 d_model + d_mlp activations
    plus 5 copies of the attention row (n_heads x width), and float32 logits, their log-softmax and gradient
    (3 d_vocab) per completion token. ``benchmarks/gradient_memory.py`` compares it with measured peaks; prompts
    shared by a group make the real figure smaller for long prompts."""
    cfg = model.cfg
    act = torch.empty((), dtype=getattr(cfg, "dtype", torch.float32)).element_size()
    n = cfg.n_layers if layers is None else layers
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_block = act * width * (2 * cfg.d_model + d_mlp + 5 * cfg.n_heads * width)
    return n * per_block + 4 * 3 * cfg.d_vocab * completion


def gradient_rows(model: HookedModel, width: int, completion: int, limit: int, *, group: int = 1,
                  layers: int | None = None, budget: int | None = None) -> int:
    """Rows per forward/backward of the gradient pass: at most ``limit`` (the configured micro-batch), as many as
    fit ``budget`` (default ``gradient_budget()``) by ``gradient_row_bytes``, rounded down to a multiple of
    ``group`` when at least one group fits (rows that share a prompt then run it once); at least 1."""
    budget = gradient_budget() if budget is None else budget
    fit = max(1, budget // max(1, gradient_row_bytes(model, width, completion, layers)))
    rows = min(limit, fit)
    return rows - rows % group if rows >= group > 1 else rows


def _picked_logprobs(logits, targets, temperature: float):
    """log p(target) at each row of ``logits`` [n, vocab] (float32, or float64 for a float64 model)."""
    work = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(work / temperature, dim=-1)
    return logp.gather(-1, targets[:, None])[:, 0]


def _has_block_stack(model) -> bool:
    return type(model).__name__ == "HookedTransformer"


def _final_residual_shared_prompts(model, tokens, attention_mask, prompt_length: int, start: int, vecs):
    """Residual after the last block, running each distinct prompt once (KV cache copied to its rows)."""
    from transformer_lens import TransformerLensKeyValueCache

    p = prompt_length
    ptoks, pmask = tokens[:, :p], attention_mask[:, :p]
    first, group = unique_rows(ptoks, pmask)
    ctx = TokenContext.from_masks(pmask[first], pmask[first].bool())
    steer = vecs.applied(model, context=ctx) if vecs is not None and len(vecs) else contextlib.nullcontext()
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, len(first))
    with steer:
        prompt_resid = _cached_forward(model, ptoks[first], pmask[first], pmask[first], cache, start)
        expand_tl_cache(cache, group)
        ctoks, cmask = tokens[:, p:], attention_mask[:, p:]
        fresh = TokenContext.from_masks(attention_mask, torch.zeros_like(attention_mask, dtype=torch.bool))
        ctx.is_prompt, ctx.index, ctx.valid = fresh.is_prompt[:, p:], fresh.index[:, p:], fresh.valid[:, p:]
        completion_resid = _cached_forward(model, ctoks, cmask, attention_mask, cache, start)
    return torch.cat([prompt_resid[group], completion_resid], dim=1)


def _cached_forward(model, toks, new_mask, full_mask, cache, start: int):
    """Blocks 0..start-1 without autograd, then start..n-1 with it, both appending to ``cache``."""
    n = model.cfg.n_layers
    if start <= 0:
        return model(toks, attention_mask=new_mask, past_kv_cache=cache, stop_at_layer=n)
    with torch.no_grad():
        prefix = model(toks, attention_mask=new_mask, past_kv_cache=cache, stop_at_layer=start)
    # start_at_layer skips the embedding step that extends the cache's mask, so pass the full mask
    return model(prefix, start_at_layer=start, attention_mask=full_mask, past_kv_cache=cache, stop_at_layer=n)


def _final_residual(model, tokens, attention_mask, start: int):
    """Residual stream after the last block; blocks before ``start`` run without autograd."""
    n = model.cfg.n_layers
    if start <= 0:
        return model(tokens, attention_mask=attention_mask, stop_at_layer=n)
    with torch.no_grad():
        prefix = model(tokens, attention_mask=attention_mask, stop_at_layer=start)
    return model(prefix, start_at_layer=start, tokens=tokens, attention_mask=attention_mask, stop_at_layer=n)
