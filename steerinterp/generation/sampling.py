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

    Sampling inverts the cumulative distribution: one uniform draw per row (from that row's generator when
    there is one per row), located in the float64 running sum of the probabilities. Exact to float64 rounding
    (a token of probability zero is never chosen), and one random number per row rather than one per
    vocabulary entry, as the exponential race this sampler replaced drew (a large share of a CPU decode step
    at batch 64 on the embedded model's 49,152 tokens).
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
    cdf = torch.cumsum(kept, -1, dtype=torch.float64)
    total = cdf[:, -1]
    # u * total < total, also after rounding: the chosen entry is one where the running sum rises (p > 0)
    target = torch.minimum(uniforms(kept.shape[0], generators, kept.device) * total,
                           torch.nextafter(total, torch.zeros_like(total)))
    chosen = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
    return chosen, probs.gather(-1, chosen[:, None])[:, 0].log()


def uniforms(n: int, generators: list[torch.Generator] | None, device) -> Float[torch.Tensor, "n"]:
    """``n`` float64 draws from [0, 1): from the global RNG, one generator, or one generator per row."""
    if generators is None:
        return torch.rand(n, dtype=torch.float64, device=device)
    if len(generators) == 1:
        return torch.rand(n, dtype=torch.float64, device=device, generator=generators[0])
    return torch.cat([torch.rand(1, dtype=torch.float64, device=device, generator=g) for g in generators])
