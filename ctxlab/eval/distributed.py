"""torch.distributed for `torchrun --nproc-per-node N -m ctxlab eval ...`: data parallel over samples.

Initialised only when WORLD_SIZE > 1 (gloo on CPU, nccl when the device is CUDA), so a single process never
imports torch.distributed. Each rank evaluates `pending[rank::world]` and commits to its own store shard; after a
barrier, rank 0 merges the shards and writes the results (ctxlab/eval/store.py). Collectives carry only small
Python objects (a checksum of the pending list), never results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ctxlab.errors import CtxlabError

# A barrier waits for the slowest rank; long evaluations need far more than torch's 30-minute default.
TIMEOUT = timedelta(seconds=int(os.environ.get("CTXLAB_DIST_TIMEOUT_S", str(24 * 3600))))


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" | "nccl" | None (single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_world() -> DistInfo:
    """Rank facts from torchrun's environment variables, without initialising anything."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CtxlabError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise CtxlabError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def rank_device(device: str, info: DistInfo) -> str:
    """'cuda' → 'cuda:<local rank>' under torchrun (one GPU per process); other devices unchanged."""
    if info.active and device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def init(device: str) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1; a no-op DistInfo otherwise."""
    info = env_world()
    if not info.active:
        return info
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return DistInfo(info.rank, info.world_size, info.local_rank, backend)


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
