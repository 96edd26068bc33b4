"""The one training loop: train_one_epoch, evaluate, fit. No I/O here: hooks do it.

A hook is any object with some of these methods (all optional). Under torch.distributed every
process runs the loop with its own list of hooks; the run gives logging hooks to rank 0 only.

    on_fit_start(state)                       before the first epoch of this call to fit
    on_epoch_start(state, phase, num_steps)   phase is "train" or "val"
    on_step_end(state, phase, loss)           loss: float of this batch
    on_epoch_end(state, train, val)           train/val: metric dicts of the epoch
    on_fit_end(state)

``state`` is the TrainState: the global optimizer step ``step`` (one source of truth; the
epoch is derived from it at epoch boundaries), the next ``epoch`` to run, ``best_val``.

Stopping (SIGINT/SIGTERM set ``state.stop_requested``): the current step finishes, and fit returns
with ``state.batch`` > 0 if it stopped inside an epoch. The caller saves that position; a later
fit replays the epoch's first ``state.batch`` batches from the loader without training on them and
then restores the RNG state it had, so the rest of the epoch sees exactly the images (and
augmentations) an unbroken run would. Under torch.distributed the processes agree at every step
on stopping and on a non-finite loss, so all stop at the same step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from genutil import distributed
from genutil.checkpoint import rng_state, set_rng_state
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
    batch: int = 0  # batches of ``epoch`` already trained: > 0 only after a mid-epoch stop
    partial: dict = field(default_factory=dict)  # train meter sums of those batches (all ranks)
    batch_images: int = 0  # images in the batch of the last step (this process), for hooks


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
        out = {"CELoss": self.loss / c, "images": self.count}
        out.update({f"top{k}_accuracy": self.hits[k] / c for k in self.topk})
        return out

    def all_reduce(self) -> None:
        """Sum the meters over processes (torch.distributed); nothing without a process group."""
        t = distributed.all_reduce_sum([self.count, self.loss, *self.hits.values()])
        self.count, self.loss = int(t[0]), float(t[1])
        self.hits = dict(zip(self.topk, t[2:]))

    def sums(self) -> dict:
        """The raw sums, to carry a partial epoch across a stop (plain values)."""
        return {
            "count": self.count,
            "loss": self.loss,
            "hits": [float(self.hits[k]) for k in self.topk],
        }

    def load_sums(self, sums: dict) -> None:
        """Continue from ``sums()`` of an earlier part of the same epoch."""
        if sums and len(sums.get("hits", ())) == len(self.topk):
            self.count, self.loss = int(sums["count"]), float(sums["loss"])
            self.hits = dict(zip(self.topk, (float(h) for h in sums["hits"])))


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
    """Prepare ``loader`` for ``epoch``: the loaders of data/ reseed their order and workers
    from (seed, epoch) (data/loaders.py); a plain DataLoader's sampler gets the epoch."""
    set_epoch = getattr(loader, "set_epoch", None) or getattr(
        getattr(loader, "sampler", None), "set_epoch", None
    )
    if set_epoch is not None:
        set_epoch(epoch)


