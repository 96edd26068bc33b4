"""What a run shows: progress, a line per epoch, TensorBoard scalars, figures and hparams.

All are trainer hooks (see genutil.trainer); only the primary process creates them. Epochs are
counted from 1 everywhere a person reads them ("epoch 3/15"); the checkpoint files keep the
original's names, counted from 0 (``epoch_9.pt`` is written after the 10th epoch).

Progress: on a terminal a live bar per phase (steps, images/s, loss); without one (a log file,
a cluster's job output) a plain line every ``interval`` seconds instead of bar redraws. Both give
the estimated time left for the whole run, and every epoch ends with one line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional, TextIO

import torch

from models.contract import graph_layers, unwrap

__all__ = [
    "ProgressHook",
    "ConsoleHook",
    "TensorBoardHook",
    "adjacency_images",
    "setup_logging",
    "duration",
]


def setup_logging(verbose: bool = False) -> None:
    """Library modules log through logging; main.py shows INFO lines plainly on stdout.

    stdout, not stderr: stderr carries only problems (a UserError is its single line there).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stdout
    )


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Clock:
    """Time of the run so far, to estimate what is left: train steps and validations."""

    def __init__(self, num_epochs: int) -> None:
        self.num_epochs = num_epochs
        self.step_time: Optional[float] = None  # seconds per train step (moving average)
        self.val_time = 0.0  # seconds of the last validation
        self.steps_per_epoch = 0

    def train_step(self, seconds: float) -> None:
        self.step_time = seconds if self.step_time is None else 0.9 * self.step_time + 0.1 * seconds

    def left(self, epoch: int, steps_done: int) -> Optional[float]:
        """Seconds left of the run, from inside ``epoch`` (0-based) after ``steps_done``."""
        if self.step_time is None:
            return None
        epochs_after = self.num_epochs - epoch - 1
        steps = self.steps_per_epoch - steps_done + epochs_after * self.steps_per_epoch
        return steps * self.step_time + (epochs_after + 1) * self.val_time


class ProgressHook:
    """Progress of each phase: a live bar on a terminal, else a plain line every ``interval``
    seconds; images/s and the time left for the whole run."""

    def __init__(
        self,
        enabled: bool = True,
        num_epochs: int = 1,
        write: Callable[[str], None] = print,
        interval: float = 30.0,
        stream: Optional[TextIO] = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.plain = enabled and not self.live
        self.write, self.interval = write, interval
        self.clock = _Clock(num_epochs)
        self.bar = None
        self.phase, self.steps, self.done, self.images = "", 0, 0, 0
        self.start = self.last_step = self.last_line = 0.0

    def on_epoch_start(self, state, phase: str, num_steps: int) -> None:
        self._close()
        if phase == "train":
            self.clock.steps_per_epoch = num_steps
        self.phase, self.steps, self.done, self.images = phase, num_steps, 0, 0
        self.start = self.last_step = self.last_line = time.perf_counter()
        if self.live:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(
                total=num_steps,
                desc=f"epoch {state.epoch + 1}/{self.clock.num_epochs} {phase}",
                leave=False,
                dynamic_ncols=True,
                file=self.stream,
            )

    def on_step_end(self, state, phase: str, loss: float) -> None:
        now = time.perf_counter()
        self.done += 1
        self.images += state.batch_images
        if phase == "train":
            self.clock.train_step(now - self.last_step)
        self.last_step = now
        rate = self.images / max(now - self.start, 1e-9)
        left = self.clock.left(state.epoch, state.batch if phase == "train" else self.steps)
        eta = f", run ETA {duration(left)}" if left is not None else ""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}, {rate:,.0f} img/s{eta}", refresh=False)
            self.bar.update(1)
        elif self.plain and now - self.last_line >= self.interval:
            self.write(
                f"epoch {state.epoch + 1}/{self.clock.num_epochs} {phase} step "
                f"{self.done}/{self.steps}: loss {loss:.3f}, {rate:,.0f} img/s{eta}"
            )
            self.last_line = now

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        self.clock.val_time = float(val.get("epoch_time", 0.0))
        self._close()

    def on_fit_end(self, state) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ConsoleHook:
    """One line per epoch: loss, top-1/top-5, lr, images/s, time, time left, best."""

    def __init__(self, num_epochs: int, write: Callable[[str], None] = print) -> None:
        self.num_epochs = num_epochs
        self.write = write
        self.epoch_times: list[float] = []

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        seconds = train["epoch_time"] + val["epoch_time"]
        self.epoch_times.append(seconds)
        left = (self.num_epochs - state.epoch) * sum(self.epoch_times) / len(self.epoch_times)
        self.write(
            f"epoch {state.epoch}/{self.num_epochs}  train loss {train['CELoss']:.4f} "
            f"top-1 {100 * train['top1_accuracy']:.2f}%  |  val loss {val['CELoss']:.4f} "
            f"top-1 {100 * val['top1_accuracy']:.2f}%"
            + (f" top-5 {100 * val['top5_accuracy']:.2f}%" if "top5_accuracy" in val else "")
            + f"  |  lr {train['lr']:.4g}  {train.get('images_per_s', 0):,.0f} img/s  "
            + f"{seconds:.1f}s"
            + (f"  ETA {duration(left)}" if left else "")
            + f"  best {100 * state.best_val:.2f}%"
            + ("  (new best)" if val["is_best"] else "")
        )


