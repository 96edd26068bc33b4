"""Nothing lost (issue 14): a run's files are never overwritten, mixed or restarted behind the
user's back, whatever the project's own commands do, and faults during a run end with one line
and the checkpoints written so far intact. (Bad inputs refused before anything is written are
rows of test_bad_inputs.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from genutil import api
from genutil.checkpoint import read_checkpoint
from genutil.config import parse_argv, run_title
from genutil.errors import CheckpointError
from tests.data.fakes import make_imagenet
from tests.reliability.util import (
    PY,
    QUICKSTART,
    ROOT,
    RUNNER,
    Run,
    dirs,
    env,
    run_main,
    step_of,
    tree_hash,
)

pytestmark = pytest.mark.slow  # end to end: main.py in subprocesses

ONE_EPOCH = [QUICKSTART, "--dim", "160", "--feature_dim", "32", "--num_epochs", "1", "--noprogress"]
TITLE = run_title(*parse_argv(ONE_EPOCH))


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def _one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def _unchanged(before: dict, after: dict) -> None:
    """Every file there before is there after, bit for bit (new files may appear)."""
    changed = {k: v for k, v in before.items() if after.get(k) != v}
    assert not changed, sorted(changed)


@pytest.fixture()
def finished(tmp_path):
    """A finished one-epoch run: (its folder, the run's --save_dir/--log_dir arguments)."""
    where = dirs(tmp_path)
    _ok(run_main(ONE_EPOCH + where))
    folder = os.path.join(tmp_path, "ck", TITLE)
    checkpoints = sorted(n for n in os.listdir(folder) if n.endswith(".pt"))
    assert checkpoints == ["best.pt", "epoch_0.pt", "init.pt", "last.pt"]
    assert {".lock", "config.yaml", "metrics.jsonl"} <= set(os.listdir(folder))
    return folder, where


def test_a_finished_run_survives_the_projects_commands(finished, tmp_path):
    folder, where = finished
    before = tree_hash(folder)
    # --resume auto of a finished run: nothing to do, nothing written
    assert "nothing to do" in _ok(run_main(ONE_EPOCH + where + ["--resume", "auto"]))
    # --resume auto --evaluate finds the run: run-mode flags do not change where a run lives
    assert "eval " + TITLE in _ok(run_main(ONE_EPOCH + where + ["--resume", "auto", "--evaluate"]))
    # --export onto one of its checkpoints: refused, even with --overwrite for the one being read
    last = os.path.join(folder, "last.pt")
    export = ["--resume", last, "--evaluate", "--fast_eval", "--export"]
    _one_line(run_main(ONE_EPOCH + where + export + [os.path.join(folder, "best.pt")]), "exists")
    _one_line(run_main(ONE_EPOCH + where + export + [last, "--overwrite"]), "being read")
    # a second run of the same title: refused
    _one_line(run_main(ONE_EPOCH + where), "already holds checkpoints")
    # make quickstart: it replaces its own run's folder and nothing else
    qs = [
        "--save_dir",
        str(tmp_path / "ck"),
        "--log_dir",
        str(tmp_path / "runs"),
        "--num_epochs",
        "1",
    ]
    made = subprocess.run(
        ["make", "-s", "quickstart", f"PY={PY}", f"QUICKSTART_ARGS={' '.join(qs)} --noprogress"],
        cwd=ROOT, env=env(), text=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    assert os.path.isfile(os.path.join(tmp_path, "ck", "base=static_dnw", "last.pt"))
    # without last.pt, --resume auto continues from the newest readable checkpoint: here the
    # epoch_0.pt of the finished epoch, so there is nothing to do and nothing is written
    os.unlink(last)
    del before["last.pt"]
    out = _ok(run_main(ONE_EPOCH + where + ["--resume", "auto"]))
    assert "last.pt is missing: resuming from the newest readable checkpoint" in out
    assert "nothing to do" in out
    _unchanged(before, tree_hash(folder))


def test_resume_auto_never_starts_over_a_run(finished, tmp_path):
    folder, where = finished
    # only init.pt left (a kill during the first write of last.pt): resumed from it
    shutil.copytree(tmp_path / "ck", tmp_path / "2" / "ck")
    second = os.path.join(tmp_path, "2", "ck", TITLE)
    for name in ("last.pt", "best.pt", "epoch_0.pt"):
        os.unlink(os.path.join(second, name))
    init = tree_hash(second)["init.pt"]
    out = _ok(run_main(ONE_EPOCH + dirs(tmp_path / "2") + ["--resume", "auto"]))
    assert "resuming from the newest readable checkpoint" in out and "init.pt" in out
    assert "resumed" in out and "epoch 1/1" in out
    assert tree_hash(second)["init.pt"] == init  # never replaced
    # only unreadable checkpoints: refused, nothing started over them
    for name in ("last.pt", "best.pt", "epoch_0.pt", "init.pt"):
        with open(os.path.join(folder, name), "r+b") as fh:
            fh.truncate(100)
    torn = tree_hash(folder)
    _one_line(run_main(ONE_EPOCH + where + ["--resume", "auto"]), "no readable checkpoint")
    assert tree_hash(folder) == torn


def test_extending_a_finished_run_continues_it_in_its_folder(finished):
    folder, where = finished
    first = read_checkpoint(os.path.join(folder, "last.pt"))
    out = _ok(run_main(ONE_EPOCH + where + ["--resume", "auto", "--num_epochs", "2"]))
    assert "changed since last.pt: num_epochs 1 -> 2" in out and "epoch 2/2" in out
    assert "epoch 1/2" not in out
    last = read_checkpoint(os.path.join(folder, "last.pt"))
    assert last["step"] == 2 * first["step"] and last["title"] == TITLE
    assert sorted(os.listdir(os.path.dirname(folder))) == [TITLE]  # no second folder


def test_a_branch_from_another_runs_checkpoint_starts_its_own_best(finished, tmp_path):
    folder, where = finished
    out = _ok(run_main(ONE_EPOCH + where + ["--resume", os.path.join(folder, "last.pt"),
                                            "--num_epochs", "2", "--lr", "0.05"]))  # fmt: skip
    assert f"as the run {TITLE}_lr=0.05" in out and "lr 0.1 -> 0.05" in out
    branch = read_checkpoint(os.path.join(tmp_path, "ck", f"{TITLE}_lr=0.05", "last.pt"))
    assert branch["best_val"] == branch["meters"][1]["top1_accuracy"]  # its own epoch only


def test_one_writer_per_run_folder(tmp_path):
    where = dirs(tmp_path)
    three = [a if a != "1" else "3" for a in ONE_EPOCH]
    title = run_title(*parse_argv(three))
    folder = os.path.join(tmp_path, "ck", title)
    live = Run(three + where, DNW_TEST_MARK_STEPS="0.5")
    live.wait_for(lambda line: step_of(line) == (0, 3))
    # a temp file of a live writer (this test process) and one of a dead writer
    host = socket.gethostname()
    alive = os.path.join(folder, f".tmp_last.pt.{os.getpid()}.0123abcd.{host}")
    dead = os.path.join(folder, f".tmp_last.pt.{2**22 + 12345}.0123abcd.{host}")
    for path in (alive, dead):
        with open(path, "wb") as fh:
            fh.write(b"partial")
    # its own --resume auto, and a second run of the same title started now: both refused
    _one_line(run_main(three + where + ["--resume", "auto"]), "in use by another run", "pid")
    _one_line(run_main(three + where), "already holds checkpoints")
    live.proc.send_signal(signal.SIGKILL)
    live.proc.wait(timeout=30)
    # the lock of the killed run is free again: the next run takes it over and says so
    out = _ok(run_main(three + where + ["--resume", "auto"]))
    assert "took over the lock of a run that ended without releasing it" in out
    assert os.path.exists(alive) and not os.path.exists(dead)
    assert open(os.path.join(folder, ".lock")).read() == ""  # released at the end


def test_a_full_disk_ends_with_one_line_and_the_earlier_checkpoints(tmp_path):
    args = [a if a != "1" else "3" for a in ONE_EPOCH] + dirs(tmp_path)
    result = run_main(args, script=RUNNER, DNW_TEST_DISK_FULL="last.pt:2")
    line = _one_line(result, "could not write", "No space left on device", "intact")
    folder = os.path.join(tmp_path, "ck", run_title(*parse_argv(args[:9])))
    assert "last.pt" in line
    assert read_checkpoint(os.path.join(folder, "last.pt"))["epoch"] == 1  # the first save
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp_")]


def test_an_unreadable_image_mid_epoch_is_named(tmp_path):
    root = make_imagenet(tmp_path / "data", classes=2, per_class=4)
    bad = root / "train" / "n00000001" / "n00000001_0002.JPEG"
    bad.write_bytes(b"this is not a JPEG")
    args = [
        "app:apps/large_scale/mobilenetv1_dnw_small_x15.yml", "--data-dir", str(tmp_path / "data"),
        "--image_size", "32", "--output_size", "2", "--topk", "1", "--batch_size", "2",
        "--num_epochs", "1", "--noprogress", *dirs(tmp_path),
    ]  # fmt: skip
    for workers in ("0", "1"):
        result = run_main(args + ["--workers", workers, "--overwrite"], timeout=300)
        line = _one_line(result, str(bad), "not a readable image")
        assert "Traceback" not in line
    (folder,) = (tmp_path / "ck").iterdir()
    assert read_checkpoint(str(folder / "init.pt"))["epoch"] == 0  # written before: intact


def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    args = [a if a != "1" else "50" for a in ONE_EPOCH] + dirs(tmp_path)
    launcher = Run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", RUNNER, *args],
        script="",
        DNW_TEST_MARK_STEPS="0.05",
    )
    launcher.wait_for(lambda line: step_of(line) == (0, 4))
    workers = _processes_with(str(tmp_path))
    assert len(workers) >= 2, workers
    launcher.proc.send_signal(signal.SIGKILL)
    end = time.monotonic() + 30
    while time.monotonic() < end and _processes_with(str(tmp_path)):
        time.sleep(0.2)
    assert not _processes_with(str(tmp_path)), "workers outlived their launcher"
    folder = os.path.join(tmp_path, "ck", run_title(*parse_argv(args[:9])))
    names = [n for n in os.listdir(folder) if n.endswith(".pt") and not n.startswith(".")]
    for name in names:  # whatever they wrote is whole
        read_checkpoint(os.path.join(folder, name))
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp_")]


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker`` (zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(pid))
    return found


def test_api_load_checkpoint_says_when_the_wiring_differs(finished):
    folder, _ = finished
    path = os.path.join(folder, "last.pt")
    model = api.build_model("apps/quickstart/static_dnw.yml", dim=160, feature_dim=32)
    api.load_checkpoint(model, path)  # the settings it was trained with
    other = api.build_model(
        "apps/quickstart/static_dnw.yml", dim=160, feature_dim=32, prune_rate=0.5
    )
    with pytest.raises(CheckpointError, match="prune_rate=0.9"):
        api.load_checkpoint(other, path)
    api.load_checkpoint(other, path, allow_config_change=True)  # asked for: loaded
    state = torch.load(path, weights_only=True)["model"]
    assert torch.equal(other.graph.weight, state["module.graph.weight"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
