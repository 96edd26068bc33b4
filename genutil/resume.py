"""Continuing a run: what a checkpoint of a run holds, reading a run's position back, and
stopping cleanly on SIGINT/SIGTERM.

Exact resume (docs/checkpoints.md): a checkpoint holds the weights, the optimizer, every RNG state
(python, numpy, torch, CUDA; of every process under torchrun) and the data position (next epoch,
batches of it already trained). The loaders make an epoch's order a function of (seed, epoch)
alone (data.loaders); the trainer replays a partial epoch's first batches without training on
them and puts the RNG back (genutil.trainer). So on the CPU a run stopped anywhere (SIGKILL
between checkpoints: from the last epoch's ``last.pt``; SIGINT/SIGTERM: from the step where it
stopped) and resumed ends with the same weights, bit for bit, as an unbroken run. On CUDA the
kernels themselves are not deterministic, so two unbroken runs already differ slightly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from genutil import distributed
from genutil.checkpoint import (
    FORMAT_VERSION,
    load_model_state,
    model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from genutil.config import Config
from genutil.distributed import DistInfo
from genutil.errors import CheckpointError, ConfigError
from genutil.trainer import TrainState
from models.contract import unwrap

__all__ = [
    "CheckpointHook",
    "resume_path",
    "check_fresh",
    "restore",
    "restore_rng",
    "stop_on_signals",
]


class CheckpointHook:
    """Writes the run's checkpoints in the original's layout (plus our extra keys).

    Runs in every process (the RNG states of all ranks are gathered); only rank 0 writes.
    """

    def __init__(
        self,
        folder: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: Config,
        title: str,
        *,
        steps_per_epoch: int,
        world_size: int = 1,
    ) -> None:
        self.folder, self.model, self.optimizer = folder, model, optimizer
        self.cfg, self.title = cfg, title
        self.steps_per_epoch, self.world_size = steps_per_epoch, world_size

    def payload(self, state: TrainState, last_epoch: int) -> dict:
        model = unwrap(self.model)
        history = state.history[-1] if state.history else {}
        rngs = distributed.all_gather(rng_state())
        return {
            "model": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "last_epoch": last_epoch,
            "best_val": state.best_val,
            "iter": float(state.step),
            "meters": (history.get("train", {}), history.get("val", {})),
            # ours: never required when loading
            "epoch": state.epoch,  # the next epoch to train ...
            "batch": state.batch,  # ... and how many of its batches are done (mid-epoch stop)
            "partial_meters": state.partial,
            "step": state.step,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "data_order": {
                "seed": self.cfg.seed,
                "epoch": state.epoch,
                "batch": state.batch,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.world_size,
            },
            "config": dataclasses.asdict(self.cfg),
            "title": self.title,
            "format_version": FORMAT_VERSION,
        }

    def _save(self, names: list[str], state: TrainState, last_epoch: int) -> None:
        payload = self.payload(state, last_epoch)  # every rank: the RNG gather is collective
        if distributed.is_primary():
            for name in names:
                save_checkpoint(os.path.join(self.folder, name), payload)

    def on_fit_start(self, state: TrainState) -> None:
        if state.epoch == 0 and state.step == 0:
            self._save(["init.pt"], state, 0)

    def on_epoch_end(self, state: TrainState, train: dict, val: dict) -> None:
        epoch = state.epoch - 1
        names = [f"epoch_{epoch}.pt"] if epoch == 0 or (epoch + 1) % 10 == 0 else []
        names += ["best.pt"] if val.get("is_best") else []
        self._save(names + ["last.pt"], state, epoch)

    def save_stop(self, state: TrainState) -> str:
        """``last.pt`` at the position a stop left (mid-epoch or not); return its path."""
        self._save(["last.pt"], state, state.epoch - 1)
        return os.path.join(self.folder, "last.pt")


def resume_path(cfg: Config, folder: str) -> Optional[str]:
    """The checkpoint to continue from: ``--resume <file>``, or with ``auto`` the run's
    ``last.pt`` if there is one (None: start fresh)."""
    if cfg.resume != "auto":
        return cfg.resume or None
    last = os.path.join(folder, "last.pt")
    return last if os.path.exists(last) else None


def check_fresh(folder: str) -> None:
    """Refuse to start a run over the checkpoints of an earlier run of the same title."""
    if os.path.isdir(folder) and any(f.endswith(".pt") for f in os.listdir(folder)):
        raise ConfigError(
            f"{folder} already holds checkpoints of this run: continue it with --resume auto, "
            "or pick another --save_dir (nothing was overwritten)"
        )


def _meta(ckpt: dict, key: str, default: Any, cast: Callable, path: str) -> Any:
    try:
        return cast(ckpt.get(key, default))
    except (TypeError, ValueError):
        raise CheckpointError(
            f"checkpoint {path} has a malformed '{key}' "
            f"({ckpt.get(key)!r}): use an intact checkpoint"
        ) from None


def restore(
    ckpt: dict,
    path: str,
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
) -> None:
    """Weights, optimizer and position from a checkpoint (ours or the original's)."""
    load_model_state(model, model_state(ckpt), source=f"checkpoint {path}")
    last_epoch = _meta(ckpt, "last_epoch", -1, int, path)
    state.epoch = _meta(ckpt, "epoch", last_epoch + 1, int, path)
    state.step = _meta(ckpt, "step", ckpt.get("iter", 0), int, path)
    state.best_val = _meta(ckpt, "best_val", 0.0, float, path)
    state.batch = _meta(ckpt, "batch", 0, int, path)
    partial = ckpt.get("partial_meters")
    state.partial = partial if isinstance(partial, dict) else {}
    if not cfg.evaluate and "optimizer" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"optimizer state of {path} does not fit ({e}): "
                "resume with the experiment file it was trained with"
            ) from None


def restore_rng(ckpt: dict, path: str, info: DistInfo, steps_per_epoch: int) -> None:
    """This rank's RNG state; check that a mid-epoch position means the same batches here."""
    order = ckpt.get("data_order") or {}
    if ckpt.get("batch") and (order.get("steps_per_epoch"), order.get("world_size")) != (
        steps_per_epoch,
        info.world_size,
    ):
        raise CheckpointError(
            f"checkpoint {path} stopped inside an epoch of {order.get('steps_per_epoch')} steps "
            f"over {order.get('world_size')} process(es); this run has {steps_per_epoch} over "
            f"{info.world_size}: resume with the same batch_size and number of processes"
        )
    rngs = ckpt.get("rng_ranks") or [ckpt.get("rng")]
    try:
        set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} has a malformed RNG state ({e}): use an intact checkpoint"
        ) from None


@contextlib.contextmanager
def stop_on_signals(state: TrainState, distributed_run: bool) -> Iterator[list]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; yields the signals seen.

    A second Ctrl-C of a single-process run interrupts at once. Under torchrun repeated signals
    are normal (the terminal's and then the launcher's), so they only repeat the request.
    """
    seen: list = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum: int, frame: Any) -> None:
        seen.append(signal.Signals(signum).name)
        if signum == signal.SIGINT and len(seen) > 1 and not distributed_run:
            raise KeyboardInterrupt
        state.stop_requested = True  # no I/O here: the loop reports once the step is done

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