def adjacency_images(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(tag, [1, n_out, n_in] 0/1 image) of each graph layer's kept edges: rows are target
    nodes and columns source nodes, as in the project's adjacency figures (genutil.plot)."""
    layers = graph_layers(model)
    out = []
    for layer in layers:
        tag = "non_zero" if len(layers) == 1 else f"non_zero/{layer.name}"
        out.append((tag, (layer.effective_weight() != 0).float().unsqueeze(0).cpu()))
    return out


class TensorBoardHook:
    """Per epoch: scalars (loss, top-k, lr, images/s, epoch time, best; the paper's params and
    MACs) and each graph's adjacency as a figure with axes; per step: the training loss; at the
    end: the run's hyperparameters with its final metrics (the HPARAMS tab)."""

    def __init__(
        self,
        log_dir: str,
        model: torch.nn.Module,
        profile: Optional[Callable[[torch.nn.Module], Any]] = None,
        hparams: Optional[dict] = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        self.writer = SummaryWriter(log_dir=log_dir)
        self.model = model
        self.profile = profile
        self.hparams = hparams or {}
        self.last: dict = {}

    def on_step_end(self, state, phase: str, loss: float) -> None:
        if phase == "train":
            self.writer.add_scalar("train/loss_step", loss, state.step)

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        epoch = state.epoch  # epochs trained: 1 after the first
        for phase, metrics in (("train", train), ("val", val)):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{phase}/{key}", value, epoch)
        model = unwrap(self.model)
        for tag, figure in _adjacency_figures(model):
            self.writer.add_figure(f"val/{tag}", figure, epoch)
        if self.profile is not None:
            result = self.profile(model)
            self.writer.add_scalar("flops/flops", float(result.macs), epoch)
            self.writer.add_scalar("flops/params", float(result.params), epoch)
        self.last = {"train": train, "val": val, "best": state.best_val}
        self.writer.flush()

    def on_fit_end(self, state) -> None:
        if self.last and self.hparams:
            val = self.last["val"]
            metrics = {
                "hparam/final_top1": float(val["top1_accuracy"]),
                "hparam/best_top1": float(self.last["best"]),
                "hparam/final_loss": float(val["CELoss"]),
                "hparam/images_per_s": float(self.last["train"].get("images_per_s", 0.0)),
            }
            self.writer.add_hparams(self.hparams, metrics, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _adjacency_figures(model: torch.nn.Module) -> list:
    """(tag, matplotlib figure) of each graph layer's adjacency, drawn as genutil.plot draws it
    (rows target nodes, columns source nodes, the DAG region shaded, axes labelled)."""
    from genutil.plot import adjacency_figure  # noqa: PLC0415  (matplotlib, lazily)
    from genutil.wiring import load_wirings  # noqa: PLC0415

    layers = graph_layers(model)
    if not layers:
        return []
    wirings = load_wirings(model)
    return [
        ("non_zero" if len(wirings) == 1 else f"non_zero/{w.name}", adjacency_figure(w))
        for w in wirings
    ]
