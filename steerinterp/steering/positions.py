"""Which token positions a steering vector acts on.

A forward pass sees a chunk of tokens (the whole prompt, or one new token at a time during cached
generation). ``TokenContext`` tells hooks, for that chunk, which tokens are prompt, which are padding,
and each token's index in its own (unpadded) sequence. ``Positions`` turns that into a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Int

from steerinterp.errors import SteerInterpError

Kind = Literal["all", "prompt", "generated", "slice", "mask"]


@dataclass
class TokenContext:
    """Per-token facts for the chunk of tokens that the next forward pass processes.

    Attributes:
        is_prompt: True where a token belongs to the prompt, None if unknown.
        index: position of each token in its own sequence, padding excluded (-1 on padding).
        valid: False on padding tokens.
    """

    is_prompt: Bool[torch.Tensor, "batch pos"] | None = None
    index: Int[torch.Tensor, "batch pos"] | None = None
    valid: Bool[torch.Tensor, "batch pos"] | None = None

    @classmethod
    def from_masks(
        cls,
        attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
        prompt_mask: Bool[torch.Tensor, "batch pos"] | None = None,
    ) -> TokenContext:
        """Context for a full (teacher-forced) sequence from its attention and prompt masks."""
        if attention_mask is None:
            return cls(is_prompt=None if prompt_mask is None else prompt_mask.bool())
        valid = attention_mask.bool()
        index = valid.long().cumsum(-1) - 1
        index = index.masked_fill(~valid, -1)
        return cls(is_prompt=None if prompt_mask is None else prompt_mask.bool(), index=index, valid=valid)


@dataclass(frozen=True)
class Positions:
    """Where a vector is added. ``Positions.all()`` is the papers' setting.

    * ``all``: every token (prompt and generated);
    * ``prompt`` / ``generated``: only prompt tokens / only generated tokens;
    * ``slice``: tokens whose index in the (unpadded) sequence is in ``[start, stop)``;
    * ``mask``: a boolean mask over (unpadded) positions, shape ``[pos]`` or ``[batch, pos]``;
      positions beyond its length are not steered.
    """

    kind: Kind = "all"
    start: int | None = None
    stop: int | None = None
    mask: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in ("all", "prompt", "generated", "slice", "mask"):
            raise SteerInterpError(
                f"unknown positions kind {self.kind!r}; use all, prompt, generated, slice or mask"
            )
        if self.kind == "slice":
            for v in (self.start, self.stop):
                if v is not None and (not isinstance(v, int) or v < 0):
                    raise SteerInterpError(
                        f"slice bounds must be non-negative ints (got start={self.start}, stop={self.stop}); "
                        "use a mask for positions counted from the end"
                    )
        if self.kind == "mask":
            if self.mask is None or self.mask.dtype != torch.bool or self.mask.dim() not in (1, 2):
                raise SteerInterpError("Positions.from_mask needs a bool tensor of shape [pos] or [batch, pos]")

    @classmethod
    def all(cls) -> Positions:
        return cls("all")

    @classmethod
    def prompt(cls) -> Positions:
        return cls("prompt")

    @classmethod
    def generated(cls) -> Positions:
        return cls("generated")

    @classmethod
    def slice(cls, start: int | None = None, stop: int | None = None) -> Positions:
        return cls("slice", start=start, stop=stop)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Positions:
        return cls("mask", mask=torch.as_tensor(mask).bool().cpu())

    @classmethod
    def parse(cls, spec: Positions | str | slice | torch.Tensor | None) -> Positions:
        """Accept a ``Positions``, ``"all" | "prompt" | "generated"``, a ``slice`` or a bool mask."""
        if spec is None:
            return cls.all()
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, str):
            if spec in ("slice", "mask"):
                raise SteerInterpError(f"positions={spec!r} needs bounds; use Positions.slice(a, b) / from_mask(m)")
            return cls(spec)  # type: ignore[arg-type]
        if isinstance(spec, slice):
            if spec.step not in (None, 1):
                raise SteerInterpError("position slices cannot have a step; use a mask")
            return cls.slice(spec.start, spec.stop)
        if isinstance(spec, torch.Tensor):
            return cls.from_mask(spec)
        raise SteerInterpError(f"cannot use {spec!r} as positions; pass 'all', 'prompt', 'generated', a slice or a mask")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "stop": self.stop}

    def select(
        self, ctx: TokenContext | None, batch: int, pos: int, device: torch.device
    ) -> Bool[torch.Tensor, "batch pos"] | None:
        """Mask of the steered tokens in a chunk of shape [batch, pos]; None means every token."""
        valid = None if ctx is None or ctx.valid is None else ctx.valid.to(device)
        if self.kind == "all":
            return valid
        if self.kind in ("prompt", "generated"):
            if ctx is None or ctx.is_prompt is None:
                raise SteerInterpError(
                    f"positions={self.kind!r} needs to know where the prompt ends: steer through "
                    "steerinterp.generate / teacher_forced_logprobs, or use vecs.applied(model, prompt_mask=...)"
                )
            sel = ctx.is_prompt.to(device)
            sel = sel if self.kind == "prompt" else ~sel
            return sel if valid is None else sel & valid
        index = self._index(ctx, batch, pos, device)
        if self.kind == "slice":
            sel = index >= (self.start or 0)
            if self.stop is not None:
                sel &= index < self.stop
        else:
            m = self.mask.to(device)
            m = m.expand(batch, -1) if m.dim() == 1 else m
            if m.shape[0] != batch:
                raise SteerInterpError(f"position mask has batch {m.shape[0]} but the input has batch {batch}")
            inside = (index >= 0) & (index < m.shape[1])
            sel = torch.zeros(batch, pos, dtype=torch.bool, device=device)
            sel[inside] = m.gather(1, index.clamp(0, m.shape[1] - 1))[inside]
        return sel if valid is None else sel & valid

    @staticmethod
    def _index(ctx: TokenContext | None, batch: int, pos: int, device) -> torch.Tensor:
        if ctx is not None and ctx.index is not None:
            return ctx.index.to(device)
        return torch.arange(pos, device=device).expand(batch, pos)
