"""End to end through main.py: training on a generated CIFAR-10 folder, files written,
TensorBoard events, evaluating the public fixture, one-line errors."""

import glob
import os
import subprocess
import sys

import pytest
import torch

import main
from tests.data.fakes import make_cifar10

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {os.path.dirname(p) for p in glob.glob(os.path.join(log_dir, "*", "events.*"))}
    acc = EventAccumulator(folder, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_cifar10(root, n_per_batch=20, n_test=40)
    return str(root)


def test_static_dnw_trains_one_epoch_on_cifar_folder(cifar, tmp_path, capsys):
    ck, runs = tmp_path / "ck", tmp_path / "runs"
    code = main.main(
        [
            "app:apps/small_scale/static_dnw.yml",
            "--data-dir",
            cifar,
            "--num_epochs",
            "1",
            "--batch_size",
            "64",
            "--workers",
            "0",
            "--save_dir",
            str(ck),
            "--log_dir",
            str(runs),
            "--noprogress",
        ]
    )
    assert code == 0
    (folder,) = glob.glob(str(ck / "*"))
    assert os.path.basename(folder) == "base=static_dnw_batch_size=64"
    for name in ("init.pt", "epoch_0.pt", "best.pt", "last.pt"):
        assert os.path.getsize(os.path.join(folder, name)) > 0
    ckpt = torch.load(os.path.join(folder, "epoch_0.pt"), weights_only=True)
    assert ckpt["last_epoch"] == 0 and ckpt["iter"] == 2.0  # 100 images / 64 -> 2 steps
    assert all(k.startswith("module.") for k in ckpt["model"])
    assert {"model", "optimizer", "last_epoch", "best_val", "iter", "meters"} <= set(ckpt)
    tags = _events(str(runs))
    for tag in (
        "train/CELoss",
        "train/top1_accuracy",
        "val/top1_accuracy",
        "val/top5_accuracy",
        "val/best_val",
        "train/epoch_time",
        "train/lr",
    ):
        assert tag in tags["scalars"], tag
    assert "val/non_zero" in tags["images"]
    assert "final top-1" in capsys.readouterr().out


def test_resume_continues_the_epoch_count_and_optimizer(cifar, tmp_path, capsys):
    common = [
        "app:apps/small_scale/static_dnw.yml",
        "--data-dir",
        cifar,
        "--batch_size",
        "64",
        "--workers",
        "0",
        "--dim",
        "224",
        "--feature_dim",
        "48",
        "--noprogress",
        "--save_dir",
        str(tmp_path / "ck"),
        "--log_dir",
        str(tmp_path / "runs"),
    ]
    assert main.main(common + ["--num_epochs", "1"]) == 0
    (first,) = glob.glob(str(tmp_path / "ck" / "*" / "last.pt"))
    assert main.main(common + ["--num_epochs", "3", "--resume", first]) == 0
    out = capsys.readouterr().out
    assert "next epoch 1, step 2" in out and "epoch 3/3" in out and "epoch 1/3" not in out
    # num_epochs is not part of a run's identity: the same folder, extended
    assert glob.glob(str(tmp_path / "ck" / "*" / "last.pt")) == [first]
    ckpt = torch.load(first, weights_only=True)
    assert ckpt["last_epoch"] == 2 and ckpt["step"] == 6
    assert len(ckpt["optimizer"]["state"]) > 0  # momentum buffers carried over


def test_public_fixture_evaluates_through_main(cifar, reference_dir, tmp_path, capsys):
    ckpt = os.path.join(reference_dir, "ckpt", "small_static_dnw.ckpt.pt")
    code = main.main(
        [
            "app:apps/small_scale/static_dnw.yml",
            "--data-dir",
            cifar,
            "--resume",
            ckpt,
            "--evaluate",
            "--workers",
            "0",
            "--noprogress",
            "--save_dir",
            str(tmp_path / "ck"),
            "--log_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--lrr", "0.1"], ["unknown key 'lrr'", "'lr'"]),
        (["--batch_size", "many"], ["batch_size", "integer"]),
        (["--prune_rate", "1.5"], ["prune_rate", "[0, 1)"]),
        (["--data-dir", "/nonexistent/data"], ["/nonexistent/data", "cifar"]),
        (["--resume", "/nonexistent/x.pt"], ["not found"]),
    ],
)
def test_bad_input_is_one_line_exit_2(cifar, tmp_path, capsys, args, words):
    base = [
        "app:apps/small_scale/static_dnw.yml",
        "--data-dir",
        cifar,
        "--workers",
        "0",
        "--save_dir",
        str(tmp_path / "ck"),
        "--log_dir",
        str(tmp_path / "runs"),
    ]
    assert main.main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for w in words:
        assert w.lower() in err.lower(), err


def test_checkpoint_of_another_model_names_the_key_and_shapes(cifar, reference_dir, tmp_path):
    ckpt = os.path.join(reference_dir, "ckpt", "small_static_dnw.ckpt.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            "app:apps/small_scale/static_dnw.yml",
            "--data-dir",
            cifar,
            "--resume",
            ckpt,
            "--evaluate",
            "--dim",
            "544",
            "--workers",
            "0",
            "--save_dir",
            str(tmp_path / "ck"),
            "--log_dir",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "'zeros'" in err and "(1, 768, 8, 8)" in err and "(1, 512, 8, 8)" in err


def test_missing_app_file_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "main.py", "app:apps/nope.yml"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "apps/nope.yml not found" in proc.stderr
