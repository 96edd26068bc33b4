"""Exact resume (issue 6, items 1-2): a run killed or stopped anywhere and resumed with
``--resume auto`` ends with the same weights, bit for bit, as an unbroken run (CPU).

All runs are subprocesses of main.py; ``runner.py`` adds step markers (and a pause per step) so a
signal lands at a known point of an epoch, or kills the process inside a checkpoint write. The
runs use targeted dropout, which draws from the torch RNG every step, so only a resume that
restores the RNG states as well as the data position can end bitwise equal.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess

import pytest

from genutil.config import parse_argv, run_title
from tests.data.fakes import make_cifar10
from tests.reliability.util import (
    ROOT,
    TINY,
    Run,
    assert_bitwise_equal,
    dirs,
    env,
    load,
    run_main,
    step_of,
)

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses

TITLE = run_title(*parse_argv(TINY))
CIFAR_APP = "app:apps/small_scale/static_dnw.yml"
STEPS = 23  # 1438 digits / 64 per batch
PAUSE = "0.04@1"  # seconds per step from epoch 1 on, so a signal arrives mid-epoch


def _last(tmp) -> str:
    return os.path.join(tmp, "ck", TITLE, "last.pt")


UNBROKEN_LOG: dict = {}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("unbroken")
    result = run_main(TINY + dirs(tmp))
    assert result.returncode == 0, result.stderr
    UNBROKEN_LOG["stdout"] = result.stdout
    return _last(tmp)


def _epoch_line(stdout: str, epoch: int) -> str:
    """The console line of an epoch without its wall time."""
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(f"epoch {epoch}/")]
    return re.sub(r"[\d,]+ img/s|ETA \S+|\s[0-9.]+s\s", " ", line)


def _resume(tmp) -> subprocess.CompletedProcess:
    result = run_main(TINY + dirs(tmp) + ["--resume", "auto"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_sigkill_mid_epoch_then_resume_auto_is_bitwise_equal(unbroken, tmp_path):
    run = Run(TINY + dirs(tmp_path), DNW_TEST_MARK_STEPS=PAUSE)
    run.wait_for(lambda line: step_of(line) == (1, 5))
    # epoch 0 is checkpointed and the run is inside epoch 1
    assert load(_last(tmp_path))["epoch"] == 1
    run.proc.send_signal(signal.SIGKILL)
    rc, out, _ = run.finish()
    assert rc == -signal.SIGKILL and "epoch 2/3" not in out
    result = _resume(tmp_path)
    assert "=> resumed" in result.stdout and "next epoch 1, step 23" in result.stdout
    assert "epoch 2/3" in result.stdout and "epoch 1/3" not in result.stdout
    assert_bitwise_equal(unbroken, _last(tmp_path))


def test_sigint_saves_mid_epoch_position_and_printed_command_resumes_exactly(unbroken, tmp_path):
    run = Run(TINY + dirs(tmp_path), DNW_TEST_MARK_STEPS=PAUSE)
    run.wait_for(lambda line: step_of(line) == (1, 5))
    run.proc.send_signal(signal.SIGINT)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert "Traceback" not in err
    ckpt = load(_last(tmp_path))
    assert ckpt["epoch"] == 1 and 5 <= ckpt["batch"] < STEPS  # stopped inside epoch 1
    assert ckpt["step"] == STEPS + ckpt["batch"]
    assert "stopped by SIGINT at step" in out
    command = [line for line in out.splitlines() if line.startswith("resume with: ")]
    assert len(command) == 1
    argv = shlex.split(command[0][len("resume with: ") :])
    assert argv[-2:] == ["--resume", "auto"] and argv[1] == "main.py"
    result = subprocess.run(argv, cwd=ROOT, env=env(), text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"batch {ckpt['batch']} of it" in result.stdout
    assert_bitwise_equal(unbroken, _last(tmp_path))
    # the interrupted epoch's metrics count the batches from before the stop too
    assert _epoch_line(result.stdout, 2) == _epoch_line(UNBROKEN_LOG["stdout"], 2)


def test_sigterm_with_workers_and_augmentation_resumes_exactly(tmp_path):
    # CIFAR-10 layout (fake images), random crops and flips drawn in 2 worker processes
    make_cifar10(tmp_path / "data", n_per_batch=64)
    args = [
        CIFAR_APP,
        "--data-dir",
        str(tmp_path / "data"),
        "--workers",
        "2",
        "--dim",
        "160",
        "--feature_dim",
        "32",
        "--graph",
        "td",
        "--num_epochs",
        "2",
        "--batch_size",
        "32",
        "--test_batch_size",
        "64",
        "--noprogress",
    ]
    unbroken = run_main(args + dirs(tmp_path / "unbroken"))
    assert unbroken.returncode == 0, unbroken.stderr
    run = Run(args + dirs(tmp_path / "stopped"), DNW_TEST_MARK_STEPS="0.05")
    run.wait_for(lambda line: step_of(line) == (0, 4))
    run.proc.send_signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0 and "stopped by SIGTERM" in out, err
    title = run_title(*parse_argv(args))
    last = os.path.join(tmp_path, "stopped", "ck", title, "last.pt")
    assert load(last)["epoch"] == 0 and 4 <= load(last)["batch"] < 10  # 320 images / 32
    resumed = run_main(args + dirs(tmp_path / "stopped") + ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(os.path.join(tmp_path, "unbroken", "ck", title, "last.pt"), last)


def test_kill_inside_a_checkpoint_write_keeps_the_previous_one(unbroken, tmp_path):
    # the second write of last.pt (end of epoch 1) is cut in half by SIGKILL
    run = Run(TINY + dirs(tmp_path), DNW_TEST_KILL_IN_SAVE="last.pt:2")
    rc, out, _ = run.finish()
    assert rc == -signal.SIGKILL and "@killed-in-save last.pt" in out
    folder = os.path.dirname(_last(tmp_path))
    torn = [f for f in os.listdir(folder) if f.startswith(".tmp_last.pt")]
    assert len(torn) == 1  # the half-written temp file, under a name no loader picks up
    previous = load(_last(tmp_path))
    assert (previous["epoch"], previous["batch"]) == (1, 0)  # the end of epoch 0, intact
    _resume(tmp_path)
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp_")]  # cleaned on resume
    assert_bitwise_equal(unbroken, _last(tmp_path))


def test_resume_auto_of_a_finished_run_does_nothing(unbroken, tmp_path):
    folder = os.path.dirname(unbroken)
    before = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    result = run_main(
        TINY
        + ["--save_dir", os.path.dirname(folder), "--log_dir", str(tmp_path), "--resume", "auto"]
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert before == {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
