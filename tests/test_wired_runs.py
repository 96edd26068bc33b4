"""DNW on any network, end to end: ``python main.py app:<file>`` with a network the experiment
file names (a user's module outside the repository; torchvision's), trained, checkpointed,
resumed, evaluated and shrunk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genutil import api
from genutil.checkpoint import read_checkpoint
from tests.data.fakes import make_cifar10

pytestmark = pytest.mark.slow  # end to end: main.py in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_MODULE = """
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, channels, stride):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
        self.pw = nn.Conv2d(channels, channels * 2, 1, bias=True)
        self.bn = nn.BatchNorm2d(channels * 2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.pw(self.dw(x))))


class UserNet(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.blocks = nn.Sequential(Block(width, 2), Block(width * 2, 2))
        self.fc = nn.Linear(width * 4, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def build(width=8, classes=10):
    return UserNet(width, classes)


def no_pointwise(classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))
"""

EXPERIMENT = """
model: {model}
model_kwargs: {{width: 12}}
data: data.digits:Digits
batch_size: 64
test_batch_size: 128
workers: 0
lr: 0.05
num_epochs: 2
image_size: 16
in_channels: 3
output_size: 10
seed: 3
wire: True
graph: dnw
prune_rate: 0.7
skip_profiling: False
"""


def _main(args, tmp: Path, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    return subprocess.run(
        [
            sys.executable,
            "main.py",
            *args,
            "--save_dir",
            str(tmp / "ck"),
            "--log_dir",
            str(tmp / "runs"),
            "--noprogress",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture()
def user_code(tmp_path: Path) -> Path:
    """A user's package outside the repository, and an experiment file naming it."""
    pkg = tmp_path / "elsewhere" / "mylab"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODULE)
    return tmp_path / "elsewhere"


