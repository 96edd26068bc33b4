"""CUDA paths: training and evaluation on the GPU, DataParallel through --gpus, mixed
precision. Skipped on machines without a GPU (CI has none; run them where one is lent)."""

import glob
import os

import pytest
import torch

import main
from genutil import api

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_quickstart_trains_on_cuda_with_dataparallel(tmp_path, capsys):
    code = main.main(
        [
            "app:apps/quickstart/static_dnw.yml",
            "--gpus",
            "0",
            "--num_epochs",
            "3",
            "--noprogress",
            "--save_dir",
            str(tmp_path / "ck"),
            "--log_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "on cuda:0" in out and "final top-1" in out
    (last,) = glob.glob(str(tmp_path / "ck" / "*" / "last.pt"))
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert all(k.startswith("module.") for k in state["model"])


@pytest.mark.parametrize("amp", ["", "bf16", "fp16"])
def test_training_step_on_cuda(amp):
    torch.manual_seed(0)
    model = api.build_model("apps/small_scale/static_dnw.yml").cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    before = model.graph.weight.detach().clone()
    with torch.autocast(
        "cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16, enabled=bool(amp)
    ):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # straight-through: pruned edges that the forward reads (the DAG region) move too
    changed = (model.graph.weight.detach() != before).view(800, 800).cpu()
    pruned = (model.graph.get_weight().detach() == 0).view(800, 800).cpu()
    region = model.allowed_edges()
    assert changed[pruned & region].float().mean() > 0.9


def test_cuda_matches_cpu_on_the_fixture(reference_dir):
    d = os.path.join(reference_dir, "ckpt")
    model = api.build_model("apps/medium_scale/mobilenetv1_dnw_x225.yml")
    api.load_checkpoint(model, os.path.join(d, "medium_mobilenetv1_dnw_x225.ckpt.pt"))
    x = torch.load(os.path.join(d, "medium_mobilenetv1_dnw_x225.input.pt"), weights_only=True)
    want = torch.load(
        os.path.join(d, "medium_mobilenetv1_dnw_x225.expected.pt"), weights_only=True
    )["logits"]
    model.cuda().eval()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        got = model(x.cuda()).cpu()
    assert (got - want).abs().max() < 1e-4
