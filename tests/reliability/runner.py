"""``python tests/reliability/runner.py <main.py arguments>``: main.py with test instruments.

Instruments, switched on by environment variables (all off: exactly main.py):

- ``DNW_TEST_MARK_STEPS=<seconds>[@<epoch>]``: after each training step print ``@step <epoch>
  <batch>`` (flushed; rank 0 only) and, from that epoch on (default 0), sleep that long, so a test
  can signal the run at a known point;
- ``DNW_TEST_NAN_AT=<global step>``: the training loss of that step is NaN;
- ``DNW_TEST_KILL_IN_SAVE=<name>:<n>``: the n-th save of checkpoint ``<name>`` writes half of its
  bytes, then the process SIGKILLs itself (a kill in the middle of a checkpoint write).
- ``DNW_TEST_DISK_FULL=<name>:<n>``: from the n-th save of checkpoint ``<name>`` on, the write
  fails half-way with "No space left on device", as on a full disk.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _mark_steps(pause: float, from_epoch: int) -> None:
    import genutil.trainer as trainer

    real = trainer.call_hooks

    def call_hooks(hooks, name, *args):
        real(hooks, name, *args)
        if name == "on_step_end" and args[1] == "train" and os.environ.get("RANK", "0") == "0":
            state = args[0]
            print(f"@step {state.epoch} {state.batch}", flush=True)
            if state.epoch >= from_epoch:
                time.sleep(pause)

    trainer.call_hooks = call_hooks


def _nan_at(step: int) -> None:
    import torch
    import torch.nn.functional as F

    import genutil.trainer as trainer

    class Functional:
        calls = 0

        def __getattr__(self, name):
            return getattr(F, name)

        def cross_entropy(self, *args, **kwargs):
            loss = F.cross_entropy(*args, **kwargs)
            if torch.is_grad_enabled():  # a training step
                Functional.calls += 1
                if Functional.calls == step + 1:
                    return loss * float("nan")
            return loss

    trainer.F = Functional()


def _kill_in_save(spec: str) -> None:
    import torch

    name, count = spec.rsplit(":", 1)
    real = torch.save
    seen = [0]

    def save(obj, f, *args, **kwargs):
        try:  # save_checkpoint hands torch.save an os.fdopen() file: its name is the fd
            target = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        except (AttributeError, OSError):
            target = ""
        if target.startswith(f".tmp_{name}."):
            seen[0] += 1
            if seen[0] == int(count):
                buffer = io.BytesIO()
                real(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                print(f"@killed-in-save {name}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *args, **kwargs)

    torch.save = save


def _disk_full(spec: str) -> None:
    import errno

    import torch

    name, count = spec.rsplit(":", 1)
    real = torch.save
    seen = [0]

    def save(obj, f, *args, **kwargs):
        try:
            target = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
        except (AttributeError, OSError):
            target = ""
        if target.startswith(f".tmp_{name}."):
            seen[0] += 1
            if seen[0] >= int(count):
                f.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    if os.environ.get("DNW_TEST_MARK_STEPS"):
        pause, _, start = os.environ["DNW_TEST_MARK_STEPS"].partition("@")
        _mark_steps(float(pause), int(start or 0))
    if os.environ.get("DNW_TEST_NAN_AT"):
        _nan_at(int(os.environ["DNW_TEST_NAN_AT"]))
    if os.environ.get("DNW_TEST_KILL_IN_SAVE"):
        _kill_in_save(os.environ["DNW_TEST_KILL_IN_SAVE"])
    if os.environ.get("DNW_TEST_DISK_FULL"):
        _disk_full(os.environ["DNW_TEST_DISK_FULL"])
    import main

    sys.argv[0] = "main.py"
    sys.exit(main.main(sys.argv[1:]))
