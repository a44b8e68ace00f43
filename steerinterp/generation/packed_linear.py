"""Decode-shaped products in bfloat16 on a CPU: oneDNN linear layers with pre-packed weights.

A decode step multiplies a few rows (the batch) by every weight matrix. In bfloat16 on a CPU, ``F.linear``
hands oneDNN the plain [out, in] weight and oneDNN reorders it into its blocked layout on every call, a large
share of a small-M product. ``torch.ops.mkldnn._reorder_linear_weight`` does that reorder once (the op
``torch.compile`` uses for frozen CPU weights), and ``torch.ops.mkldnn._linear_pointwise`` multiplies by the
packed copy: the same numbers, bit for bit, in less time per decode step; packing every weight once costs about
what 30 packed steps save, so ``HFEngine`` packs only once a generation has run ``PACK_AFTER_STEPS`` decode steps,
and only for batches of up to ``PACK_MAX_ROWS`` rows: on the embedded model sampling was faster packed at batch 1
and 8, and not at batch 64 in development runs, though each product alone was faster (``benchmarks/generation.py``
times the fast engine both ways; results in docs/benchmarks.md).

The mirror's linear layers are ``PackableLinear``; ``packed_weights(module, rows)`` attaches packed copies
for the length of a block and removes them after it, also when interrupted. Packing is used only where it is
exact: each distinct weight shape is first multiplied both ways on a probe input and the results must be
equal bit for bit (``packing_unavailable`` says why not otherwise, and the plain product is used). Packed
copies hold as many elements as the weights (the model's size again, for the length of one ``generate``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from steerinterp.steering.hooks import interrupts_deferred


class PackableLinear(torch.nn.Linear):
    """``nn.Linear`` that multiplies by a oneDNN pre-packed copy of its weight while ``packed_weights`` has
    attached one (``packed``), and is a plain ``nn.Linear`` otherwise."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _packable(root: torch.nn.Module) -> list[PackableLinear]:
    return [m for m in root.modules() if isinstance(m, PackableLinear)]


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def packing_unavailable_here() -> str | None:
    """Why this torch build cannot pack bfloat16 linear weights (no oneDNN bfloat16 linear), or None."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN"
    try:  # resolving an operator this build lacks raises
        torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise  # noqa: B018
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        supported = False
    return None if supported else "this torch build has no oneDNN bfloat16 linear"


def packing_applies(root: torch.nn.Module) -> bool:
    """Whether ``root`` has ``PackableLinear`` layers with bfloat16 weights on a CPU (what packing is for)."""
    layers = _packable(root)
    return bool(layers) and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.bfloat16 for m in layers)


def packing_unavailable(root: torch.nn.Module, rows: int) -> str | None:
    """Why ``root``'s ``PackableLinear`` layers cannot use packed weights for ``rows``-row products (None when
    they can): not bfloat16 on a CPU, no oneDNN bfloat16 support in this torch build, or a packed product that
    is not bit-equal to ``F.linear`` on a probe input (each distinct weight shape, 1 and ``rows`` rows)."""
    if not packing_applies(root):
        return "packing is for bfloat16 linear layers on a CPU"
    unavailable = packing_unavailable_here()
    if unavailable is not None:
        return unavailable
    layers = _packable(root)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    with torch.no_grad():
        for m in layers:
            key = (tuple(m.weight.shape), m.bias is None, m.weight.dtype)
            if key in seen:
                continue
            seen.add(key)
            packed = _pack(m.weight, rows)
            for n in sorted({1, rows}):
                x = torch.randn(n, 1, m.in_features, generator=gen).to(m.weight.dtype)
                want = torch.nn.functional.linear(x, m.weight, m.bias)
                got = torch.ops.mkldnn._linear_pointwise(x, packed, m.bias, "none", [], "")
                if not torch.equal(want, got):
                    return (f"the packed product of a {m.out_features}x{m.in_features} weight differs from F.linear "
                            f"at {n} rows (max {(want.float() - got.float()).abs().max().item():.2e})")
    return None


@contextlib.contextmanager
def packed_weights(root: torch.nn.Module, rows: int) -> Iterator[int]:
    """Attach a packed copy of its weight to every ``PackableLinear`` of ``root`` for ``rows``-row products,
    yield how many were packed, and remove them all on leaving the block (interrupts included). Use only when
    ``packing_unavailable(root, rows)`` is None."""
    layers = _packable(root)
    try:
        with torch.no_grad():
            for m in layers:
                packed = _pack(m.weight, rows)
                with interrupts_deferred():
                    m.packed = packed
        yield len(layers)
    finally:
        with interrupts_deferred():
            for m in layers:
                m.__dict__.pop("packed", None)
