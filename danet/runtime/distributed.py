"""Running under ``torchrun``: join PyTorch's process group, split work across ranks, merge results.

Nothing here starts processes: ``torchrun`` (``torch.distributed.run``) launches one process per
GPU or CPU slot, on one node or many, and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. ``process_group`` reads them and joins the group (NCCL on
CUDA, gloo on the CPU); alone (no ``WORLD_SIZE`` above 1) it does nothing, so every function here
is also correct in one plain process: ``shard`` returns the whole list, the reductions return
their input.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from danet.runtime.device import select_device
from danet.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_ranks() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) outside torchrun."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world, local


def is_active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for(requested: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``select_device``, except that ``auto`` and a bare ``cuda`` mean this process's own GPU
    (``cuda:LOCAL_RANK``) under torchrun; an explicit ``cuda:N`` is honoured as given."""
    device = select_device(requested)
    if local_rank is None:
        local_rank = env_ranks()[2] if env_ranks()[1] > 1 else None
    if device.type == "cuda" and device.index is None and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this node")
        device = torch.device("cuda", local_rank)
    return device


def context(device: str | torch.device = "auto") -> Context:
    """The current process's ``Context`` (from the process group when one is joined)."""
    _, _, local = env_ranks()
    if is_active():
        return Context(dist.get_rank(), dist.get_world_size(), local, device_for(device, local))
    return Context(device=select_device(device))


@contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[Context]:
    """Join torchrun's process group for the block (and leave it after), or yield a one-process
    ``Context`` when not launched by torchrun. A group joined by the caller is reused, not left."""
    rank_, world, local = env_ranks()
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        yield context(device)
        return
    if not dist.is_available():
        raise InputError("this PyTorch build has no torch.distributed")
    chosen = device_for(device, local)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    try:
        yield Context(rank_, world, local, chosen)
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint); no-op alone."""
    if is_active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from position ``rank``.

    Deterministic (the same list gives the same shares on every rank), each item exactly once
    over all ranks, and shares differ in length by at most one.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world < 1 or not 0 <= rank_ < world:
        raise InputError(f"rank {rank_} is not within world size {world}")
    return list(items[rank_::world])


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (a new tensor on ``value``'s device); exact for integers."""
    if not is_active():
        return value.clone()
    work = value.detach().to(_reduce_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(value.device)


def sum_array(array: np.ndarray) -> np.ndarray:
    """``all_reduce_sum`` for numpy arrays (confusion matrices stay int64, so sums are exact)."""
    if not is_active():
        return array.copy()
    return all_reduce_sum(torch.from_numpy(np.ascontiguousarray(array))).cpu().numpy()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The average of a (float) tensor over ranks, as DDP averages gradients."""
    return all_reduce_sum(value) / world_size()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone."""
    if not is_active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a checkpoint only rank 0 can read)."""
    if not is_active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def main_only(log):
    """``log`` on rank 0, a no-op elsewhere: one copy of every message, not one per process."""
    return log if is_main() else (lambda *args, **kwargs: None)
