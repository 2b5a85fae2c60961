"""Scale-out with ``torch.distributed`` as launched by ``torchrun`` (no launcher or scheduler of our own).

    torchrun --nproc_per_node 8 -m metrics.run --task text2image --checkpoint ckpt/ --device cuda
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint host:29500 -m metrics.run ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the ``env://``
rendezvous (``MASTER_ADDR``/``MASTER_PORT``); :func:`setup` joins the process
group with NCCL for CUDA devices (each rank on ``cuda:<LOCAL_RANK>``) or gloo on
CPU. Without those variables it is a single process and nothing is initialised.

The work is split by :func:`shard`: the records, sorted by id as the dataset
adapters give them, are cut into ``world_size`` contiguous blocks, rank ``r``
taking positions ``[r n / W, (r + 1) n / W)``. Each rank generates, saves and
extracts the features of its block only (every sample is written by exactly one
rank); :func:`gather_to_root` sends the per-sample features to rank 0, which
scores the whole set in id order, so the numbers equal a single process's up to
float rounding. Per-sample features travel with ``gather_object`` (pickle
between the ranks of one job: trusted data, never a file).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["DistEnv", "setup", "teardown", "shard", "gather_to_root", "broadcast_from_root", "raise_if_any_failed"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node), its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: single process, no process group

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def setup(device: str = "cpu", timeout_minutes: float = 24 * 60) -> DistEnv:
    """Join the torchrun job if there is one (``WORLD_SIZE`` > 1), else a single-process :class:`DistEnv`.

    ``timeout_minutes`` bounds how long a rank waits for the others at a collective; ranks can finish
    their blocks hours apart when a resumed run finds one block mostly done, hence the long default.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistEnv(device=device)
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but CUDA is not available on this node")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed runs support --device cpu (gloo) or cuda (nccl), got {device!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def teardown(env: DistEnv) -> None:
    if env.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard(n: int, rank: int, world_size: int) -> range:
    """Positions ``[rank n / W, (rank + 1) n / W)`` of ``n`` sorted records: contiguous, balanced to one record."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def gather_to_root(env: DistEnv, obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere); ``[obj]`` in a single process."""
    if not env.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * env.world_size if env.is_root else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_root(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.active:
        return obj
    import torch.distributed as dist

    box = [obj if env.is_root else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_if_any_failed(env: DistEnv, error: BaseException | None) -> None:
    """Collective: every rank reports its error (or None); all raise if any failed.

    A rank's own error is re-raised as is; the others raise RuntimeError naming the failed ranks and
    their messages, so no rank is left waiting at a later collective.
    """
    if not env.active:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    reports: Sequence[Any] = [None] * env.world_size
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(reports) if m is not None]
    if failed:
        raise RuntimeError("; ".join(f"rank {r} failed: {m}" for r, m in failed))
