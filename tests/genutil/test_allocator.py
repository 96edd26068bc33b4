"""keep_freed_memory: freed blocks stay in the process, so a step's buffers are not faulted in
again (mallopt is process-wide, so each case runs in its own interpreter)."""

import os
import subprocess
import sys

import pytest

import main
from genutil import allocator
from models.graphs import fastpath, native

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLIBC = allocator.is_glibc()

# Three rounds (after two untimed ones) of what a run does: a training step at batch 32, then an
# evaluation forward at batch 64, of the static tiny model; prints the minor page faults per
# round. (Two batch sizes, as in a run: with one, glibc's self-raising threshold sometimes
# spares it most faults.)
_STEPS = """
import resource, sys
import torch
import torch.nn.functional as F
if sys.argv[1] == "keep":
    from genutil.allocator import keep_freed_memory
    assert keep_freed_memory()
from genutil import api
torch.set_num_threads(2)
torch.manual_seed(0)
model = api.build_model("apps/small_scale/static_dnw.yml")
x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
x_eval = torch.randn(64, 3, 32, 32)
def one_round():
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    model.eval()
    with torch.no_grad():
        model(x_eval)
one_round(); one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _faults_per_round(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_training_steps_reuse_freed_memory_without_page_faults():
    system, keep = _faults_per_round("system"), _faults_per_round("keep")
    # glibc maps fresh pages for the round's buffers: 7,600-16,500 in 15 runs here
    assert system > 4000, system
    # the steady state reuses the heap: 0-1,024 in 10 runs here
    assert keep < 2000 and keep < system / 4, (keep, system)


@pytest.mark.skipif(GLIBC, reason="glibc is here")
def test_other_c_libraries_are_left_alone():
    assert allocator.keep_freed_memory() is False


@pytest.mark.slow
def test_the_entry_point_sets_it_unless_the_config_says_no(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr("genutil.process.keep_freed_memory", lambda: calls.append(1) or True)
    common = [
        "app:apps/quickstart/static_dnw.yml",
        "--num_epochs",
        "1",
        "--save_dir",
        str(tmp_path / "ck"),
        "--log_dir",
        str(tmp_path / "runs"),
        "--noprogress",
    ]
    assert main.main(common) == 0
    assert calls == [1]
    assert "freed memory kept for reuse" in capsys.readouterr().out
    assert main.main([*common, "--nokeep_freed_memory", "--save_dir", str(tmp_path / "ck2")]) == 0
    assert calls == [1]
    assert "freed memory returned to the system" in capsys.readouterr().out


@pytest.mark.slow
def test_the_entry_point_applies_the_fast_path_keys(tmp_path, capsys):
    common = [
        "app:apps/quickstart/static_dnw.yml",
        "--num_epochs",
        "1",
        "--log_dir",
        str(tmp_path / "runs"),
        "--noprogress",
    ]
    try:
        assert main.main([*common, "--save_dir", str(tmp_path / "ck")]) == 0
        assert fastpath.switches().native
        assert "native on" in capsys.readouterr().out or native.library() is None
        assert main.main([*common, "--nonative_kernels", "--save_dir", str(tmp_path / "ck2")]) == 0
        assert not fastpath.switches().native
        assert "native off (switched off)" in capsys.readouterr().out
        assert main.main([*common, "--nofast_paths", "--save_dir", str(tmp_path / "ck3")]) == 0
        assert "fast paths: all off (reference forwards)" in capsys.readouterr().out
    finally:
        fastpath.configure(enabled=True, native=True)
