"""Multi-process training on PyTorch's own engine: torchrun + DistributedDataParallel.

Everything here is a no-op for a single process, so the training loop has one code path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch

from waste_cli.core.processes import die_with_parent
from waste_cli.data.loading import ShardSampler

__all__ = [
    "Distributed",
    "all_gather_union",
    "all_reduce_sum",
    "init_distributed",
    "launch_torchrun",
    "newest_run",
    "shard",
]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process prints, writes the run folder and logs to trackers."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU.

    Each CUDA rank takes the GPU of its LOCAL_RANK. Without torchrun this is a no-op.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    import torch.distributed as dist

    die_with_parent()  # a rank never outlives its torchrun agent
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=_attempt_store(rank, world), rank=rank, world_size=world,
                                timeout=timedelta(minutes=10))
    return Distributed(rank, world, local), device


def _attempt_store(rank: int, world: int) -> Any:
    """torchrun's key-value store, with keys private to this restart attempt: otherwise a rank
    restarted by --max-restarts can read the previous attempt's (dead) peer addresses."""
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=timedelta(minutes=10))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"wastecls/attempt{attempt}", store)


def all_reduce_sum(*values: torch.Tensor | float) -> list[torch.Tensor]:
    """Sum tensors (or numbers) over all ranks; unchanged when not distributed."""
    import torch.distributed as dist

    tensors = [torch.as_tensor(v, dtype=torch.float64).clone() for v in values]
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor)
    return tensors


def shard(sampler: Any, dist: Distributed, even: bool = True) -> Any:
    """Each rank's share of an order that is the same on every rank (same seed)."""
    return ShardSampler(sampler, dist.rank, dist.world, even) if dist.active else sampler


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `wastecls ARGV` as `torchrun --standalone --nproc-per-node NPROC -m waste_cli ...`.

    The children see WORLD_SIZE and train as one DDP job; --nproc itself is not passed on.
    """
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "waste_cli", *args]
    return subprocess.call(command, preexec_fn=partial(die_with_parent, os.getpid()))


def newest_run(project: Path, name: str) -> Path | None:
    """The most recently written run folder project/name* with a last.pt, if any."""
    runs = sorted(project.glob(f"{name}*/last.pt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def all_gather_union(dist: Distributed, items: set[int]) -> set[int]:
    """The union of every rank's set (e.g. unreadable images each rank found)."""
    if not dist.active:
        return items
    found: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(found, sorted(items))
    return {i for part in found for i in part}
