"""genutil.plot: every figure is written, for the public fixture and for a freshly trained
quickstart run; edge-change counts equal a direct count; bad inputs are one line, exit 2."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

import main as main_cli
from genutil import plot
from genutil.api import build_model
from genutil.checkpoint import model_state, read_checkpoint
from genutil.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "apps", "quickstart", "static_dnw.yml")


def _fixture(reference_dir: str, name: str) -> tuple[str, dict]:
    base = os.path.join(reference_dir, "ckpt", name)
    with open(base + ".json") as f:
        return base + ".ckpt.pt", json.load(f)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> str:
    """The quickstart trained for 2 epochs: init.pt, epoch_0.pt, last.pt, best.pt."""
    root = tmp_path_factory.mktemp("quickstart")
    argv = [
        f"app:{QUICKSTART}",
        "--num_epochs",
        "2",
        "--save_dir",
        str(root / "ck"),
        "--log_dir",
        str(root / "runs"),
        "--noprogress",
    ]
    assert main_cli.main(argv) == 0
    (folder,) = (root / "ck").iterdir()
    return str(folder)


def _assert_written(paths: list[str], names: list[str]) -> None:
    assert sorted(os.path.basename(p) for p in paths) == sorted(names)
    for path in paths:
        assert os.path.getsize(path) > 1000, path


def test_fixture_figures_through_the_cli(reference_dir, tmp_path, capsys):
    path, _ = _fixture(reference_dir, "small_static_dnw")
    assert plot.main([path, "--out", str(tmp_path / "fx")]) == 0
    written = capsys.readouterr().out.split()
    _assert_written(written, ["fx_adjacency.png", "fx_dag.png", "fx_degrees.png"])  # no churn


def test_fixture_wiring_is_inferred_from_shapes(reference_dir):
    path, meta = _fixture(reference_dir, "small_static_dnw")
    model, _ = plot.load_model(path)  # no config in the file, no --app
    (wiring,) = plot.load_wirings(model)
    assert type(model).__name__ == "StaticNeuralGraph"
    assert int(wiring.kept.sum()) == meta["graph_stats"][0]["kept"] == 32000
    assert [s for s in wiring.layers.sizes] == [32, 192, 192, 192, 192, 100]


def test_fixture_edge_changes_match_reference(reference_dir):
    """The fixture's json counts the edges changed since the initialisation it was trained
    from (seed 0, the model built from the yml): the same symmetric difference."""
    path, meta = _fixture(reference_dir, "small_static_dnw")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    init = build_model(os.path.join(ROOT, meta["yml"]))
    masks = plot.kept_masks(plot.load_wirings(init.eval()))
    expected = meta["graph_stats"][0]["kept_set_changed_vs_init"]
    assert plot.edge_changes(masks, path) == expected == 4084


def test_mobilenet_fixture_needs_app_and_counts_match(reference_dir):
    path, meta = _fixture(reference_dir, "medium_mobilenetv1_dnw_x225")
    with pytest.raises(CheckpointError, match="--app"):
        plot.load_model(path)
    model, _ = plot.load_model(path, app=os.path.join(ROOT, meta["yml"]))
    wirings = plot.load_wirings(model)
    assert [int(w.kept.sum()) for w in wirings] == [s["kept"] for s in meta["graph_stats"]]
    assert all(w.layers is not None for w in wirings)


def test_quickstart_run_figures(quickstart_run, tmp_path):
    written = plot.plot_checkpoints([quickstart_run], str(tmp_path / "qs"))
    _assert_written(
        written,
        [
            "qs_adjacency.png",
            "qs_dag.png",
            "qs_degrees.png",
            "qs_edge_changes.png",
            "qs_adjacency_over_training.gif",
        ],
    )
    gif = Image.open(str(tmp_path / "qs_adjacency_over_training.gif"))
    assert gif.n_frames == 3  # init, epoch 1, epoch 2 (best.pt is a copy, left out)
    snaps = plot.load_series([quickstart_run])
    assert [s.label for s in snaps] == ["init", "epoch 1", "epoch 2"]


def _direct_mask(path: str, prune_rate: float) -> torch.Tensor:
    w = model_state(read_checkpoint(path))["graph.weight"].abs().flatten()
    keep = w.numel() - int(prune_rate * w.numel())
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[torch.topk(w, keep).indices] = True
    return mask


@pytest.mark.parametrize("first", ["init.pt", "epoch_0.pt"])
def test_edge_changes_equal_direct_count(quickstart_run, first):
    a, b = os.path.join(quickstart_run, first), os.path.join(quickstart_run, "last.pt")
    direct = int((_direct_mask(a, 0.9) ^ _direct_mask(b, 0.9)).sum())
    assert direct > 0
    assert plot.edge_changes(a, b) == direct


@pytest.mark.parametrize("bad", ["missing", "not_torch", "empty_folder", "no_graph"])
def test_cli_bad_input_is_one_line(tmp_path, capsys, bad):
    target = tmp_path / bad
    if bad == "not_torch":
        target.write_text("not a checkpoint")
    elif bad == "empty_folder":
        target.mkdir()
    elif bad == "no_graph":
        torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, str(target))
    assert plot.main([str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "out, name, many, expected",
    [
        ("fig/run", "graph", False, "fig/run_dag.png"),
        ("fig/run_", "graph", False, "fig/run_dag.png"),  # the README's spelling
        ("fig/run/", "layers.3.graph", True, "fig/run/dag_layers-3-graph.png"),
    ],
)
def test_output_names(out, name, many, expected):
    assert plot._target(out, "dag", name, many) == expected
