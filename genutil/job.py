"""A run's setup: ``setup(cfg, title) -> Job``, everything a run works with, checked.

``setup`` checks everything a user can get wrong (class names, keys that would act on nothing,
the checkpoint file and its settings, a fresh start over an earlier run, a folder holding
another run, outputs that exist, an unwritable folder, the data) before anything is written, the
cheap checks first; then, for training, it takes the run folder's lock (genutil.runlock). This
is the command line's layer: errors say what to type. ``genutil.run`` trains a Job,
``genutil.evaluation`` evaluates one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from genutil import api, distributed
from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config, check_keys_used
from genutil.distributed import DistInfo
from genutil.errors import ConfigError, DataError
from genutil.registry import resolve
from genutil.resume import (
    check_fresh,
    check_resume_target,
    compare_config,
    restore,
    restore_rng,
    resume_path,
    run_checkpoints,
)
from genutil.runlock import LOCK_NAME, RunLock
from genutil.trainer import TrainState
from models.contract import graph_layers
from models.graphs.edges import FineTune

__all__ = ["Job", "setup", "seed_everything", "select_devices", "make_optimizer"]

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


@dataclass
class Job:
    """Everything a run works with, built by ``setup``. ``model`` is the bare network, ``net``
    what runs it (DataParallel, DDP, torch.compile, or the shrunk model of ``--fast_eval``)."""

    cfg: Config
    title: str
    write: Callable[[str], None]
    info: DistInfo
    device: torch.device
    gpu_ids: list
    folder: str  # save_dir/title
    log_folder: str  # log_dir/title
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainState
    resume: Optional[str]  # the checkpoint continued from, if any
    data: Any = None  # .train_loader, .val_loader (None: a finished run, nothing to load)
    net: Optional[nn.Module] = None
    lock: Optional[RunLock] = None  # held while training (rank 0)
    checkpoint_config: Optional[dict] = None  # the config stored in the checkpoint, if any

    @property
    def finished(self) -> bool:
        return not self.cfg.evaluate and self.state.epoch >= self.cfg.num_epochs


def _check_mode(cfg: Config) -> None:
    if not cfg.evaluate and (cfg.fast_eval or cfg.use_dgl or cfg.export):
        raise ConfigError(
            "--fast_eval/--use_dgl/--export shrink a trained model for evaluation: "
            "add --evaluate --resume <checkpoint>"
        )
    chosen = cfg.use_dgl or "graph_backend" in cfg.set_keys
    if cfg.evaluate and not cfg.fast_eval and (chosen or cfg.export):
        what = "--export" if cfg.export else "--use_dgl" if cfg.use_dgl else "--graph_backend"
        raise ConfigError(f"{what} applies to the shrunk model: add --fast_eval")
    if cfg.results_file and not cfg.evaluate:
        raise ConfigError("--results_file is where --evaluate writes: add --evaluate")
    if cfg.overwrite and cfg.resume and not cfg.evaluate:
        raise ConfigError(
            "--overwrite replaces a fresh run's folder, --resume continues one: drop one of them"
        )


def _check_output_file(key: str, path: str, overwrite: bool, read: Optional[str]) -> None:
    """A file a command will write (``--export``): not a folder, never the checkpoint being
    read, not an existing file unless ``overwrite``, in a folder that can be written."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise ConfigError(f"--{key} {path} is a folder: name a file in it")
    if read and os.path.exists(target) and os.path.samefile(target, read):
        raise ConfigError(
            f"--{key} {path} is the checkpoint being read ({read}): write to another file"
        )
    if os.path.exists(target) and not overwrite:
        raise ConfigError(
            f"--{key} {path} already exists: choose another file, or add --overwrite to replace it"
        )
    existing = os.path.dirname(target)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--{key} {path}: {existing} cannot be written: choose another folder")


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
    # the trained run had another wiring (a complete graph, say): that is the point here
    api.load_checkpoint(model, cfg.use_graph, allow_config_change=True)
    for layer in graph_layers(model):
        if isinstance(layer.module, FineTune):
            layer.module.init_mask()  # freeze the trained run's top-k as the wiring
    if cfg.use_init:
        init = model_state(read_checkpoint(cfg.use_init))
        init = {k: v for k, v in init.items() if not k.endswith(".mask")}  # keep the masks
        masks = {k: v for k, v in model.state_dict().items() if k.endswith(".mask")}
        load_model_state(model, {**init, **masks}, source=f"use_init {cfg.use_init}")


def _wrap(job: Job) -> nn.Module:
    """What runs the model: DDP under torchrun, DataParallel over several GPUs, compiled."""
    cfg, net = job.cfg, job.model
    if job.info.enabled and not cfg.evaluate:
        net = distributed.wrap_ddp(net, job.device)
    elif len(job.gpu_ids) > 1:
        net = nn.DataParallel(net, device_ids=job.gpu_ids)
    return torch.compile(net) if cfg.compile else net


