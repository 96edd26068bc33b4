"""DistributedDataParallel under torchrun on the CPU (gloo) (issue 6, item 4).

- one DDP step over 2 processes = one single-process step on the whole batch;
- ``torchrun --nproc_per_node 2`` trains the quickstart to within 2 points of one process, with
  one set of console lines and checkpoints (rank 0);
- SIGTERM to torchrun mid-epoch: the workers save, and ``--resume auto`` under torchrun ends
  bitwise equal to the unbroken distributed run (targeted dropout: per-rank RNG states matter).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from genutil import api, distributed
from genutil.config import load_config, parse_argv, run_title
from genutil.errors import ConfigError
from genutil.run import make_optimizer
from main import resume_command
from tests.reliability.util import (
    PY,
    QUICKSTART,
    ROOT,
    RUNNER,
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

TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
APP = "apps/quickstart/static_dnw.yml"
SMALL = {"dim": 160, "feature_dim": 32}


def _model_and_optimizer():
    torch.manual_seed(0)
    cfg = load_config(APP, SMALL)
    model = api.model_from_config(cfg)
    return model, make_optimizer(cfg, model)


def _one_step(model, optimizer, images, target) -> None:
    model.eval()  # norm layers use running statistics: batch statistics are per process
    optimizer.zero_grad()
    F.cross_entropy(model(images), target).backward()
    optimizer.step()


def _ddp_worker(rank: int, world: int, port: int, batch: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    info = distributed.init_distributed()
    try:
        assert info.enabled and info.world_size == world
        model, optimizer = _model_and_optimizer()
        images, target = torch.load(batch, weights_only=True)
        share = slice(rank * len(target) // world, (rank + 1) * len(target) // world)
        _one_step(
            distributed.wrap_ddp(model, torch.device("cpu")),
            optimizer,
            images[share],
            target[share],
        )
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        distributed.shutdown(info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_ddp_step_over_two_processes_equals_one_step_on_the_whole_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on the CPU, also on a GPU machine
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 16, 16, generator=generator)
    target = torch.randint(0, 10, (16,), generator=generator)
    torch.save((images, target), tmp_path / "batch.pt")
    mp.spawn(
        _ddp_worker,
        args=(2, _free_port(), str(tmp_path / "batch.pt"), str(tmp_path / "ddp.pt")),
        nprocs=2,
        join=True,
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    model, optimizer = _model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model, optimizer, images, target)
    moved = 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6, msg=key)
        moved += int(not torch.equal(value, before[key]))
    assert moved >= 5  # the step changed the weights, so the comparison means something


def test_global_batch_must_split_evenly():
    assert distributed.per_process(64, 2, "batch_size") == 32
    with pytest.raises(ConfigError, match="batch_size=63 does not split evenly over 2"):
        distributed.per_process(63, 2, "batch_size")


def test_resume_command_names_torchrun(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "4")
    line = resume_command([f"app:{APP}", "--resume", "old.pt", "--lr", "0.1"])
    assert line == f"torchrun --nproc_per_node 4 main.py app:{APP} --lr 0.1 --resume auto"
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert resume_command([f"app:{APP}"]).startswith("torchrun <the same torchrun options> ")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert shlex.split(resume_command(["app:a b.yml"]))[1:] == [
        "main.py",
        "app:a b.yml",
        "--resume",
        "auto",
    ]


def _final_top1(stdout: str) -> float:
    found = re.findall(r"final top-1 ([0-9.]+)%", stdout)
    assert len(found) == 1, stdout  # printed once: by rank 0 only
    return float(found[0])


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        TORCHRUN + ["main.py", *args],
        cwd=ROOT,
        env=env(),
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torchrun_two_processes_match_single_process_accuracy(tmp_path):
    ddp = _torchrun([QUICKSTART, "--noprogress"] + dirs(tmp_path / "ddp"))  # config unchanged
    single = run_main([QUICKSTART, "--noprogress"] + dirs(tmp_path / "single"), timeout=300)
    assert single.returncode == 0, single.stderr
    assert abs(_final_top1(ddp.stdout) - _final_top1(single.stdout)) <= 2.0
    assert _final_top1(ddp.stdout) > 90
    assert ddp.stdout.count("epoch 15/15") == 1 and ddp.stdout.count("=> base=") == 1
    assert (ddp.stdout + ddp.stderr).count("digits:") == 1  # rank 1 logs nothing
    last = load(os.path.join(tmp_path, "ddp", "ck", "base=static_dnw", "last.pt"))
    assert last["data_order"]["world_size"] == 2 and len(last["rng_ranks"]) == 2
    assert last["step"] == 15 * last["data_order"]["steps_per_epoch"]


def test_sigterm_to_torchrun_saves_and_resume_is_bitwise_equal(tmp_path):
    _torchrun(TINY + dirs(tmp_path / "unbroken"))
    args = ["--nproc_per_node", "2", RUNNER] + TINY + dirs(tmp_path / "stopped")
    run = Run(
        ["-m", "torch.distributed.run", "--standalone"] + args,
        script="",
        DNW_TEST_MARK_STEPS="0.04@1",
    )
    run.wait_for(lambda line: step_of(line) == (1, 5))
    run.proc.send_signal(signal.SIGTERM)  # what a cluster's preemption sends the launcher
    _, out, err = run.finish()  # torchrun itself reports the signal and exits non-zero
    assert "stopped by SIGTERM at step" in out, err[-3000:]
    title = run_title(*parse_argv(TINY))
    last = os.path.join(tmp_path, "stopped", "ck", title, "last.pt")
    ckpt = load(last)
    assert ckpt["epoch"] == 1 and 5 <= ckpt["batch"] < ckpt["data_order"]["steps_per_epoch"]
    command = [line for line in out.splitlines() if line.startswith("resume with: torchrun ")]
    assert len(command) == 1
    resumed = _torchrun(TINY + dirs(tmp_path / "stopped") + ["--resume", "auto"])
    assert f"batch {ckpt['batch']} of it" in resumed.stdout
    assert_bitwise_equal(os.path.join(tmp_path, "unbroken", "ck", title, "last.pt"), last)
