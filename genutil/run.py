"""One job from a Config: seed, data, model, optimizer, resume, then train or evaluate.

Files of a run (title = ``base=<yml>_key=value...``): checkpoints in ``save_dir/title/``
(``init.pt`` before the first epoch, ``epoch_{e}.pt`` after epoch 0 and every 10th epoch,
``best.pt`` at each new best, ``last.pt`` after every epoch) and TensorBoard events in
``log_dir/title/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from genutil import api
from genutil.checkpoint import (FORMAT_VERSION, load_model_state, model_state, read_checkpoint,
                                rng_state, save_checkpoint, set_rng_state)
from genutil.config import Config
from genutil.errors import CheckpointError, ConfigError
from genutil.log import ConsoleHook, ProgressHook, TensorBoardHook
from genutil.registry import resolve
from genutil.schedules import Schedule
from genutil.trainer import TrainState, evaluate, fit

__all__ = ["run", "seed_everything", "select_devices", "CheckpointHook", "make_optimizer"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from the config's ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def select_devices(gpus: list) -> tuple[torch.device, list]:
    """(device, GPU ids for DataParallel). No CUDA: the CPU, whatever ``gpus`` says."""
    if not torch.cuda.is_available():
        if gpus:
            log.warning("no CUDA device is available: running on the CPU")
        return torch.device("cpu"), []
    count = torch.cuda.device_count()
    ids = list(gpus) or list(range(count))
    bad = [g for g in ids if g >= count]
    if bad:
        raise ConfigError(f"--gpus {bad} not present (this machine has {count} GPU(s)): "
                          f"choose ids below {count}")
    return torch.device(f"cuda:{ids[0]}"), ids


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with the config's lr, momentum, weight decay and Nesterov flag (``nestorov``)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay,
                           nesterov=cfg.nestorov and cfg.momentum > 0)


class CheckpointHook:
    """Writes the run's checkpoints in the original's layout (plus our extra keys)."""

    def __init__(self, folder: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: Config, title: str) -> None:
        self.folder, self.model, self.optimizer = folder, model, optimizer
        self.cfg, self.title = cfg, title

    def payload(self, state: TrainState, last_epoch: int) -> dict:
        model = getattr(self.model, "module", self.model)
        history = state.history[-1] if state.history else {}
        return {
            "model": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "last_epoch": last_epoch,
            "best_val": state.best_val,
            "iter": float(state.step),
            "meters": (history.get("train", {}), history.get("val", {})),
            # ours: never required when loading
            "epoch": state.epoch,
            "step": state.step,
            "rng": rng_state(),
            "config": dataclasses.asdict(self.cfg),
            "title": self.title,
            "format_version": FORMAT_VERSION,
        }

    def save(self, name: str, state: TrainState, last_epoch: int) -> None:
        save_checkpoint(os.path.join(self.folder, name), self.payload(state, last_epoch))

    def on_fit_start(self, state: TrainState) -> None:
        if state.epoch == 0 and state.step == 0:
            self.save("init.pt", state, 0)

    def on_epoch_end(self, state: TrainState, train: dict, val: dict) -> None:
        epoch = state.epoch - 1
        payload = self.payload(state, epoch)
        if epoch == 0 or (epoch + 1) % 10 == 0:
            save_checkpoint(os.path.join(self.folder, f"epoch_{epoch}.pt"), payload)
        if val.get("is_best"):
            save_checkpoint(os.path.join(self.folder, "best.pt"), payload)
        save_checkpoint(os.path.join(self.folder, "last.pt"), payload)


def _resume_path(cfg: Config, folder: str) -> Optional[str]:
    if cfg.resume != "auto":
        return cfg.resume or None
    last = os.path.join(folder, "last.pt")
    return last if os.path.exists(last) else None


def _apply_use_graph(cfg: Config, model: nn.Module) -> None:
    """fine_tune: wiring (and weights) from ``use_graph``; weights from ``use_init``."""
    if not cfg.use_graph and not cfg.use_init:
        return
    if cfg.graph != "fine_tune":
        raise ConfigError(f"use_graph/use_init need graph: fine_tune (got {cfg.graph!r}): "
                          "set --graph fine_tune or drop use_graph/use_init")
    if cfg.use_init and not cfg.use_graph:
        raise ConfigError("use_init needs use_graph (the wiring to keep): set --use_graph")
    api.load_checkpoint(model, cfg.use_graph)
    for layer in model.modules():
        if hasattr(layer, "init_mask"):
            layer.init_mask()  # freeze the trained run's top-k as the wiring
    if cfg.use_init:
        init = model_state(read_checkpoint(cfg.use_init))
        init = {k: v for k, v in init.items() if not k.endswith(".mask")}  # keep the masks
        masks = {k: v for k, v in model.state_dict().items() if k.endswith(".mask")}
        load_model_state(model, {**init, **masks}, source=f"use_init {cfg.use_init}")


def _check_fresh(folder: str) -> None:
    if os.path.isdir(folder) and any(f.endswith(".pt") for f in os.listdir(folder)):
        raise ConfigError(
            f"{folder} already holds checkpoints of this run: continue it with --resume auto, "
            "or pick another --save_dir (nothing was overwritten)")


def run(cfg: Config, title: str, write=print) -> dict[str, Any]:
    """Train (or with ``evaluate`` only evaluate) as the config says; return final metrics."""
    device, gpu_ids = select_devices(cfg.gpus)
    torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    folder = os.path.join(cfg.save_dir, title)

    data = resolve(cfg.data, "data").from_config(cfg, pin_memory=device.type == "cuda")
    model = api.model_from_config(cfg)
    optimizer = make_optimizer(cfg, model)
    _apply_use_graph(cfg, model)

    state = TrainState()
    resume = _resume_path(cfg, folder)
    if resume:
        meta = api.load_checkpoint(model, resume)
        state.epoch = int(meta.get("epoch", meta.get("last_epoch", -1) + 1))
        state.step = int(meta.get("step", meta.get("iter", 0)))
        state.best_val = float(meta.get("best_val", 0.0))
        if not cfg.evaluate and "optimizer" in meta:
            try:
                optimizer.load_state_dict(meta["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"optimizer state of {resume} does not fit ({e}): "
                                      "resume with the experiment file it was trained with")
            set_rng_state(meta.get("rng"))
        write(f"=> resumed {resume} (next epoch {state.epoch}, step {state.step})")
    elif cfg.evaluate:
        raise ConfigError("--evaluate needs a checkpoint: add --resume <file>")
    elif cfg.resume != "auto":
        _check_fresh(folder)

    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    net: nn.Module = nn.DataParallel(model, device_ids=gpu_ids) if len(gpu_ids) > 1 else model
    if cfg.compile:
        net = torch.compile(net)

    if cfg.evaluate:
        metrics = evaluate(net, data.val_loader, device=device, topk=cfg.topk, amp=cfg.amp,
                           hooks=[ProgressHook(cfg.progress)])
        write(f"eval {title}: loss {metrics['CELoss']:.4f} "
              + " ".join(f"top-{k} {100 * metrics[f'top{k}_accuracy']:.2f}%" for k in cfg.topk))
        return metrics

    schedule = Schedule(cfg.lr_scheduler, cfg.lr, cfg.num_epochs, len(data.train_loader),
                        milestones=list(cfg.multistep_lr_milestones),
                        gamma=cfg.exp_decaying_lr_gamma if cfg.lr_scheduler == "exp_decaying"
                        else cfg.multistep_lr_gamma,
                        dataset_len=len(data.train_loader.dataset), batch_size=cfg.batch_size)
    tb = TensorBoardHook(os.path.join(cfg.log_dir, title), net)
    hooks = [CheckpointHook(folder, net, optimizer, cfg, title), tb,
             ProgressHook(cfg.progress), ConsoleHook(cfg.num_epochs, write)]
    write(f"=> {title}: {sum(p.numel() for p in model.parameters())} parameters on {device}, "
          f"{len(data.train_loader)} steps per epoch; checkpoints in {folder}")
    try:
        fit(net, data.train_loader, data.val_loader, optimizer, schedule, state, device=device,
            num_epochs=cfg.num_epochs, topk=cfg.topk, hooks=hooks, amp=cfg.amp,
            channels_last=cfg.channels_last and device.type == "cuda")
    finally:
        tb.close()
    last = state.history[-1]["val"] if state.history else {}
    if last:
        write(f"final top-1 {100 * last['top1_accuracy']:.2f}% (best {100 * state.best_val:.2f}%)")
    return last
