"""``--evaluate``: loss and top-k of a checkpoint, optionally of its shrunk model
(``--fast_eval``), written as JSON (``--results_file``, or beside the checkpoint) and, with
``--export``, the shrunk model saved for use outside this project.

This is the command line's layer: errors of the API (a backend that cannot run here, a network
that cannot shrink) are worded here as the flags to change.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import torch
import torch.nn as nn

from genutil import api
from genutil.errors import ConfigError
from genutil.job import Job
from genutil.log import ProgressHook
from genutil.profiling import describe, profile
from genutil.record import default_results_path, write_results
from genutil.trainer import evaluate as evaluate_loop
from models.graphs.fast import BackendUnavailable

__all__ = ["evaluate", "shrunk_model"]


def _export(job: Job, shrunk: nn.Module, backend: str) -> None:
    cfg = job.cfg
    source, note = shrunk, ""
    if cfg.export.endswith(".pt2") and backend != "dense":  # torch.export has no sparse products
        source, note = api.fast_eval(job.model, backend="dense"), " (the dense fast-eval form)"
    elif backend == "dgl":  # DGL graphs do not serialize: the sparse twin, same outputs
        source, note = api.fast_eval(job.model, backend="sparse"), " (the sparse twin of dgl)"
    example = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size).to(job.device)
    data = job.data
    metadata = {
        "input_shape": [cfg.in_channels, cfg.image_size, cfg.image_size],
        "normalization": getattr(data, "normalization", None),
        "classes": getattr(data, "classes", None),
        "num_classes": cfg.output_size,
        "checkpoint": os.path.abspath(job.resume) if job.resume else None,
        "title": job.title,
        "params_paper_count": profile(job.model).params,
        "config": dataclasses.asdict(cfg),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    diff = api.export_model(source, cfg.export, example, metadata)
    how = (
        "torch.export; load it with torch.export.load(path).module()"
        if cfg.export.endswith(".pt2")
        else "TorchScript; load it with torch.jit.load(path)"
    )
    job.write(
        f"exported the shrunk model{note} to {cfg.export} ({how}; metadata.json inside; "
        f"reloaded, max |diff| {diff:.1e})"
    )


def shrunk_model(job: Job) -> tuple[nn.Module, str]:
    """``--fast_eval``: (the shrunk model, its backend), exported with ``--export``."""
    cfg = job.cfg
    backend = api.resolve_backend("dgl" if cfg.use_dgl else cfg.graph_backend, job.device)
    try:
        shrunk = api.shrink(job.model, backend=backend)
        for line in shrunk.lines:
            job.write(line)
        if cfg.export:
            _export(job, shrunk.module, backend)
    except BackendUnavailable as e:
        raise ConfigError(
            f"{e}: run `make dgl-env`, then use .venv-dgl/bin/python instead of python"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{e}: drop --fast_eval or choose another --graph_backend") from None
    return shrunk.module, backend


def evaluate(job: Job) -> dict[str, Any]:
    """Loss and top-k of the checkpoint (or its shrunk model), printed and written as JSON."""
    cfg = job.cfg
    counted = profile(job.model, None)
    for line in describe(counted) if not cfg.skip_profiling else describe(counted)[:1]:
        job.write(line)
    net, backend = shrunk_model(job) if cfg.fast_eval else (job.net, "full model")
    start = time.perf_counter()
    metrics = evaluate_loop(
        net,
        job.data.val_loader,
        device=job.device,
        topk=cfg.topk,
        amp=cfg.amp,
        hooks=[ProgressHook(cfg.progress, write=job.write)] if job.info.is_primary else [],
    )
    metrics["images_per_s"] = metrics["images"] / max(time.perf_counter() - start, 1e-9)
    job.write(
        f"eval {job.title}: loss {metrics['CELoss']:.4f} "
        + " ".join(f"top-{k} {100 * metrics[f'top{k}_accuracy']:.2f}%" for k in cfg.topk)
        + f", {metrics['images_per_s']:,.0f} img/s ({backend})"
    )
    if job.info.is_primary:
        _write_results(job, metrics, counted, backend)
    return metrics


def _write_results(job: Job, metrics: dict, counted, backend: str) -> None:
    cfg = job.cfg
    results = {
        **{f"top{k}": metrics[f"top{k}_accuracy"] for k in cfg.topk},
        "loss": metrics["CELoss"],
        "images": metrics["images"],
        "images_per_s": metrics["images_per_s"],
        "params": counted.params,
        "macs": counted.macs,
        "count": counted.method,
        "dense_params": counted.dense_params,
        "backend": backend,
        "device": str(job.device),
        "checkpoint": os.path.abspath(job.resume) if job.resume else None,
        "checkpoint_config": job.checkpoint_config,
        "config": dataclasses.asdict(cfg),
        "title": job.title,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path: Optional[str] = cfg.results_file
    suffix = "" if backend == "full model" else f"_fast_{backend}"
    try:
        path = path or default_results_path(job.resume, suffix)
        write_results(path, results)
    except OSError as e:
        if cfg.results_file:
            raise ConfigError(
                f"could not write --results_file {cfg.results_file} ({e.strerror}): choose "
                "another file"
            ) from None
        job.write(f"results not written beside the checkpoint ({e.strerror}): add --results_file")
        return
    job.write(f"results in {path}")
