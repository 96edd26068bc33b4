"""One job from a Config: checks, seed, model, resume, data, then train or evaluate.

Files of a run (title = ``base=<yml>_key=value...``): checkpoints in ``save_dir/title/``
(``init.pt`` before the first epoch, ``epoch_{e}.pt`` after epoch 0 and every 10th epoch,
``best.pt`` at each new best, ``last.pt`` after every epoch and when stopped by a signal) and
TensorBoard events in ``log_dir/title/``.

Order matters: everything a user can get wrong (class names, checkpoint file, a fresh start over
an earlier run, an unwritable folder, the checkpoint's fit to the model, the data) is checked
before anything is written, the cheap checks first. Resuming (exactly, on the CPU) and stopping
on SIGINT/SIGTERM: genutil.resume.

Under torchrun (genutil.distributed) every process runs this; only rank 0 writes and prints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import tempfile
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from genutil import api, distributed
from genutil.allocator import keep_freed_memory
from genutil.checkpoint import load_model_state, model_state, read_checkpoint, remove_stale_temps
from genutil.config import Config
from genutil.distributed import DistInfo
from genutil.errors import ConfigError
from genutil.log import ConsoleHook, ProgressHook, TensorBoardHook
from genutil.profiling import describe, profile_or_none
from genutil.registry import resolve
from genutil.resume import (
    CheckpointHook,
    check_fresh,
    restore,
    restore_rng,
    resume_path,
    stop_on_signals,
)
from genutil.schedules import Schedule
from genutil.trainer import DivergenceError, TrainState, evaluate, fit
from models.graphs import native

__all__ = ["run", "seed_everything", "select_devices", "CheckpointHook", "make_optimizer"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from the config's ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def select_devices(gpus: list, info: DistInfo = DistInfo()) -> tuple[torch.device, list]:
    """(device, GPU ids for DataParallel). No CUDA: the CPU, whatever ``gpus`` says. Under
    torchrun: GPU ``LOCAL_RANK`` (or the CPU) and no DataParallel."""
    if info.enabled:
        if len(gpus) > 1:
            raise ConfigError(
                f"--gpus {' '.join(map(str, gpus))} asks for DataParallel, but "
                "under torchrun each process uses GPU LOCAL_RANK: drop --gpus"
            )
        cuda = torch.cuda.is_available()
        return (torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")), []
    if not torch.cuda.is_available():
        if gpus:
            log.warning("no CUDA device is available: running on the CPU")
        return torch.device("cpu"), []
    count = torch.cuda.device_count()
    ids = list(gpus) or list(range(count))
    bad = [g for g in ids if g >= count]
    if bad:
        raise ConfigError(
            f"--gpus {bad} not present (this machine has {count} GPU(s)): choose ids below {count}"
        )
    return torch.device(f"cuda:{ids[0]}"), ids


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with the config's lr, momentum, weight decay and Nesterov flag (``nestorov``)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nestorov and cfg.momentum > 0,
    )


def _apply_use_graph(cfg: Config, model: nn.Module) -> None:
    """fine_tune: wiring (and weights) from ``use_graph``; weights from ``use_init``."""
    if not cfg.use_graph and not cfg.use_init:
        return
    if cfg.graph != "fine_tune":
        raise ConfigError(
            f"use_graph/use_init need graph: fine_tune (got {cfg.graph!r}): "
            "set --graph fine_tune or drop use_graph/use_init"
        )
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


def _check_writable(folders: dict[str, str], create: bool) -> None:
    """Each folder must be creatable and writable: checked without writing (``create`` False)
    before anything is loaded, then for real, a scratch file in each, just before training."""
    for key, folder in folders.items():
        try:
            if create:
                os.makedirs(folder, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder):
                    pass
                continue
            existing = os.path.abspath(folder)
            while not os.path.exists(existing):
                existing = os.path.dirname(existing)
            if not os.path.isdir(existing):
                raise OSError(f"{existing} is a file, not a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise OSError(f"{existing} is not writable")
        except OSError as e:
            raise ConfigError(
                f"{key} {folder} cannot be written ({e.strerror or e}): choose another --{key}"
            ) from None


def _silent(_: str) -> None:
    pass


def run(
    cfg: Config, title: str, write: Callable[[str], None] = print, resume_command: str = ""
) -> dict[str, Any]:
    """Train (or with ``evaluate`` only evaluate) as the config says; return final metrics.

    ``resume_command`` is the command line that continues this run, printed when a signal stops
    it. Under torchrun this joins the process group (and leaves it on return).
    """
    info = distributed.init_distributed()
    result = _run(cfg, title, write if info.is_primary else _silent, resume_command, info)
    # after an error the process just exits: tearing down a group that a failed rank has left
    # can block or abort, and would hide the one-line error
    distributed.shutdown(info)
    return result


def _run(
    cfg: Config, title: str, write: Callable[[str], None], resume_command: str, info: DistInfo
) -> dict[str, Any]:
    if not cfg.evaluate and (cfg.fast_eval or cfg.use_dgl or cfg.export):
        raise ConfigError(
            "--fast_eval/--use_dgl/--export shrink a trained model for evaluation: "
            "add --evaluate --resume <checkpoint>"
        )
    data_class = resolve(cfg.data, "data")  # names first: cheap, and the likeliest typos
    resolve(cfg.model, "model")
    device, gpu_ids = select_devices(cfg.gpus, info)
    folder = os.path.join(cfg.save_dir, title)
    resume = resume_path(cfg, folder)
    ckpt = read_checkpoint(resume) if resume else None  # refuses unsafe or torn files first
    if ckpt is None and cfg.evaluate:
        raise ConfigError("--evaluate needs a checkpoint: add --resume <file>")
    if ckpt is None and cfg.resume != "auto":
        check_fresh(folder)
    outputs = {"save_dir": folder, "log_dir": os.path.join(cfg.log_dir, title)}
    if not cfg.evaluate and info.is_primary:
        _check_writable(outputs, create=False)
    # batch sizes in the config are global; each process loads its share (genutil.distributed)
    data_cfg = dataclasses.replace(
        cfg,
        batch_size=distributed.per_process(cfg.batch_size, info.world_size, "batch_size"),
        test_batch_size=max(1, -(-cfg.test_batch_size // info.world_size)),
    )

    torch.backends.cudnn.benchmark = True
    if cfg.keep_freed_memory:
        keep_freed_memory()  # no fresh pages per step on the CPU side (genutil/allocator.py)
    native.native_kernels(cfg.native_kernels)
    seed_everything(cfg.seed)
    model = api.model_from_config(cfg)
    if info.enabled and info.rank:
        # DDP broadcasts rank 0's weights; from here on each process draws its own random
        # numbers (augmentation with workers=0, targeted dropout), not copies of rank 0's
        seed_everything(cfg.seed + info.rank)
    _apply_use_graph(cfg, model)
    # on the device before the optimizer loads its state: momentum goes where the weights are
    model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    state = TrainState()
    if ckpt is not None:
        restore(ckpt, resume, cfg, model, optimizer, state)
        if not cfg.evaluate and state.epoch >= cfg.num_epochs:
            write(f"=> {title} has trained all {cfg.num_epochs} epochs ({resume}): nothing to do")
            return {}
    data = data_class.from_config(
        data_cfg, pin_memory=device.type == "cuda", distributed=info.enabled
    )
    if not cfg.evaluate and info.is_primary:  # the last check: it creates the run's folders
        _check_writable(outputs, create=True)
    if ckpt is not None:
        if not cfg.evaluate:
            restore_rng(ckpt, resume, info, len(data.train_loader))
        at = f", batch {state.batch} of it" if state.batch else ""
        write(f"=> resumed {resume} (next epoch {state.epoch}{at}, step {state.step})")

    net: nn.Module = model
    if cfg.evaluate and (cfg.fast_eval or cfg.use_dgl):
        pass  # the shrunk model below runs on one device: no DataParallel, no compile
    elif info.enabled and not cfg.evaluate:
        net = distributed.wrap_ddp(model, device)
    elif len(gpu_ids) > 1:
        net = nn.DataParallel(model, device_ids=gpu_ids)
    if cfg.compile and not (cfg.evaluate and (cfg.fast_eval or cfg.use_dgl)):
        net = torch.compile(net)

    if cfg.evaluate:
        if not cfg.skip_profiling:
            result = profile_or_none(model)
            for line in describe(result) if result is not None else []:
                write(line)
        backend = "dgl" if cfg.use_dgl else cfg.graph_backend
        if cfg.fast_eval or backend != "dense" or cfg.export:
            example = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
            net, lines = api.prepare_for_eval(
                model, fast=cfg.fast_eval, backend=backend, export=cfg.export, example=example
            )
            for line in lines:
                write(line)
        metrics = evaluate(
            net,
            data.val_loader,
            device=device,
            topk=cfg.topk,
            amp=cfg.amp,
            hooks=[ProgressHook(cfg.progress)] if info.is_primary else [],
        )
        write(
            f"eval {title}: loss {metrics['CELoss']:.4f} "
            + " ".join(f"top-{k} {100 * metrics[f'top{k}_accuracy']:.2f}%" for k in cfg.topk)
        )
        return metrics
    return _train(
        cfg, title, write, resume_command, info, net, model, optimizer, data, state, device, folder
    )


def _train(
    cfg: Config,
    title: str,
    write: Callable[[str], None],
    resume_command: str,
    info: DistInfo,
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    state: TrainState,
    device: torch.device,
    folder: str,
) -> dict[str, Any]:
    steps = len(data.train_loader)
    schedule = Schedule(
        cfg.lr_scheduler,
        cfg.lr,
        cfg.num_epochs,
        steps,
        milestones=list(cfg.multistep_lr_milestones),
        gamma=cfg.exp_decaying_lr_gamma
        if cfg.lr_scheduler == "exp_decaying"
        else cfg.multistep_lr_gamma,
        dataset_len=len(data.train_loader.dataset),
        batch_size=cfg.batch_size,
    )
    saver = CheckpointHook(
        folder, net, optimizer, cfg, title, steps_per_epoch=steps, world_size=info.world_size
    )
    hooks: list = [saver]
    tb = None
    if info.is_primary:
        stale = remove_stale_temps(folder)
        if stale:
            log.info("removed %d partial checkpoint file(s) of a killed save", len(stale))
        tb = TensorBoardHook(
            os.path.join(cfg.log_dir, title),
            net,
            profile=None if cfg.skip_profiling else profile_or_none,
        )
        hooks += [tb, ProgressHook(cfg.progress), ConsoleHook(cfg.num_epochs, write)]
    plural = "es" if info.world_size > 1 else ""
    where = f"{info.world_size} process{plural} ({device.type})" if info.enabled else str(device)
    write(
        f"=> {title}: {sum(p.numel() for p in model.parameters())} parameters on {where}, "
        f"{steps} steps per epoch; checkpoints in {folder}"
    )
    distributed.barrier()  # no process writes before every process has passed its checks
    try:
        with stop_on_signals(state, info.enabled) as signals:
            fit(
                net,
                data.train_loader,
                data.val_loader,
                optimizer,
                schedule,
                state,
                device=device,
                num_epochs=cfg.num_epochs,
                topk=cfg.topk,
                hooks=hooks,
                amp=cfg.amp,
                channels_last=cfg.channels_last and device.type == "cuda",
            )
    except DivergenceError as e:
        raise DivergenceError(f"{e} in {folder}") from None
    finally:
        if tb is not None:
            tb.close()
    if state.stop_requested:
        path = saver.save_stop(state)
        where = (
            f"step {state.batch} of epoch {state.epoch}"
            if state.batch
            else f"the start of epoch {state.epoch}"
        )
        write(f"=> stopped by {signals[0] if signals else 'request'} at {where}; saved {path}")
        write(f"resume with: {resume_command or '--resume auto (same command line)'}")
        return {}
    last = state.history[-1]["val"] if state.history else {}
    if last:
        write(f"final top-1 {100 * last['top1_accuracy']:.2f}% (best {100 * state.best_val:.2f}%)")
    return last
