"""What a run shows: a progress bar per epoch, a line per epoch, TensorBoard scalars and images.

All are trainer hooks (see genutil.trainer); only the primary process creates them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

import torch

from models.contract import graph_layers, unwrap

__all__ = ["ProgressHook", "ConsoleHook", "TensorBoardHook", "adjacency_images", "setup_logging"]


def setup_logging(verbose: bool = False) -> None:
    """Library modules log through logging; main.py shows INFO lines plainly on stdout.

    stdout, not stderr: stderr carries only problems (a UserError is its single line there).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stdout
    )


class ProgressHook:
    """A tqdm bar per phase of an epoch, with the running loss."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def on_epoch_start(self, state, phase: str, num_steps: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # noqa: PLC0415

        self._close()
        self.bar = tqdm(
            total=num_steps,
            desc=f"epoch {state.epoch} {phase}",
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step_end(self, state, phase: str, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        self._close()

    def on_fit_end(self, state) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ConsoleHook:
    """One line per epoch: loss, top-1/top-5, lr, time, best."""

    def __init__(self, num_epochs: int, write: Callable[[str], None] = print) -> None:
        self.num_epochs = num_epochs
        self.write = write

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        epoch = state.epoch - 1
        self.write(
            f"epoch {epoch + 1}/{self.num_epochs}  train loss {train['CELoss']:.4f} "
            f"top-1 {100 * train['top1_accuracy']:.2f}%  |  val loss {val['CELoss']:.4f} "
            f"top-1 {100 * val['top1_accuracy']:.2f}%"
            + (f" top-5 {100 * val['top5_accuracy']:.2f}%" if "top5_accuracy" in val else "")
            + f"  |  lr {train['lr']:.4g}  {train['epoch_time'] + val['epoch_time']:.1f}s"
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
    """Scalars per epoch (loss, top-k, epoch time, lr, best, MACs) and adjacency images."""

    def __init__(
        self,
        log_dir: str,
        model: torch.nn.Module,
        profile: Optional[Callable[[torch.nn.Module], Any]] = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        self.writer = SummaryWriter(log_dir=log_dir)
        self.model = model
        self.profile = profile

    def on_epoch_end(self, state, train: dict, val: dict) -> None:
        epoch = state.epoch - 1
        for phase, metrics in (("train", train), ("val", val)):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{phase}/{key}", value, epoch)
        model = unwrap(self.model)
        for tag, image in adjacency_images(model):
            self.writer.add_image(f"val/{tag}", image, epoch)
        if self.profile is not None:
            result = self.profile(model)
            self.writer.add_scalar("flops/flops", float(result.macs), epoch)
            self.writer.add_scalar("flops/params", float(result.params), epoch)
        self.writer.flush()

    def on_fit_end(self, state) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
