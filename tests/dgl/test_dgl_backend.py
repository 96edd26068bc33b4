"""The DGL backend (``graph_backend: dgl`` / ``--use_dgl``), run by ``make test-dgl`` in the DGL
environment (.venv-dgl: torch 2.2.1, dgl 2.1.0). The main environment skips these."""

import os
import subprocess
import sys

import pytest
import torch

from genutil import api
from models.graphs.fast import dgl_available
from models.graphs.fast.backends import DGLEdges
from models.graphs.fast.network import FastGraphNet
from models.graphs.mobilenetv1like import MobileNetV1Like
from tests.data.fakes import make_imagenet

pytestmark = pytest.mark.skipif(
    not dgl_available(),
    reason="dgl is not importable here (it needs torch <= 2.2.1): "
    "make dgl-env, then make test-dgl runs these in .venv-dgl",
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LARGE = "apps/large_scale/mobilenetv1_dnw_x225.yml"


@pytest.fixture(scope="module")
def medium(reference_dir):
    base = os.path.join(reference_dir, "ckpt", "medium_mobilenetv1_dnw_x225")
    model = MobileNetV1Like(prune_rate=0.775, graph="dnw")
    api.load_checkpoint(model, base + ".ckpt.pt")
    x = torch.load(base + ".input.pt", weights_only=True)
    return model.eval(), x, torch.load(base + ".expected.pt", weights_only=True)


def test_dgl_backend_on_the_medium_fixture(medium):
    model, x, expected = medium
    plan = model.fast_plan()
    fast = {b: FastGraphNet(plan, b) for b in ("dgl", "sparse", "dense")}
    with torch.no_grad():
        out = {b: m(x) for b, m in fast.items()}
    assert (out["dgl"] - expected["logits_fast_eval"]).abs().max().item() <= 1e-5
    assert (out["dgl"] - expected["logits"]).abs().max().item() <= 1e-5
    assert (out["dgl"] - out["sparse"]).abs().max().item() <= 1e-5
    assert (out["dgl"] - out["dense"]).abs().max().item() <= 1e-5
    # message passing runs exactly the kept edges: one DGL graph per target layer
    edges = [m for m in fast["dgl"].modules() if isinstance(m, DGLEdges)]
    assert len(edges) == sum(len(b.layers) for b in plan.blocks) == 13
    assert sum(e.nnz for e in edges) == sum(b.weight.numel() for b in plan.blocks) == 156_304
    graphs = [e._graph(torch.device("cpu")) for e in edges]
    assert sum(g.num_edges() for g in graphs) == 156_304


def test_api_dgl_backend_and_export_refused(medium, tmp_path):
    model, x, expected = medium
    shrunk = api.shrink(model, backend="dgl")
    assert shrunk.module.backend == "dgl" and shrunk.lines[0].startswith("fast_eval (dgl)")
    with pytest.raises(ValueError, match="DGL graphs cannot be saved"):
        api.export_model(shrunk.module, str(tmp_path / "m.pt"), x)


def test_main_evaluates_large_scale_with_fast_eval_and_dgl(tmp_path):
    torch.manual_seed(0)
    model = api.build_model(LARGE)
    ckpt = tmp_path / "imagenet_dnw_x225.pt"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, ckpt)
    data = tmp_path / "data"
    make_imagenet(data, classes=3, per_class=2)
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            f"app:{LARGE}",
            "--resume",
            str(ckpt),
            "--evaluate",
            "--fast_eval",
            "--use_dgl",
            "--batch_size",
            "256",
            "--data-dir",
            str(data),
            "--workers",
            "0",
            "--noprogress",
            "--save_dir",
            str(tmp_path / "ck"),
            "--log_dir",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fast_eval (dgl): stem keeps" in proc.stdout
    assert "top-1" in proc.stdout and "top-5" in proc.stdout
