"""The record a run leaves in its folder, for people and scripts (``python -m genutil.report``).

In ``save_dir/<title>/`` beside the checkpoints:

- ``config.yaml``: the resolved config, every key, as an experiment file: ``python main.py
  app:<run folder>/config.yaml --save_dir <elsewhere>`` runs the same experiment again (its
  ``title`` key keeps the run's name). Rewritten when a resumed run changes a key.
- ``metrics.jsonl``: one JSON object per epoch (counted from 1): train and validation loss,
  top-1/top-5, lr, epoch times, images/s, the kept edges that changed during the epoch, and the
  parameters by the paper's count.
- ``environment.jsonl``: one JSON object per start or resume of the run: seed, Python, torch and
  numpy versions, the git commit and whether the tree was dirty, device, threads, the fast paths
  that run, host, command line.
- ``console.log``: every line the run printed (appended by each start).

``--evaluate`` writes its results as JSON (``write_results``) to ``--results_file`` or, by
default, beside the checkpoint, never over an existing file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml

from genutil.config import NOT_IN_TITLE, Config, keys_read
from genutil.profiling import profile
from genutil.registry import resolve
from models.contract import graph_layers, unwrap
from models.graphs import fastpath

__all__ = [
    "Console",
    "RecordHook",
    "resolved_yaml",
    "environment",
    "write_results",
    "default_results_path",
    "CONFIG",
    "METRICS",
    "ENVIRONMENT",
    "CONSOLE",
]

CONFIG, METRICS, ENVIRONMENT, CONSOLE = (
    "config.yaml",
    "metrics.jsonl",
    "environment.jsonl",
    "console.log",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what a command did with a run, not what the run is: left out of config.yaml
_COMMAND_KEYS = ("resume", "evaluate", "fast_eval", "use_dgl", "export", "overwrite", "title")


class Console:
    """The run's ``write``: prints, and appends to ``console.log`` once the run's folder is
    known (the lines before are kept and written then). What the library logs (genutil and
    data log through ``logging``, which main.py shows on stdout) goes to the file too."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self._pending: list[str] = []
        self._file = None
        self._handler = _ToConsoleLog(self)
        logging.getLogger().addHandler(self._handler)

    def __call__(self, line: str) -> None:
        self.write(line)
        self.record(line)

    def record(self, line: str) -> None:
        """Keep ``line`` in console.log without printing it."""
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._pending.append(line)

    def open(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.write(f"--- {stamp} {' '.join(sys.argv)}\n")
        for line in self._pending:
            self._file.write(line + "\n")
        self._pending = []
        self._file.flush()

    def close(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        if self._file is not None:
            self._file.close()
            self._file = None


class _ToConsoleLog(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.record(record.getMessage())


def resolved_yaml(cfg: Config, title: str, read: Optional[set] = None) -> str:
    """``cfg`` as an experiment file that trains the same run again: every key the experiment
    reads (``read``; None: every key), resolved; ``title`` keeps its name."""
    values = {}
    for f in dataclasses.fields(Config):
        if f.metadata.get("internal") or f.name in _COMMAND_KEYS:
            continue
        if read is not None and f.name not in read:
            continue
        values[f.name] = getattr(cfg, f.name)
    values["title"] = title
    header = (
        f"# The resolved config of run {title}, written by this project on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.\n# Train it again: python main.py app:<this file> "
        "--save_dir <another folder>\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


def _git() -> dict:
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment(cfg: Config, device: torch.device, world_size: int = 1) -> dict:
    """Where and with what a run ran (``environment.jsonl``)."""
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed": cfg.seed,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git": _git(),
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "processes": world_size,
        "fast_paths": fastpath.active(device),
        "host": socket.gethostname(),
        "command": sys.argv,
    }


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _append_json(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def _kept_masks(model: torch.nn.Module) -> list[torch.Tensor]:
    return [layer.effective_weight() != 0 for layer in graph_layers(model)]


class RecordHook:
    """Writes the run's record (module docstring). Rank 0 only; created once the run's folder
    is locked."""

    def __init__(
        self,
        folder: str,
        cfg: Config,
        title: str,
        model: torch.nn.Module,
        device: torch.device,
        world_size: int = 1,
    ) -> None:
        self.folder, self.cfg, self.title, self.model = folder, cfg, title, model
        self.device, self.world_size = device, world_size
        self._masks: Optional[list[torch.Tensor]] = None

    def on_fit_start(self, state) -> None:
        read = keys_read(self.cfg, resolve(self.cfg.model, "model"), resolve(self.cfg.data, "data"))
        text = resolved_yaml(self.cfg, self.title, read)
        _atomic_text(os.path.join(self.folder, CONFIG), text)
        record = environment(self.cfg, self.device, self.world_size)
        record["start"] = {"epoch": state.epoch + 1, "step": state.step}
        _append_json(os.path.join(self.folder, ENVIRONMENT), record)
        self._masks = _kept_masks(unwrap(self.model))

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        masks = _kept_masks(unwrap(self.model))
        changed = sum(int((a ^ b).sum()) for a, b in zip(self._masks or masks, masks))
        self._masks = masks
        keep = ("CELoss", "top1_accuracy", "top5_accuracy", "epoch_time", "images_per_s")
        record: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
        record.update({f"train_{k}": train[k] for k in keep if k in train})
        record["lr"] = train.get("lr")
        record.update({f"val_{k}": val[k] for k in keep if k in val})
        record["best_top1"] = state.best_val
        record["edges_changed"] = changed
        record["params"] = profile(unwrap(self.model)).params  # the paper's count
        record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
        _append_json(os.path.join(self.folder, METRICS), record)


def default_results_path(checkpoint: str, suffix: str) -> str:
    """``eval_<checkpoint name><suffix>.json`` beside the checkpoint; if that exists, the first
    free ``...-2.json``, ``-3``, ...: an earlier result is never replaced."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    path = os.path.join(folder, f"eval_{stem}{suffix}.json")
    n = 2
    while os.path.exists(path):
        path = os.path.join(folder, f"eval_{stem}{suffix}-{n}.json")
        n += 1
    return path


def write_results(path: str, results: dict) -> None:
    """``results`` as JSON at ``path``, written whole or not at all."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _atomic_text(path, json.dumps(results, indent=1, default=str) + "\n")


def config_of_title(cfg: Config) -> dict:
    """The keys of ``cfg`` that make its run (those a title may name)."""
    return {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in NOT_IN_TITLE and k not in ("set_keys", "cli_keys")
    }
