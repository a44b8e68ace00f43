"""Next-token choice shared by every rollout engine (so equal logits give equal tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from steerinterp.errors import SteerInterpError


def check_sampling_args(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise SteerInterpError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise SteerInterpError(f"top_p must be in (0, 1], got {top_p}")


def make_generators(seed: int | Sequence[int] | None, n_rows: int, device) -> list[torch.Generator] | None:
    """One generator for the batch (an int seed), one per row (a sequence of seeds), or None (global RNG).

    Per-row seeds make each row's sample independent of which other rows share its batch, so a
    prompt's completions are the same however prompts are batched or split across processes.
    """
    if seed is None:
        return None
    if isinstance(seed, int):
        return [torch.Generator(device=device).manual_seed(seed)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n_rows:
        raise SteerInterpError(f"got {len(seeds)} seeds for {n_rows} prompts; pass one int or one seed per prompt")
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def next_tokens(
    logits: Float[torch.Tensor, "batch vocab"],
    temperature: float = 1.0,
    top_p: float = 1.0,
    generators: list[torch.Generator] | None = None,
) -> Int[torch.Tensor, "batch"]:
    """Greedy (``temperature == 0``) or temperature / nucleus sampling from last-position logits."""
    return sample_next(logits, temperature, top_p, generators)[0]


def sample_next(
    logits: Float[torch.Tensor, "batch vocab"],
    temperature: float = 1.0,
    top_p: float = 1.0,
    generators: list[torch.Generator] | None = None,
) -> tuple[Int[torch.Tensor, "batch"], Float[torch.Tensor, "batch"]]:
    """``(tokens, log-probabilities)``: the next tokens, greedy (``temperature == 0``) or sampled at
    ``temperature`` with nucleus ``top_p``, and each chosen token's float32 log-probability under
    ``softmax(logits / temperature)`` (temperature 1 when greedy) before the nucleus cut: the quantity the
    trainer's teacher-forced pass recomputes, so the two can be compared (``GenerationOutput.logprobs``).

    Sampling uses the exponential race (argmax of p_i / E_i with E_i ~ Exp(1)), an exact sampler whose
    noise can come from one generator per row.
    """
    if temperature == 0:
        chosen = logits.argmax(-1)
        full = logits.float()
        return chosen, full.gather(-1, chosen[:, None])[:, 0] - torch.logsumexp(full, -1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    kept = probs
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        kept = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    noise = torch.empty_like(kept)
    if generators is None:
        noise.exponential_()
    elif len(generators) == 1:
        noise.exponential_(generator=generators[0])
    else:
        for row, g in zip(noise, generators):
            row.exponential_(generator=g)
    chosen = (kept / noise).argmax(-1)
    return chosen, probs.gather(-1, chosen[:, None])[:, 0].log()
