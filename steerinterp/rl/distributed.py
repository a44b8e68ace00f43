"""Multi-process data parallel with torch.distributed (launched by torchrun; gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device | str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE); a single process otherwise.

    The backend follows the model's device: nccl for CUDA, gloo for CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "nccl" if on_cuda else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_list(items: list, info: DistInfo) -> list:
    """Concatenate each rank's list, in rank order."""
    if not info.active:
        return list(items)
    out: list = [None] * info.world_size
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()