def test_a_network_outside_the_repository_trains_resumes_and_evaluates_fast(user_code, tmp_path):
    env = {"PYTHONPATH": str(user_code)}
    app = tmp_path / "user.yml"
    app.write_text(EXPERIMENT.format(model="mylab.nets:build"))
    proc = _main([f"app:{app}"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "ck").iterdir()
    assert {"init.pt", "epoch_0.pt", "last.pt", "best.pt"} <= set(os.listdir(run_dir))
    ckpt = read_checkpoint(str(run_dir / "last.pt"))
    cfg = ckpt["config"]  # the wiring is recorded with the run
    assert (cfg["model"], cfg["wire"], cfg["graph"], cfg["prune_rate"]) == (
        "mylab.nets:build",
        True,
        "dnw",
        0.7,
    )
    assert cfg["model_kwargs"] == {"width": 12}
    # the run record names the kept edges: 2 pointwise layers at prune rate 0.7
    record = (run_dir / "config.yaml").read_text()
    assert "wire: true" in record and "model_kwargs:" in record
    assert "2 graph layers" in proc.stdout

    # TensorBoard: one adjacency image per wired layer; the wiring figures from the run folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / run_dir.name))
    events.Reload()
    assert {"val/non_zero/blocks.0.pw", "val/non_zero/blocks.1.pw"} <= set(events.Tags()["images"])
    proc = subprocess.run(
        [sys.executable, "-m", "genutil.plot", str(run_dir), "--out", str(tmp_path / "fig") + "/"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=f"{user_code}{os.pathsep}{ROOT}"),
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = set(os.listdir(tmp_path / "fig"))
    assert {"adjacency_blocks-0-pw.png", "degrees_blocks-1-pw.png", "edge_changes.png"} <= drawn

    # resume, evaluate and shrink the checkpoint
    results = tmp_path / "eval.json"
    proc = _main(
        [
            f"app:{app}",
            "--resume",
            str(run_dir / "last.pt"),
            "--evaluate",
            "--fast_eval",
            "--results_file",
            str(results),
        ],  # fmt: skip
        tmp_path,
        env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fast_eval (sparse): 2 graph layers run their" in proc.stdout
    fast = json.loads(results.read_text())
    proc = _main(
        [
            f"app:{app}",
            "--resume",
            str(run_dir / "last.pt"),
            "--evaluate",
            "--results_file",
            str(tmp_path / "full.json"),
        ],  # fmt: skip
        tmp_path,
        env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = json.loads((tmp_path / "full.json").read_text())
    assert fast["top1"] == pytest.approx(full["top1"], abs=1e-9)
    assert (fast["backend"], full["backend"]) == ("sparse", "full model")

    # a wired checkpoint reloads into a freshly wired model (Python, the same module)
    sys.path.insert(0, str(user_code))
    try:
        model = api.build_model(str(app))
        api.load_checkpoint(model, str(run_dir / "last.pt"))
        kept = sum(int(torch.count_nonzero(g.effective_weight())) for g in model.graph_layers())
        total = sum(g.module.weight.numel() for g in model.graph_layers())
        assert (
            kept
            == sum(
                g.module.weight.numel() - int(0.7 * g.module.weight.numel())
                for g in model.graph_layers()
            )
            and kept < total
        )
    finally:
        sys.path.remove(str(user_code))
        sys.modules.pop("mylab.nets", None), sys.modules.pop("mylab", None)

    # resume auto continues the run to more epochs
    proc = _main([f"app:{app}", "--resume", "auto", "--num_epochs", "3"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_checkpoint(str(run_dir / "last.pt"))["epoch"] == 3


@pytest.mark.parametrize(
    "model, extra, words",
    [
        ("mylab.nowhere:build", "", ["mylab.nowhere", "not found", "PYTHONPATH"]),
        ("mylab.nets:buld", "", ["no 'buld'", "build"]),
        ("mylab.nets:build", "model_kwargs: {depth: 3}\n", ["model_kwargs", "depth"]),
        ("mylab.nets:no_pointwise", "model_kwargs: {}\n", ["no 1x1 convolution"]),
        ("mylab.nets:build", "model_kwargs: {classes: 7}\n", ["(2, 7)", "num_classes"]),
        ("mylab.nets:build", "in_channels: 1\n", ["cannot run a 1x16x16 input"]),
        ("math:pi", "model_kwargs: {}\n", ["is a float", "not a network"]),
    ],
)
def test_a_network_that_cannot_be_built_is_one_line_and_exit_2(user_code, tmp_path, model,
                                                               extra, words):  # fmt: skip
    app = tmp_path / "bad.yml"
    text = EXPERIMENT.format(model=model)
    for line in extra.splitlines():
        key = line.split(":")[0]
        text = "\n".join(t for t in text.splitlines() if not t.startswith(key + ":")) + "\n"
    app.write_text(text + extra)
    proc = _main([f"app:{app}"], tmp_path, {"PYTHONPATH": str(user_code)}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "Traceback" not in proc.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").rglob("*.pt"))


@pytest.mark.parametrize("net", ["mobilenet_v2", "resnet18"])
@pytest.mark.parametrize("graph", ["dnw", "random_graph"])
def test_the_torchvision_experiment_files_train_an_epoch_on_cifar10(tmp_path, net, graph):
    make_cifar10(tmp_path / "data", n_per_batch=16, n_test=32)
    app = f"app:apps/torchvision/{net}_cifar10_{graph}.yml"
    proc = _main(
        [
            app,
            "--num_epochs",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--workers",
            "0",
            "--batch_size",
            "16",
            "--skip_profiling",
            "False",
        ],  # fmt: skip
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 1/1" in proc.stdout and "kept edges" in proc.stdout
    (run_dir,) = (tmp_path / "ck").iterdir()
    ckpt = read_checkpoint(str(run_dir / "last.pt"))
    assert ckpt["config"]["graph"] == ("dnw" if graph == "dnw" else "random")
    masks = [k for k in ckpt["model"] if k.endswith(".mask")]
    assert bool(masks) == (graph == "random_graph")
