"""A non-finite loss (issue 6, item 3): one error line naming epoch and step, exit 2, and the
checkpoints written before it stay as they were."""

from __future__ import annotations

import math
import os

import pytest
import torch

from genutil.config import parse_argv, run_title
from tests.reliability.util import RUNNER, TINY, dirs, load, run_main

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses

STEPS = 23


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], stderr  # one error line, and the last thing printed
    return errors[0]


def test_nan_loss_names_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    result = run_main(
        TINY + dirs(tmp_path), script=RUNNER, DNW_TEST_NAN_AT=str(STEPS + 7)
    )  # epoch 1, batch 7
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert f"loss is nan at epoch 1 step 7 (global step {STEPS + 7})" in line
    folder = os.path.join(tmp_path, "ck", run_title(*parse_argv(TINY)))
    assert folder in line
    last, first = load(os.path.join(folder, "last.pt")), load(os.path.join(folder, "epoch_0.pt"))
    assert (last["epoch"], last["batch"], last["step"]) == (1, 0, STEPS)  # the end of epoch 0
    for key, value in last["model"].items():
        assert torch.equal(value, first["model"][key])
        assert not value.is_floating_point() or bool(torch.isfinite(value).all()), key


def test_huge_learning_rate_diverges_with_one_line(tmp_path):
    args = TINY + dirs(tmp_path) + ["--lr", "1e20"]
    result = run_main(args)
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert "loss is nan at epoch 0 step" in line and "lower lr" in line
    init = load(os.path.join(tmp_path, "ck", run_title(*parse_argv(args)), "init.pt"))
    assert all(
        math.isfinite(float(v.float().abs().max())) for v in init["model"].values() if v.numel()
    )
