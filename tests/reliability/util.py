"""Helpers of the reliability tests: run main.py (or the instrumented runner) as a subprocess,
wait for a line of its output, compare checkpoints bit for bit, hash folders."""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
RUNNER = os.path.join("tests", "reliability", "runner.py")
QUICKSTART = "app:apps/quickstart/static_dnw.yml"
# A smaller quickstart: 3 epochs of 23 steps, about a second each on one idle core. Targeted
# dropout draws from the torch RNG at every step, so a resume must restore the RNG as well as
# the data order to end bitwise equal.
TINY = [
    QUICKSTART,
    "--dim",
    "160",
    "--feature_dim",
    "32",
    "--graph",
    "td",
    "--num_epochs",
    "3",
    "--noprogress",
]


def env(**extra: str) -> dict:
    """The test process's environment, one thread per run (2 cores, runs side by side), and no
    GPU: these are CPU tests (bitwise equality, gloo) on any machine."""
    out = dict(os.environ)
    out.update(
        {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}, **extra
    )
    return out


def dirs(tmp: str) -> list[str]:
    return ["--save_dir", os.path.join(tmp, "ck"), "--log_dir", os.path.join(tmp, "runs")]


def run_main(
    args: list[str], *, timeout: float = 120, script: str = "main.py", **env_extra: str
) -> subprocess.CompletedProcess:
    """``python main.py args`` in the repository root; stdout and stderr captured."""
    return subprocess.run(
        [PY, script, *args],
        cwd=ROOT,
        env=env(**env_extra),
        text=True,
        capture_output=True,
        timeout=timeout,
    )


class Run:
    """A running ``main.py`` (or runner) whose stdout lines are read as they come."""

    def __init__(self, args: list[str], *, script: str = RUNNER, **env_extra: str) -> None:
        command = [PY, script, *args] if script else [PY, *args]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env(**env_extra),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 120) -> str:
        """Block until a stdout line satisfies ``predicate``; return it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(
                    f"run ended (rc {self.proc.wait()}) before the line; "
                    f"stderr: {self.proc.stderr.read()[-2000:]}"
                )
            self.lines.append(line)
            if predicate(line):
                return line
        self.proc.kill()
        raise AssertionError(f"no such line within {timeout} s; last: {self.lines[-3:]}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """Wait for the exit; (return code, rest of stdout, stderr)."""
        rc = self.proc.wait(timeout=timeout)
        rest = []
        while True:
            line = self._queue.get(timeout=10)
            if line is None:
                break
            rest.append(line)
        self.lines += rest
        return rc, "\n".join(rest), self.proc.stderr.read()


def step_of(line: str) -> Optional[tuple[int, int]]:
    """(epoch, batch) of a runner's ``@step`` line."""
    if not line.startswith("@step "):
        return None
    epoch, batch = line.split()[1:]
    return int(epoch), int(batch)


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise_equal(a_path: str, b_path: str) -> None:
    """Model weights, buffers and optimizer state of two checkpoints are identical."""
    a, b = load(a_path), load(b_path)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name, value in sa[i].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, sb[i][name]), f"optimizer state {i}.{name} differs"
    assert (a["epoch"], a["step"], a["batch"]) == (b["epoch"], b["step"], b["batch"])


def tree_hash(folder: str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (names included)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out
