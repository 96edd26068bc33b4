"""Learning-rate schedules as pure functions of the global step (docs/faithfulness.md, "Training").

``lr(step)`` is the learning rate used by optimizer step number ``step`` (0-based, counting
every training iteration since the start of the run); the epoch is derived from it. Resuming
therefore needs only the step counter. Each value equals what the original produced:

- multistep: ``lr * gamma ** (milestones <= epoch)``, changed once per epoch.
- exp_decaying: ``lr * gamma ** epoch``.
- linear_decaying: the original resets to ``lr * (1 - epoch / epochs)`` at each epoch start and
  lowers it by ``lr / epochs / len(dataset) * batch_size`` before every step.
- cosine: annealed per iteration over ``steps_per_epoch * epochs``; the original advances the
  scheduler before the optimizer step, so step ``s`` uses the value at ``s + 1``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["Schedule", "SCHEDULES"]


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule. ``per_iteration`` says whether it changes within an epoch."""

    kind: str
    base_lr: float
    num_epochs: int
    steps_per_epoch: int
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    dataset_len: int = 0
    batch_size: int = 0

    @property
    def per_iteration(self) -> bool:
        return self.kind in ("cosine", "linear_decaying")

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs

    def lr(self, step: int) -> float:
        """Learning rate of global optimizer step ``step`` (0-based)."""
        epoch, i = divmod(step, max(self.steps_per_epoch, 1))
        return SCHEDULES[self.kind](self, epoch, i, step)


def _multistep(s: Schedule, epoch: int, i: int, step: int) -> float:
    return s.base_lr * s.gamma ** bisect.bisect_right(sorted(s.milestones), epoch)


def _exp_decaying(s: Schedule, epoch: int, i: int, step: int) -> float:
    return s.base_lr * s.gamma**epoch


def _linear_decaying(s: Schedule, epoch: int, i: int, step: int) -> float:
    per_step = s.base_lr / s.num_epochs / max(s.dataset_len, 1) * s.batch_size
    return s.base_lr * (1.0 - epoch / s.num_epochs) - (i + 1) * per_step


def _cosine(s: Schedule, epoch: int, i: int, step: int) -> float:
    t = min(step + 1, s.total_steps)
    return s.base_lr * (1 + math.cos(math.pi * t / s.total_steps)) / 2


SCHEDULES = {
    "multistep": _multistep,
    "exp_decaying": _exp_decaying,
    "linear_decaying": _linear_decaying,
    "cosine": _cosine,
}