def _batches(loader: Iterable, skip: int) -> Iterator:
    """Iterate ``loader`` from batch ``skip`` on, as if the first ``skip`` had been trained on.

    The skipped batches are loaded and dropped (so worker processes draw the same augmentation
    randomness as in an unbroken epoch), and the RNG state of this process is put back as it
    was, which the caller restored from the checkpoint of the stop.
    """
    batches = iter(loader)
    if skip:
        saved = rng_state()
        for _ in range(skip):
            next(batches)
        set_rng_state(saved)
    return batches


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: TrainState,
    *,
    device: torch.device,
    topk: Sequence[int] = (1, 5),
    hooks: Sequence[Any] = (),
    amp: str = "",
    scaler: Optional[Any] = None,
    channels_last: bool = False,
) -> dict:
    """One pass over ``loader`` (from batch ``state.batch``) with SGD steps; the lr of each step
    comes from ``schedule``. Returns {} if a stop was requested before the epoch's end."""
    model.train()
    meters = _Meters(topk)
    if distributed.is_primary():  # partial sums were all-reduced before the stop: add once
        meters.load_sums(state.partial)
    call_hooks(hooks, "on_epoch_start", state, "train", len(loader))
    for images, target in _batches(loader, state.batch):
        images, target = _to(images, device, channels_last), target.to(device, non_blocking=True)
        lr = schedule.lr(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            output = model(images)
            loss = F.cross_entropy(output.float(), target)
        value = loss.item()
        diverged, stop = distributed.any_rank(not math.isfinite(value), state.stop_requested)
        if diverged:  # before the update: the weights (and checkpoints) stay finite
            what = value if not math.isfinite(value) else "not finite in another process"
            raise DivergenceError(
                f"loss is {what} at epoch {state.epoch} step {state.batch} (global step "
                f"{state.step}): lower lr or check the data; the checkpoints so far are kept"
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        state.step += 1
        state.batch += 1
        state.batch_images = target.size(0)
        meters.add(output.detach().float(), target, loss.detach())
        call_hooks(hooks, "on_step_end", state, "train", value)
        if stop:
            state.stop_requested = True
            break
    meters.all_reduce()
    if state.batch < len(loader):  # stopped inside the epoch: the caller saves where it stands
        state.partial = meters.sums()
        return {}
    state.batch, state.partial = 0, {}
    return {**meters.results(), "lr": schedule.lr(max(state.step - 1, 0))}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    topk: Sequence[int] = (1, 5),
    hooks: Sequence[Any] = (),
    state: Optional[TrainState] = None,
    amp: str = "",
    channels_last: bool = False,
) -> dict:
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
        state.batch_images = target.size(0)
        call_hooks(hooks, "on_step_end", state, "val", float(loss))
    meters.all_reduce()
    return meters.results()


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: TrainState,
    *,
    device: torch.device,
    num_epochs: int,
    topk: Sequence[int] = (1, 5),
    hooks: Sequence[Any] = (),
    amp: str = "",
    channels_last: bool = False,
) -> TrainState:
    """Train from ``state.epoch`` (batch ``state.batch``) to ``num_epochs``, validating after
    each epoch; return early, ``state.batch`` > 0 if inside an epoch, when a stop is requested."""
    scaler = None
    if amp == "fp16" and device.type == "cuda":
        # torch.amp.GradScaler is torch >= 2.3; torch.cuda.amp's is the same class before that
        scaler = (
            torch.amp.GradScaler("cuda")
            if hasattr(torch.amp, "GradScaler")
            else torch.cuda.amp.GradScaler()
        )
    call_hooks(hooks, "on_fit_start", state)
    while state.epoch < num_epochs:
        (state.stop_requested,) = distributed.any_rank(state.stop_requested)
        if state.stop_requested:
            break
        epoch = state.epoch
        _set_epoch(train_loader, epoch)
        t0 = time.time()
        train = train_one_epoch(
            model,
            train_loader,
            optimizer,
            schedule,
            state,
            device=device,
            topk=topk,
            hooks=hooks,
            amp=amp,
            scaler=scaler,
            channels_last=channels_last,
        )
        if state.batch:
            break  # stopped mid-epoch
        train["epoch_time"] = time.time() - t0
        train["images_per_s"] = train["images"] / max(train["epoch_time"], 1e-9)
        t1 = time.time()
        val = evaluate(
            distributed.eval_module(model),
            val_loader,
            device=device,
            topk=topk,
            hooks=hooks,
            state=state,
            amp=amp,
            channels_last=channels_last,
        )
        val["epoch_time"] = time.time() - t1
        val["images_per_s"] = val["images"] / max(val["epoch_time"], 1e-9)
        val["is_best"] = val["top1_accuracy"] > state.best_val
        state.best_val = max(state.best_val, val["top1_accuracy"])
        val["best_val"] = state.best_val
        state.history.append({"epoch": epoch, "train": train, "val": val})
        state.epoch = epoch + 1
        call_hooks(hooks, "on_epoch_end", state, train, val)
    call_hooks(hooks, "on_fit_end", state)
    return state
