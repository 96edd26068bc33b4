"""One job from a Config: ``setup(cfg) -> Job`` (genutil.job), then ``train(job)`` or
``evaluate(job)`` (genutil.evaluation).

Files of a run (title = ``base=<yml>_key=value...``): in ``save_dir/title/`` the checkpoints
(``init.pt`` before the first epoch, ``epoch_{e}.pt`` after epoch 0 and every 10th epoch,
``best.pt`` at each new best, ``last.pt`` after every epoch and when stopped by a signal) and the
run's record (genutil.record: config.yaml, metrics.jsonl, environment.jsonl, console.log);
TensorBoard events in ``log_dir/title/``. Resuming (exactly, on the CPU) and stopping on
SIGINT/SIGTERM: genutil.resume.

Under torchrun (genutil.distributed) every process runs this; only rank 0 writes and prints.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

from genutil import distributed
from genutil.checkpoint import remove_stale_temps
from genutil.config import Config
from genutil.errors import UserError
from genutil.evaluation import evaluate
from genutil.job import Job, make_optimizer, seed_everything, select_devices, setup
from genutil.log import ConsoleHook, ProgressHook, TensorBoardHook
from genutil.profiling import describe, profile
from genutil.record import CONSOLE, Console, RecordHook, config_of_title
from genutil.resume import CheckpointHook, stop_on_signals
from genutil.schedules import Schedule
from genutil.trainer import DivergenceError, fit
from models.graphs import fastpath

__all__ = [
    "Job",
    "setup",
    "train",
    "evaluate",
    "run",
    "seed_everything",
    "select_devices",
    "make_optimizer",
    "CheckpointHook",
]

log = logging.getLogger(__name__)


def _schedule(cfg: Config, data: Any) -> Schedule:
    return Schedule(
        cfg.lr_scheduler,
        cfg.lr,
        cfg.num_epochs,
        len(data.train_loader),
        milestones=list(cfg.multistep_lr_milestones),
        gamma=cfg.exp_decaying_lr_gamma
        if cfg.lr_scheduler == "exp_decaying"
        else cfg.multistep_lr_gamma,
        dataset_len=len(data.train_loader.dataset),
        batch_size=cfg.batch_size,
    )


def _hooks(job: Job, saver: CheckpointHook) -> tuple[list, Optional[TensorBoardHook]]:
    """The checkpoint hook in every process; TensorBoard, progress and console on rank 0."""
    if not job.info.is_primary:
        return [saver], None
    stale = remove_stale_temps(job.folder)
    if stale:
        log.info("removed %d partial checkpoint file(s) of a killed save", len(stale))
    cfg = job.cfg
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in {**config_of_title(cfg), "num_epochs": cfg.num_epochs}.items()
    }
    tb = TensorBoardHook(
        job.log_folder, job.net, profile=None if cfg.skip_profiling else profile, hparams=hparams
    )
    record = RecordHook(job.folder, cfg, job.title, job.net, job.device, job.info.world_size)
    return [
        saver,
        record,
        tb,
        ProgressHook(cfg.progress, cfg.num_epochs, job.write),
        ConsoleHook(cfg.num_epochs, job.write),
    ], tb


def train(job: Job, resume_command: str = "") -> dict[str, Any]:
    """Train to ``num_epochs`` from where the job stands; return the last validation metrics.
    ``resume_command`` is the command line that continues the run, printed if a signal stops
    it."""
    cfg, state, info = job.cfg, job.state, job.info
    if job.finished:
        job.write(
            f"=> {job.title} has trained all {cfg.num_epochs} epochs ({job.resume}): nothing to do"
        )
        return {}
    steps = len(job.data.train_loader)
    saver = CheckpointHook(
        job.folder, job.net, job.optimizer, cfg, job.title, steps_per_epoch=steps,
        world_size=info.world_size,
    )  # fmt: skip
    hooks, tb = _hooks(job, saver)
    where = str(job.device)
    if info.enabled:
        where = (
            f"{info.world_size} process{'es' if info.world_size > 1 else ''} ({job.device.type})"
        )
    job.write(
        f"=> {job.title}: {sum(p.numel() for p in job.model.parameters())} parameters on "
        f"{where}, {steps} steps per epoch; checkpoints in {job.folder}"
    )
    counted = describe(profile(job.model))
    for line in counted if not cfg.skip_profiling else counted[:1]:
        job.write(line)
    job.write(fastpath.summary(job.device))
    distributed.barrier()  # no process writes before every process has passed its checks
    try:
        with stop_on_signals(state, info.enabled) as signals:
            fit(
                job.net, job.data.train_loader, job.data.val_loader, job.optimizer,
                _schedule(cfg, job.data), state, device=job.device, num_epochs=cfg.num_epochs,
                topk=cfg.topk, hooks=hooks, amp=cfg.amp,
                channels_last=cfg.channels_last and job.device.type == "cuda",
            )  # fmt: skip
    except DivergenceError as e:
        raise DivergenceError(f"{e} in {job.folder}") from None
    except (RuntimeError, MemoryError) as e:
        if not _out_of_memory(e):
            raise
        raise UserError(
            f"out of memory at epoch {state.epoch} step {state.batch} with batch_size "
            f"{cfg.batch_size}: lower batch_size; the checkpoints so far are kept in {job.folder}"
        ) from None
    finally:
        if tb is not None:
            tb.close()
    if state.stop_requested:
        path = saver.save_stop(state)
        at = (
            f"step {state.batch} of epoch {state.epoch}"
            if state.batch
            else f"the start of epoch {state.epoch}"
        )
        job.write(f"=> stopped by {signals[0] if signals else 'request'} at {at}; saved {path}")
        job.write(f"resume with: {resume_command or '--resume auto (same command line)'}")
        return {}
    last = state.history[-1]["val"] if state.history else {}
    if last:
        job.write(
            f"final top-1 {100 * last['top1_accuracy']:.2f}% (best {100 * state.best_val:.2f}%)"
        )
    return last


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate" in text


def run(
    cfg: Config,
    title: str,
    write: Callable[[str], None] = print,
    resume_command: str = "",
    said: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train (or with ``evaluate`` only evaluate) as the config says; return final metrics.

    Under torchrun this joins the process group (and leaves it on return). ``said``: lines the
    caller printed before, kept in the run's console.log.
    """
    info = distributed.init_distributed()
    console = Console(write if info.is_primary else (lambda _: None))
    for line in said:  # printed already by the caller (main.py's process settings)
        console.record(line)
    job = None
    try:
        job = setup(cfg, title, console, info)
        if job.lock is not None:  # training, rank 0: the run's folder is ours
            console.open(os.path.join(job.folder, CONSOLE))
        result = evaluate(job) if cfg.evaluate else train(job, resume_command)
    finally:
        console.close()
        if job is not None and job.lock is not None:
            job.lock.release()
    # after an error the process just exits: tearing down a group that a failed rank has left
    # can block or abort, and would hide the one-line error
    distributed.shutdown(info)
    return result
