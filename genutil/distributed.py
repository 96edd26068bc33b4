"""torch.distributed for runs launched with ``torchrun``: process group, devices, DDP, agreement.

A run is distributed when torchrun's variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are in
the environment (even with one process). Then every process:

- joins the process group (``nccl`` with CUDA, else ``gloo``) and uses GPU ``LOCAL_RANK``;
- trains a ``DistributedDataParallel`` copy of the model on its shard of the data
  (``from_config(cfg, distributed=True)``), with ``batch_size / WORLD_SIZE`` images per step, so
  the config's ``batch_size`` is the global batch of one optimizer step, as with ``--gpus``;
- agrees with the others, once per step, on whether to stop (a signal) or fail (a non-finite loss),
  so that no process waits forever in a collective the others have left.

Only rank 0 logs, prints and writes files. Without torchrun every function here is a no-op that
returns the single-process answer, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from genutil.errors import ConfigError
from models.contract import unwrap

__all__ = [
    "DistInfo",
    "launched_by_torchrun",
    "init_distributed",
    "shutdown",
    "per_process",
    "wrap_ddp",
    "active",
    "is_primary",
    "any_rank",
    "all_reduce_sum",
    "all_gather",
    "barrier",
    "eval_module",
]

log = logging.getLogger(__name__)

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank 0 of 1 unless launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group was created by init_distributed

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher that sets its variables) started this process."""
    return all(name in os.environ for name in _ENV)


def init_distributed(timeout_min: int = 30) -> DistInfo:
    """Join torchrun's process group if launched by it; return where this process stands."""
    if not launched_by_torchrun():
        return DistInfo()
    try:
        rank, world, local = (int(os.environ[name]) for name in _ENV)
    except ValueError:
        raise ConfigError(
            f"RANK/WORLD_SIZE/LOCAL_RANK are not integers "
            f"({', '.join(os.environ[n] for n in _ENV)}): launch with torchrun"
        )
    if dist.is_initialized():  # a caller (a test, a notebook) set the group up already
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, True)
    cuda = torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} "
                "GPU(s): start at most that many processes per node"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_min),
    )
    log.debug("process %d of %d joined (%s)", rank, world, dist.get_backend())
    return DistInfo(rank, world, local, True)


def shutdown(info: DistInfo) -> None:
    """Leave the process group that ``init_distributed`` created, once every process is done
    (gloo aborts a process whose peer tears the group down under it)."""
    if info.enabled and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def per_process(total: int, world_size: int, name: str) -> int:
    """``total`` (a global batch size) split evenly over ``world_size`` processes."""
    if total % world_size:
        raise ConfigError(
            f"{name}={total} does not split evenly over {world_size} processes: "
            f"set --{name} to a multiple of {world_size} (it is the global batch)"
        )
    return total // world_size


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``model`` (already on ``device``)."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, output_device=None if ids is None else ids[0]
    )


def active() -> bool:
    """A process group is up (torchrun run, or a test that made one)."""
    return dist.is_available() and dist.is_initialized()


def is_primary() -> bool:
    """Rank 0, or no process group at all."""
    return not active() or dist.get_rank() == 0


def _device() -> torch.device:
    # nccl reduces only CUDA tensors, gloo only CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over processes (float64); the values as given alone."""
    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over processes: every process then takes the same branch."""
    if not active():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def all_gather(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process gets here."""
    if not active():
        return
    if dist.get_backend() == "nccl":  # name the device: nccl warns when it has to guess
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def eval_module(model: nn.Module) -> nn.Module:
    """The module to evaluate: under a process group the bare model, with rank 0's buffers.

    Evaluating through DDP would run a collective per forward while ranks may hold different
    numbers of validation batches; and each rank's BatchNorm statistics moved with its own last
    batch, so all take rank 0's, the ones its checkpoint holds.
    """
    if not active():
        return model
    module = unwrap(model)
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    return module
