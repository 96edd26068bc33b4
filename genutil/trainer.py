"""The one training loop: train_one_epoch, evaluate, fit. No I/O here: hooks do it.

A hook is any object with some of these methods (all optional), called by the primary process:

    on_fit_start(state)                       before the first epoch of this call to fit
    on_epoch_start(state, phase, num_steps)   phase is "train" or "val"
    on_step_end(state, phase, loss)           loss: float of this batch
    on_epoch_end(state, train, val)           train/val: metric dicts of the epoch
    on_fit_end(state)

``state`` is the TrainState: the global optimizer step ``step`` (one source of truth; the
epoch is derived from it at epoch boundaries), the next ``epoch`` to run, ``best_val``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from genutil.errors import UserError
from genutil.schedules import Schedule

__all__ = ["TrainState", "DivergenceError", "train_one_epoch", "evaluate", "fit", "call_hooks"]


class DivergenceError(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    """Where a run is. ``step`` counts optimizer steps since the start of the run."""

    step: int = 0
    epoch: int = 0
    best_val: float = 0.0
    history: list = field(default_factory=list)  # per epoch: {"epoch", "train", "val"}
    stop_requested: bool = False  # set by a signal handler: finish the step, then stop


def call_hooks(hooks: Iterable[Any], name: str, *args: Any) -> None:
    """Call method ``name`` on every hook that has it."""
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(*args)


class _Meters:
    """Sums of loss and top-k hits over an epoch (averaged per sample, as the original)."""

    def __init__(self, topk: Sequence[int]) -> None:
        self.topk = list(topk)
        self.count = 0
        self.loss = 0.0
        self.hits = {k: 0.0 for k in self.topk}

    def add(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n = target.size(0)
        self.count += n
        self.loss += float(loss) * n
        pred = output.topk(min(max(self.topk), output.size(1)), dim=1).indices  # [B, K]
        correct = pred.eq(target.view(-1, 1))
        for k in self.topk:
            self.hits[k] += float(correct[:, :k].sum())

    def results(self) -> dict:
        c = max(self.count, 1)
        out = {"CELoss": self.loss / c}
        out.update({f"top{k}_accuracy": self.hits[k] / c for k in self.topk})
        return out

    def all_reduce(self) -> None:
        """Sum the meters over processes (torch.distributed)."""
        import torch.distributed as dist  # noqa: PLC0415

        if not (dist.is_available() and dist.is_initialized()):
            return
        t = torch.tensor([self.count, self.loss, *self.hits.values()], dtype=torch.float64)
        dist.all_reduce(t)
        self.count, self.loss = int(t[0]), float(t[1])
        self.hits = dict(zip(self.topk, t[2:].tolist()))


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, amp: str):
    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _set_epoch(loader: Any, epoch: int) -> None:
    try:
        from data.loaders import set_epoch  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        set_epoch = None
    if set_epoch is not None:
        set_epoch(loader, epoch)
    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    schedule: Schedule, state: TrainState, *, device: torch.device,
                    topk: Sequence[int] = (1, 5), hooks: Sequence[Any] = (), amp: str = "",
                    scaler: Optional[Any] = None, channels_last: bool = False) -> dict:
    """One pass over ``loader`` with SGD steps; the lr of each step comes from ``schedule``."""
    model.train()
    meters = _Meters(topk)
    call_hooks(hooks, "on_epoch_start", state, "train", len(loader))
    for i, (images, target) in enumerate(loader):
        images, target = _to(images, device, channels_last), target.to(device, non_blocking=True)
        lr = schedule.lr(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            output = model(images)
            loss = F.cross_entropy(output.float(), target)
        if not math.isfinite(loss.item()):
            raise DivergenceError(
                f"loss is {float(loss)} at epoch {state.epoch} step {i} (global step "
                f"{state.step}): lower lr or check the data; the last checkpoint is kept")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        state.step += 1
        meters.add(output.detach().float(), target, loss.detach())
        call_hooks(hooks, "on_step_end", state, "train", float(loss))
        if state.stop_requested:
            break
    meters.all_reduce()
    return {**meters.results(), "lr": schedule.lr(max(state.step - 1, 0))}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device,
             topk: Sequence[int] = (1, 5), hooks: Sequence[Any] = (), state: Optional[
                 TrainState] = None, amp: str = "", channels_last: bool = False) -> dict:
    """Loss and top-k accuracy (fractions) of ``model`` in eval mode over ``loader``."""
    model.eval()
    meters = _Meters(topk)
    state = state if state is not None else TrainState()
    call_hooks(hooks, "on_epoch_start", state, "val", len(loader))
    for images, target in loader:
        images, target = _to(images, device, channels_last), target.to(device, non_blocking=True)
        with _autocast(device, amp):
            output = model(images).float()
        loss = F.cross_entropy(output, target)
        meters.add(output, target, loss)
        call_hooks(hooks, "on_step_end", state, "val", float(loss))
    meters.all_reduce()
    return meters.results()


def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable,
        optimizer: torch.optim.Optimizer, schedule: Schedule, state: TrainState, *,
        device: torch.device, num_epochs: int, topk: Sequence[int] = (1, 5),
        hooks: Sequence[Any] = (), amp: str = "", channels_last: bool = False,
        on_epoch: Optional[Callable[[int], None]] = None) -> TrainState:
    """Train from ``state.epoch`` to ``num_epochs``, validating after each epoch."""
    scaler = None
    if amp == "fp16" and device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
    call_hooks(hooks, "on_fit_start", state)
    while state.epoch < num_epochs and not state.stop_requested:
        epoch = state.epoch
        _set_epoch(train_loader, epoch)
        if on_epoch is not None:
            on_epoch(epoch)
        t0 = time.time()
        train = train_one_epoch(model, train_loader, optimizer, schedule, state, device=device,
                                topk=topk, hooks=hooks, amp=amp, scaler=scaler,
                                channels_last=channels_last)
        if state.stop_requested and state.step % max(schedule.steps_per_epoch, 1):
            break  # interrupted mid-epoch: the caller saves where it stands
        train["epoch_time"] = time.time() - t0
        t1 = time.time()
        val = evaluate(model, val_loader, device=device, topk=topk, hooks=hooks, state=state,
                       amp=amp, channels_last=channels_last)
        val["epoch_time"] = time.time() - t1
        val["is_best"] = val["top1_accuracy"] > state.best_val
        state.best_val = max(state.best_val, val["top1_accuracy"])
        val["best_val"] = state.best_val
        state.history.append({"epoch": epoch, "train": train, "val": val})
        state.epoch = epoch + 1
        call_hooks(hooks, "on_epoch_end", state, train, val)
    call_hooks(hooks, "on_fit_end", state)
    return state
