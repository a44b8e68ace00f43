"""Which dtype a model runs in: bfloat16 where the hardware multiplies it fast, float32 otherwise.

``load_model(dtype="auto")`` (the default) and ``--dtype auto`` resolve through ``resolve_dtype``:

* on CUDA: bfloat16 when the GPU supports it, else float32;
* on a CPU with AMX-BF16 or AVX512-BF16 (recent Xeons): bfloat16, whose large matrix products run several
  times faster there (docs/benchmarks.md, ``benchmarks/precision.py``);
* on any other CPU: float32 (bfloat16 is emulated there and far slower than float32).

The environment variable ``STEERINTERP_DTYPE`` (``float32``, ``bfloat16``, ...) overrides the automatic choice,
e.g. to reproduce float32 numbers on a bfloat16 machine; an explicit ``dtype=`` always wins. Steering vectors and
optimizer state stay float32 whatever the model's dtype (``steering.vectors.vector_dtype``), and the resolved
dtype is what a run directory records (``ModelSpec.dtype``), so resuming never re-guesses.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from steerinterp.errors import ModelLoadError

AUTO = "auto"
#: environment variable that replaces the automatic choice (not an explicit ``dtype=``)
DTYPE_ENV = "STEERINTERP_DTYPE"
#: CPU flags (as /proc/cpuinfo spells them) whose presence makes bfloat16 the fast dtype
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "float64")
#: the half-precision dtypes (2-3 significant digits)
HALF_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and the reason for it (``models.dtype_choice(model)``; shown by the demo and reports)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpuinfo_field(field: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first value of ``field`` ("flags", "model name") in /proc/cpuinfo, or None (absent, e.g. on macOS)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return None


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo, e.g. macOS)."""
    return frozenset((cpuinfo_field("flags", path) or "").split())


def cpu_name(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where there is no /proc/cpuinfo)."""
    import platform

    return cpuinfo_field("model name", path) or platform.processor() or platform.machine()


def cpu_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """Which of ``BF16_CPU_FLAGS`` this CPU has (AMX tiles first)."""
    have = cpu_flags() if flags is None else flags
    return [f for f in BF16_CPU_FLAGS if f in have]


def parse_dtype(name: str | torch.dtype) -> torch.dtype | str:
    """``torch.dtype`` for a dtype or its name (``"bfloat16"``, ``"torch.float32"``, ``"bf16"``), or ``"auto"``."""
    if isinstance(name, torch.dtype):
        return name
    text = str(name).strip().lower().removeprefix("torch.")
    text = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16", "half": "float16", "fp64": "float64"}.get(
        text, text)
    if text == AUTO:
        return AUTO
    dtype = getattr(torch, text, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype {name!r} is not a floating-point torch dtype; use one of {', '.join(DTYPE_NAMES)}")
    return dtype


def automatic_dtype(device: str | torch.device, *, flags: frozenset[str] | None = None,
                    environ: dict | None = None) -> DtypeChoice:
    """The dtype ``"auto"`` means on ``device``, and why (``flags`` / ``environ`` for tests)."""
    env = os.environ if environ is None else environ
    override = env.get(DTYPE_ENV, "").strip()
    if override and override.lower() != AUTO:
        try:
            dtype = parse_dtype(override)
        except ModelLoadError as e:
            raise ModelLoadError(f"{DTYPE_ENV}={override!r}: {e}") from None
        return DtypeChoice(dtype, f"{DTYPE_ENV}={override}")
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "a CUDA device with bfloat16 support")
        return DtypeChoice(torch.float32, "a CUDA device without bfloat16 support")
    if device.type == "cpu":
        fast = cpu_bf16_flags(flags)
        if fast:
            return DtypeChoice(torch.bfloat16, f"the CPU has {' and '.join(fast)}")
        return DtypeChoice(torch.float32, "the CPU has neither amx_bf16 nor avx512_bf16 (bfloat16 would be emulated)")
    return DtypeChoice(torch.float32, f"{device.type} device: float32 is the safe default")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> DtypeChoice:
    """A ``dtype=`` argument (a dtype, a name, ``"auto"`` or None = auto) resolved for ``device``."""
    parsed = AUTO if dtype is None else parse_dtype(dtype)
    if parsed == AUTO:
        return automatic_dtype(device)
    return DtypeChoice(parsed, "asked for")


def _to_float32(x):
    """``x`` with every half-precision tensor upcast and every half-precision dtype read as float32, through
    tuples, lists and dicts (an operation's arguments)."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in HALF_DTYPES else x
    if isinstance(x, torch.dtype):
        return torch.float32 if x in HALF_DTYPES else x
    if isinstance(x, dict):
        return {k: _to_float32(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        values = [_to_float32(v) for v in x]
        if all(a is b for a, b in zip(values, x)):
            return x  # nothing half-precision inside: the container as it was (torch.Size, a named tuple)
        return values if isinstance(x, list) else tuple(values)
    return x


class float32_arithmetic(TorchFunctionMode):  # noqa: N801 (a context manager, named like one)
    """Inside ``with float32_arithmetic():`` every torch operation computes in float32: half-precision tensor
    arguments are upcast on the way in (one temporary copy per operation, never the whole model at once) and
    a half-precision ``dtype`` argument (``x.to(torch.bfloat16)``, ``torch.zeros(..., dtype=...)``) reads as
    float32. A bfloat16 model then computes the function its stored weights define, rounded like float32:
    the reference its own bfloat16 forward is a rounding of. Tables a model precomputed in its dtype (e.g.
    TransformerLens's rotary sin/cos) stay as rounded as they were stored. Several times slower than the model's
    own forward: for checks, not for work."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*_to_float32(args), **_to_float32(kwargs or {}))