def setup(cfg: Config, title: str, write: Callable[[str], None] = print, info=DistInfo()) -> Job:
    """Check and build everything of a run; nothing is written before every check has passed
    but the run's folders and its lock (training only, rank 0)."""
    _check_mode(cfg)
    data_class = resolve(cfg.data, "data")  # names first: cheap, and the likeliest typos
    for note in check_keys_used(cfg, resolve(cfg.model, "model"), data_class):
        write(note)
    device, gpu_ids = select_devices(cfg.gpus, info)
    folder = os.path.join(cfg.save_dir, title)
    resume = resume_path(cfg, folder, write)
    ckpt = read_checkpoint(resume) if resume else None  # refuses unsafe or torn files first
    if ckpt is None and cfg.evaluate:
        where = f"found no checkpoint in {folder}" if cfg.resume == "auto" else "has no checkpoint"
        raise ConfigError(
            f"--evaluate {where}: name one with --resume <file> (or train this run first)"
        )
    if not cfg.evaluate and ckpt is None:
        check_fresh(folder, cfg.overwrite)
    elif not cfg.evaluate and cfg.resume != "auto":
        check_resume_target(resume, folder)
    if ckpt is not None:
        compare_config(ckpt, resume, cfg, write)
    if cfg.export:
        _check_output_file("export", cfg.export, cfg.overwrite, resume)
    if cfg.results_file:
        _check_output_file("results_file", cfg.results_file, cfg.overwrite, resume)
    outputs = {"save_dir": folder, "log_dir": os.path.join(cfg.log_dir, title)}
    if not cfg.evaluate and info.is_primary:
        _check_writable(outputs, create=False)

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
    job = Job(
        cfg, title, write, info, device, gpu_ids, folder, outputs["log_dir"], model,
        make_optimizer(cfg, model), TrainState(), resume,
    )  # fmt: skip
    if ckpt is not None:
        restore(ckpt, resume, cfg, model, job.optimizer, job.state)
        job.checkpoint_config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
        if not cfg.evaluate and ckpt.get("title") not in (None, title):
            job.state.best_val = 0.0  # a new run begins from another run's checkpoint
            write(f"=> continuing {resume} (run {ckpt['title']}) as the run {title}")
    if job.finished:
        return job
    # batch sizes in the config are global; each process loads its share (genutil.distributed)
    data_cfg = dataclasses.replace(
        cfg,
        batch_size=distributed.per_process(cfg.batch_size, info.world_size, "batch_size"),
        test_batch_size=max(1, -(-cfg.test_batch_size // info.world_size)),
    )
    job.data = data_class.from_config(
        data_cfg, pin_memory=device.type == "cuda", distributed=info.enabled
    )
    _check_data(cfg, job.data)
    if not cfg.evaluate and info.is_primary:  # the last step: the run's folders and its lock
        _claim_folder(job, ckpt is None)
        _check_writable(outputs, create=True)
    if ckpt is not None:
        if not cfg.evaluate:
            restore_rng(ckpt, resume, info, len(job.data.train_loader))
        at = f", batch {job.state.batch} of it" if job.state.batch else ""
        write(f"=> resumed {resume} (next epoch {job.state.epoch}{at}, step {job.state.step})")
    job.net = job.model if cfg.evaluate and cfg.fast_eval else _wrap(job)
    return job


def _check_data(cfg: Config, data: Any) -> None:
    """What only the loaded data can tell: its classes fit the model."""
    classes = getattr(data, "num_classes", None)
    if classes is not None and classes > cfg.output_size:
        raise DataError(
            f"the data has {classes} classes, the model's output_size is {cfg.output_size}: set "
            f"--output_size {classes} (or check the data folder)"
        )


def _claim_folder(job: Job, fresh: bool) -> None:
    """Take the run folder's lock (one writer per run), then look again: another run may have
    written into the folder since the checks. ``--overwrite`` of a fresh run clears it now."""
    job.lock = RunLock(job.folder).acquire()
    if job.lock.taken_over:
        job.write(f"=> {job.folder}: {job.lock.taken_over}")
    if fresh and job.cfg.overwrite:
        removed = [n for n in os.listdir(job.folder) if n != LOCK_NAME]
        for name in removed:
            path = os.path.join(job.folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        shutil.rmtree(job.log_folder, ignore_errors=True)
        if removed:
            job.write(
                f"=> --overwrite: removed the earlier run's {len(removed)} files from {job.folder}"
            )
        return
    now = resume_path(job.cfg, job.folder, lambda _: None) if job.cfg.resume == "auto" else None
    if (fresh and run_checkpoints(job.folder)) or (job.cfg.resume == "auto" and now != job.resume):
        job.lock.release()
        raise ConfigError(
            f"{job.folder} changed while this run was starting (another run wrote into it): "
            "start again, with --resume auto to continue it"
        )
