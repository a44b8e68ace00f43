"""Multiple-testing correction shared by the analyses (language shares) and the DiffSAE feature tests."""

from __future__ import annotations

import torch


def benjamini_hochberg(p) -> torch.Tensor:
    """Benjamini-Hochberg q-values (false discovery rate) of a vector of p-values.

    ``q_(i) = min_{j >= i} p_(j) * m / j`` over the sorted p-values, capped at 1 (the same numbers as
    ``scipy.stats.false_discovery_control(p, method="bh")``). NaN p-values (tests that could not be
    run) keep NaN q-values and do not count towards ``m``.
    """
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    q = torch.full_like(p, float("nan"))
    ok = ~torch.isnan(p)
    vals = p[ok]
    n = vals.numel()
    if n == 0:
        return q
    order = torch.argsort(vals, stable=True)
    ranked = vals[order] * n / torch.arange(1, n + 1, dtype=torch.float64)
    q_sorted = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    out = torch.empty_like(vals)
    out[order] = q_sorted
    q[ok] = out
    return q
