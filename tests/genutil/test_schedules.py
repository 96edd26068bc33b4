"""Each schedule's learning rate at chosen steps, as the original produced it."""

import math

import pytest
import torch

from genutil.schedules import Schedule


def test_multistep_changes_at_epoch_milestones():
    s = Schedule("multistep", 0.1, 160, 10, milestones=[80, 120], gamma=0.1)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(79 * 10 + 9) == pytest.approx(0.1)
    assert s.lr(80 * 10) == pytest.approx(0.01)
    assert s.lr(120 * 10 + 3) == pytest.approx(0.001)


def test_cosine_steps_before_the_optimizer_like_the_original():
    steps, epochs, base = 7, 3, 0.1
    s = Schedule("cosine", base, epochs, steps)
    # the original: CosineAnnealingLR(T_max=steps*epochs) whose step() precedes optimizer.step()
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * epochs)
    for step in range(steps * epochs):
        sched.step()
        assert s.lr(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
    assert s.lr(0) == pytest.approx(base * (1 + math.cos(math.pi / 21)) / 2)
    assert s.lr(steps * epochs - 1) == pytest.approx(0.0, abs=1e-12)


def test_exp_decaying_per_epoch():
    s = Schedule("exp_decaying", 0.1, 10, 5, gamma=0.5)
    assert s.lr(4) == pytest.approx(0.1)
    assert s.lr(5) == pytest.approx(0.05)
    assert s.lr(3 * 5 + 2) == pytest.approx(0.1 * 0.5**3)


def test_linear_decaying_as_the_original():
    # original: lr reset to base*(1-e/N) each epoch, minus base/N/len(dataset)*batch per step
    base, n, dataset, batch = 0.1, 4, 100, 25
    s = Schedule("linear_decaying", base, n, 4, dataset_len=dataset, batch_size=batch)
    per_step = base / n / dataset * batch
    assert s.lr(0) == pytest.approx(base - per_step)
    assert s.lr(3) == pytest.approx(base - 4 * per_step)
    assert s.lr(4) == pytest.approx(base * 0.75 - per_step)
    assert s.per_iteration and not Schedule("multistep", 0.1, 1, 1).per_iteration
