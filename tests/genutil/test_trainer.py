"""The loop with a toy model, in one process: hook calls, the lr of chosen steps, checkpoint round
trips and resume state (stopped at an epoch's end or inside an epoch, reloaded into fresh
objects, continued: bitwise the unbroken run)."""

from __future__ import annotations

import collections
import os

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from data.loaders import build_loader
from genutil.checkpoint import read_checkpoint
from genutil.config import Config
from genutil.distributed import DistInfo
from genutil.resume import CheckpointHook, restore, restore_rng
from genutil.schedules import Schedule
from genutil.trainer import DivergenceError, TrainState, fit
from models.graphs.edges import make_graph

CPU = torch.device("cpu")
STEPS = 6  # 48 samples, batch 8


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.graph = make_graph("dnw", 0.5, 6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.graph(torch.relu(self.stem(x)))).mean((2, 3)))


def _loaders():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(48, 2, 4, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
    )
    common = dict(workers=0, pin_memory=False, seed=5)
    return build_loader(data, batch_size=8, shuffle=True, **common), build_loader(
        data, batch_size=16, shuffle=False, **common
    )


def _objects(kind: str = "cosine", epochs: int = 3):
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, opt, Schedule(kind, 0.1, epochs, STEPS, milestones=[1], gamma=0.1)


class Recorder:
    def __init__(self, optimizer=None, stop_at=None) -> None:
        self.calls = collections.Counter()
        self.lrs: dict[int, float] = {}
        self.optimizer, self.stop_at = optimizer, stop_at

    def on_fit_start(self, state):
        self.calls["fit_start"] += 1

    def on_epoch_start(self, state, phase, num_steps):
        self.calls[f"epoch_start_{phase}"] += 1

    def on_step_end(self, state, phase, loss):
        self.calls[f"step_{phase}"] += 1
        if phase == "train" and self.optimizer is not None:
            self.lrs[state.step - 1] = self.optimizer.param_groups[0]["lr"]
        if phase == "train" and self.stop_at == (state.epoch, state.batch):
            state.stop_requested = True

    def on_epoch_end(self, state, train, val):
        self.calls["epoch_end"] += 1
        assert state.history[-1]["epoch"] == state.epoch - 1

    def on_fit_end(self, state):
        self.calls["fit_end"] += 1


def _fit(model, opt, schedule, state, hooks, epochs=3):
    train, val = _loaders()
    return fit(model, train, val, opt, schedule, state, device=CPU, num_epochs=epochs, hooks=hooks)


def test_hooks_are_called_once_each_where_documented():
    model, opt, schedule = _objects()
    rec = Recorder()
    state = _fit(model, opt, schedule, TrainState(), [rec])
    assert rec.calls == {
        "fit_start": 1, "epoch_start_train": 3, "epoch_start_val": 3, "step_train": 3 * STEPS,
        "step_val": 3 * 3, "epoch_end": 3, "fit_end": 1,
    }  # fmt: skip
    assert (state.step, state.epoch, state.batch) == (3 * STEPS, 3, 0)
    assert [h["epoch"] for h in state.history] == [0, 1, 2]
    assert state.best_val == max(h["val"]["top1_accuracy"] for h in state.history)


@pytest.mark.parametrize("kind", ["cosine", "multistep", "exp_decaying", "linear_decaying"])
def test_each_step_uses_the_schedules_lr(kind):
    model, opt, schedule = _objects(kind)
    rec = Recorder(opt)
    _fit(model, opt, schedule, TrainState(), [rec])
    assert sorted(rec.lrs) == list(range(3 * STEPS))
    for step, lr in rec.lrs.items():
        assert lr == schedule.lr(step), step
    if kind == "multistep":  # milestone 1: the second epoch's first step is 10x lower
        assert rec.lrs[STEPS] == pytest.approx(rec.lrs[STEPS - 1] / 10)


def _checkpointed(folder, model, opt, stop_at=None, epochs=3):
    """Train with a CheckpointHook (and a stop request at ``stop_at``); save where it stopped."""
    _, _, schedule = _objects(epochs=epochs)
    state = TrainState()
    saver = CheckpointHook(str(folder), model, opt, Config(seed=5), "toy", steps_per_epoch=STEPS)
    _fit(model, opt, schedule, state, [saver, Recorder(opt, stop_at)], epochs)
    if state.stop_requested:
        saver.save_stop(state)
    return state


def _resume(folder, epochs=3):
    """Fresh objects from ``folder/last.pt``, trained to the end."""
    model, opt, schedule = _objects(epochs=epochs)
    torch.manual_seed(1234)  # anything the checkpoint does not restore would now differ
    path = os.path.join(folder, "last.pt")
    ckpt = read_checkpoint(path)
    state = TrainState()
    restore(ckpt, path, Config(seed=5), model, opt, state)
    restore_rng(ckpt, path, DistInfo(), STEPS)
    _fit(model, opt, schedule, state, [], epochs)
    return model, opt, state


def _assert_same(a, b):
    for (name, p), q in zip(a[0].state_dict().items(), b[0].state_dict().values()):
        assert torch.equal(p, q), name
    for s, t in zip(a[1].state_dict()["state"].values(), b[1].state_dict()["state"].values()):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])


def test_checkpoints_round_trip_into_fresh_objects(tmp_path):
    model, opt, _ = _objects()
    state = _checkpointed(tmp_path, model, opt)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "epoch_0.pt", "init.pt", "last.pt"]
    ckpt = read_checkpoint(str(tmp_path / "last.pt"))
    fresh, fresh_opt, _ = _objects()
    got = TrainState()
    restore(ckpt, "last.pt", Config(), fresh, fresh_opt, got)
    _assert_same((model, opt), (fresh, fresh_opt))
    assert (got.step, got.epoch, got.batch, got.best_val) == (
        state.step, state.epoch, 0, state.best_val
    )  # fmt: skip
    assert ckpt["last_epoch"] == 2 and ckpt["iter"] == float(3 * STEPS)
    assert set(ckpt["model"]) == {"module." + k for k in model.state_dict()}
    init = read_checkpoint(str(tmp_path / "init.pt"))
    assert (init["epoch"], init["step"]) == (0, 0)


@pytest.mark.parametrize("stop_at", [(1, STEPS), (1, 2), (0, 1)])
def test_resumed_run_equals_the_unbroken_one(tmp_path, stop_at):
    unbroken = _objects()[:2]
    _checkpointed(tmp_path / "a", *unbroken)
    stopped = _objects()[:2]
    state = _checkpointed(tmp_path / "b", *stopped, stop_at=stop_at)
    # a request is seen by the next step, which finishes; at an epoch's last batch the epoch
    # ends first and the run stops before the next one
    epoch, batch = stop_at
    assert (state.epoch, state.batch) == ((epoch + 1, 0) if batch == STEPS else (epoch, batch + 1))
    resumed = _resume(tmp_path / "b")
    _assert_same(unbroken, resumed)
    assert resumed[2].step == 3 * STEPS


def test_a_non_finite_loss_stops_before_the_update():
    model, opt, schedule = _objects()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DivergenceError, match="loss is nan at epoch 0 step 0"):
        _fit(model, opt, schedule, TrainState(), [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) or torch.isnan(value).all(), key
