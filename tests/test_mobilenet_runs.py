"""MobileNetV1-like experiments end to end through main.py on generated data: medium DNW, the
complete graph -> fine-tune and lottery-ticket recipe, and evaluating an original-format
ImageNet checkpoint (with pickled meters of the original's classes)."""

import glob
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import main
from genutil import api
from models.graphs.selection import topk_mask
from tests.data.fakes import make_cifar10, make_imagenet

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEDIUM = "apps/medium_scale"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root, n_per_batch=8, n_test=16)
    return str(root)


def _run(app, cifar, save, *extra):
    args = [
        f"app:{app}",
        "--data-dir",
        cifar,
        "--num_epochs",
        "1",
        "--batch_size",
        "20",
        "--workers",
        "0",
        "--noprogress",
        "--save_dir",
        str(save / "ck"),
        "--log_dir",
        str(save / "runs"),
        *extra,
    ]
    assert main.main(args) == 0
    return glob.glob(str(save / "ck" / f"base={os.path.basename(app)[:-4]}*"))


def test_medium_dnw_trains_and_validates(cifar, tmp_path, capsys):
    (folder,) = _run(f"{MEDIUM}/mobilenetv1_dnw_x225.yml", cifar, tmp_path)
    assert os.path.exists(os.path.join(folder, "epoch_0.pt"))
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "final top-1" in out


def test_complete_then_fine_tune_and_lottery_ticket(cifar, tmp_path):
    (complete,) = _run(f"{MEDIUM}/mobilenetv1_complete_graph.yml", cifar, tmp_path)
    trained = os.path.join(complete, "epoch_0.pt")
    init = os.path.join(complete, "init.pt")

    (ft,) = _run(f"{MEDIUM}/mobilenetv1_ft_x225.yml", cifar, tmp_path, "--use_graph", trained)
    (lottery,) = _run(
        f"{MEDIUM}/mobilenetv1_lottery_one_shot_x225.yml",
        cifar,
        tmp_path,
        "--use_graph",
        trained,
        "--use_init",
        init,
    )

    trained_sd = torch.load(trained, weights_only=True)["model"]
    init_sd = torch.load(init, weights_only=True)["model"]
    ref = api.build_model(f"{MEDIUM}/mobilenetv1_ft_x225.yml")
    for run_dir in (ft, lottery):
        start = torch.load(os.path.join(run_dir, "init.pt"), weights_only=True)["model"]
        end = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["model"]
        for name, layer in ((gl.name, gl.module) for gl in ref.graph_layers()):
            key = f"module.{name}"
            want = topk_mask(trained_sd[f"{key}.weight"].abs(), layer.num_kept).float()
            # the wiring is the trained complete graph's top-k, frozen through training
            assert torch.equal(start[f"{key}.mask"], want)
            assert torch.equal(end[f"{key}.mask"], want)
    lottery_start = torch.load(os.path.join(lottery, "init.pt"), weights_only=True)["model"]
    ft_start = torch.load(os.path.join(ft, "init.pt"), weights_only=True)["model"]
    w = "module.layers.3.graph.weight"
    assert torch.equal(lottery_start[w], init_sd[w])  # lottery: the complete run's init weights
    assert torch.equal(ft_start[w], trained_sd[w])  # fine-tune: its trained weights


_ORIGINAL_TRAIN_MODULE = """
class Meter:
    def __init__(self, name):
        self.name, self.steps, self.values = name, 0, []
class ScalarMeter(Meter):
    pass
"""


def test_large_scale_original_checkpoint_evaluates(tmp_path):
    """An ImageNet checkpoint in the original layout: 'module.' keys and pickled meters."""
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "train.py").write_text(textwrap.dedent(_ORIGINAL_TRAIN_MODULE))
    ckpt = tmp_path / "imagenet_dnw_x225.pt"
    maker = textwrap.dedent(f"""
        import sys, torch
        sys.path[:0] = [{str(tmp_path / "orig")!r}, {ROOT!r}]
        import train
        from genutil import api
        torch.manual_seed(0)
        model = api.build_model('apps/large_scale/mobilenetv1_dnw_x225.yml')
        meters = ({{'CELoss': train.ScalarMeter('train_CELoss')}}, {{'best_val':
                  train.ScalarMeter('best_val')}})
        torch.save({{'model': {{'module.' + k: v for k, v in model.state_dict().items()}},
                    'optimizer': {{}}, 'last_epoch': 249, 'best_val': 0.609, 'iter': 1.0,
                    'meters': meters}}, {str(ckpt)!r})
    """)
    subprocess.run([sys.executable, "-c", maker], check=True, cwd=ROOT)
    data = tmp_path / "data"
    make_imagenet(data, classes=3, per_class=2)
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            "app:apps/large_scale/mobilenetv1_dnw_x225.yml",
            "--resume",
            str(ckpt),
            "--evaluate",
            "--data-dir",
            str(data),
            "--workers",
            "0",
            "--batch_size",
            "6",
            "--save_dir",
            str(tmp_path / "ck"),
            "--log_dir",
            str(tmp_path / "runs"),
            "--noprogress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "top-1" in out and "top-5" in out
    assert "params" in out and "MACs" in out
