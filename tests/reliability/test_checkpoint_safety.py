"""Checkpoint files (issue 6, item 1): a failed or killed write leaves the previous file
loadable; loading never runs code from the pickle. (The SIGKILL-inside-a-write case of a real
run is in test_resume.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from genutil.checkpoint import read_checkpoint, remove_stale_temps, save_checkpoint
from genutil.errors import CheckpointError
from tests.reliability.util import ROOT

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses


def _payload(value: float) -> dict:
    return {"model": {"module.w": torch.full((64, 64), value)}, "last_epoch": int(value)}


def test_exception_inside_torch_save_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _payload(1.0))
    real = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 a torn zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError):
        save_checkpoint(path, _payload(2.0))
    monkeypatch.setattr(torch, "save", real)
    assert torch.equal(read_checkpoint(path)["model"]["module.w"], torch.full((64, 64), 1.0))
    assert os.listdir(tmp_path) == ["last.pt"]  # the temp file is removed


_KILLED_WRITER = r"""
import os, signal, sys, torch
sys.path.insert(0, {root!r})
from genutil.checkpoint import save_checkpoint
path = {path!r}
save_checkpoint(path, {{"model": {{"w": torch.ones(256, 256)}}, "last_epoch": 1}})
real = torch.save
def torn(obj, f, *a, **k):
    f.write(b"PK\x03\x04" + b"x" * 100000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = torn
save_checkpoint(path, {{"model": {{"w": torch.zeros(256, 256)}}, "last_epoch": 2}})
"""


def test_sigkill_inside_a_write_keeps_previous_file(tmp_path):
    path = str(tmp_path / "last.pt")
    code = _KILLED_WRITER.format(root=ROOT, path=path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == -9
    ckpt = read_checkpoint(path)
    assert ckpt["last_epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(256, 256))
    temps = [f for f in os.listdir(tmp_path) if f != "last.pt"]
    assert len(temps) == 1 and temps[0].startswith(".tmp_last.pt.")
    assert not temps[0].endswith(".pt")  # never mistaken for a checkpoint
    assert remove_stale_temps(str(tmp_path)) == temps
    assert os.listdir(tmp_path) == ["last.pt"]


def test_saved_file_has_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(str(tmp_path / "a.pt"), _payload(0.0))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pt").st_mode) == 0o644


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(path))
    assert "refused" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_garbage_files_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
