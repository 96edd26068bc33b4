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
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from genutil.config import Config, config_from_dict
from genutil.distributed import DistInfo
from genutil.errors import CheckpointError, ConfigError
from genutil.trainer import TrainState
from models.contract import unwrap

__all__ = [
    "CheckpointHook",
    "MODEL_KEYS",
    "resume_path",
    "run_checkpoints",
    "check_fresh",
    "check_resume_target",
    "compare_config",
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
                path = os.path.join(self.folder, name)
                try:
                    save_checkpoint(path, payload)
                except OSError as e:
                    raise CheckpointError(
                        f"could not write {path} ({e.strerror or e}): free space or fix the "
                        "folder, then --resume auto; the checkpoints written before are intact"
                    ) from None

    def on_fit_start(self, state: TrainState) -> None:
        # a run resumed from its init.pt (killed before its first epoch ended) keeps that file
        fresh = not os.path.exists(os.path.join(self.folder, "init.pt"))
        if state.epoch == 0 and state.step == 0 and distributed.any_rank(fresh)[0]:
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


# Keys that change the model or its wiring: a checkpoint trained with other values does not give
# its results under these (``compare_config``). The others are training keys: printed if changed.
MODEL_KEYS = (
    "model", "graph", "prune_rate", "dim", "downsample_dim", "feature_dim", "layers", "setting",
    "small", "width_mult", "image_size", "in_channels", "output_size", "rho", "td_abs",
    "ode_inplace_relu", "model_kwargs", "wire", "wire_include", "wire_exclude", "wire_prune_rates",
)  # fmt: skip
_TRAINING_KEYS = (
    "data", "batch_size", "lr", "lr_scheduler", "multistep_lr_milestones", "multistep_lr_gamma",
    "exp_decaying_lr_gamma", "momentum", "weight_decay", "nestorov", "num_epochs", "seed",
    "train_subset", "amp",
)  # fmt: skip


def _position(ckpt: dict) -> tuple:
    """How far a checkpoint of a run is: (next epoch, batches of it, steps)."""
    try:
        last = int(ckpt.get("last_epoch", -1))
        return (
            int(ckpt.get("epoch", last + 1)),
            int(ckpt.get("batch", 0)),
            int(ckpt.get("step", ckpt.get("iter", 0))),
        )
    except (TypeError, ValueError):
        return (-1, 0, 0)


def run_checkpoints(folder: str) -> list[str]:
    """The checkpoint files of a run's folder (``*.pt``, not the hidden temps), sorted."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.endswith(".pt") and not n.startswith("."))


def resume_path(cfg: Config, folder: str, write: Callable[[str], None] = print) -> Optional[str]:
    """The checkpoint to continue from: ``--resume <file>``; with ``auto`` the run's newest
    readable checkpoint (``last.pt``, else the furthest of the others), None if the folder holds
    none (a fresh start), a one-line CheckpointError if it holds only unreadable ones."""
    if cfg.resume != "auto":
        return cfg.resume or None
    names = run_checkpoints(folder)
    if not names:
        return None
    last = os.path.join(folder, "last.pt")
    if "last.pt" in names:
        try:
            read_checkpoint(last)
            return last
        except CheckpointError as e:
            write(f"=> {last} is unreadable ({e}); looking for the newest other checkpoint")
    best, best_position, unreadable = None, None, []
    for name in names:
        if name == "last.pt":
            continue
        path = os.path.join(folder, name)
        try:
            position = _position(read_checkpoint(path))
        except CheckpointError:
            unreadable.append(name)
            continue
        if best_position is None or position > best_position:
            best, best_position = path, position
    if best is None:
        raise CheckpointError(
            f"{folder} holds no readable checkpoint ({', '.join(names)} unreadable): nothing was "
            "started over them; move the folder away to start fresh"
        )
    why = "is missing" if "last.pt" not in names else "is unreadable"
    write(
        f"=> {last} {why}: resuming from the newest readable checkpoint {best} (epoch "
        f"{best_position[0]}, step {best_position[2]})"
    )
    return best


def check_fresh(folder: str, overwrite: bool = False) -> None:
    """Refuse to start a run over the checkpoints of an earlier run of the same title (unless
    ``overwrite``: the caller clears the folder once it holds the run's lock)."""
    if run_checkpoints(folder) and not overwrite:
        raise ConfigError(
            f"{folder} already holds checkpoints of this run: continue it with --resume auto, "
            "replace it with --overwrite, or pick another --save_dir (nothing was overwritten)"
        )


def check_resume_target(path: str, folder: str) -> None:
    """Training from ``--resume <file>`` writes into ``folder``: refuse when that folder holds
    checkpoints of another run (the file is not one of them), which the new run would replace."""
    if not run_checkpoints(folder):
        return
    if os.path.realpath(os.path.dirname(os.path.abspath(path))) != os.path.realpath(folder):
        raise ConfigError(
            f"{folder} holds checkpoints of another run, which continuing {path} there would "
            "replace: resume that run's own checkpoint, or give this one its own --save_dir"
        )


def compare_config(ckpt: dict, path: str, cfg: Config, write: Callable[[str], None]) -> None:
    """The checkpoint's settings win or the user is told: a model or wiring key that differs
    from the checkpoint's stored config is refused (``override_checkpoint`` allows it); changed
    training keys are printed. The original's files carry no config: said once."""
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        write(f"=> {path} carries no config (the original's format): the model's settings are "
              "taken from the experiment file")  # fmt: skip
        return
    then = config_from_dict(stored)
    model_changes = [k for k in MODEL_KEYS if getattr(then, k) != getattr(cfg, k)]
    if model_changes and not cfg.override_checkpoint:
        key = model_changes[0]
        more = f" (and {', '.join(model_changes[1:])})" if len(model_changes) > 1 else ""
        raise ConfigError(
            f"checkpoint {path} was trained with {key} {getattr(then, key)!r}, this command has "
            f"{getattr(cfg, key)!r}{more}: use the experiment file and keys it was trained with, "
            f"or add --override_checkpoint to use {key} {getattr(cfg, key)!r} anyway"
        )
    changes = [k for k in _TRAINING_KEYS if getattr(then, k) != getattr(cfg, k)] + model_changes
    if changes:
        write(
            f"=> changed since {os.path.basename(path)}: "
            + ", ".join(f"{k} {getattr(then, k)!r} -> {getattr(cfg, k)!r}" for k in changes)
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
        _check_optimizer_state(optimizer, path)


def _check_optimizer_state(optimizer: torch.optim.Optimizer, path: str) -> None:
    """Every per-parameter buffer (SGD's momentum) has its parameter's shape: a hand-edited or
    foreign optimizer state would otherwise fail inside the first step."""
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise CheckpointError(
                        f"optimizer state of {path} does not fit: its {name} for parameter {i} "
                        f"is {tuple(value.shape)}, the parameter {tuple(param.shape)}: use an "
                        "intact checkpoint"
                    )


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
