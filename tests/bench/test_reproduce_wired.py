"""bench/reproduce_wired.py: the wired MobileNetV2 protocol's plumbing on a tiny generated
Fashion-MNIST (1 epoch, a 30-image subset): three rows through the framework, table, chart,
and a second invocation that skips the finished runs."""

from __future__ import annotations

import glob
import json

import pytest

from bench import reproduce_wired
from tests.data.fakes import make_fashion_mnist

pytestmark = pytest.mark.slow  # trains six tiny runs


def test_the_cpu_protocol():
    cpu = reproduce_wired.PROTOCOLS["cpu"]
    assert (cpu.train_subset, cpu.epochs, cpu.seeds, cpu.batch_size) == (10000, 12, (0, 1), 128)
    assert [label for label, _, _ in reproduce_wired.ROWS] == [
        "random",
        "DNW",
        "dense (every edge)",
    ]


def test_rows_table_chart_and_skip(tmp_path, capsys):
    make_fashion_mnist(tmp_path / "data", n=40, n_test=20)
    argv = ["--data-dir", str(tmp_path / "data"), "--subset", "30", "--epochs", "1", "--seeds",
            "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "fig")]  # fmt: skip
    assert reproduce_wired.main(argv) == 0
    results = {}
    for path in glob.glob(str(tmp_path / "work" / "results" / "*.json")):
        with open(path) as f:
            result = json.load(f)
        results[result["label"]] = result
    assert set(results) == {"random", "DNW", "dense (every edge)"}
    # the same budget for both wirings, every edge for the reference
    assert results["random"]["params"] == results["DNW"]["params"]
    assert results["DNW"]["params"] < results["dense (every edge)"]["params"]
    table = (tmp_path / "fig" / "results_wired_mobilenet_v2_fashion_mnist.md").read_text()
    assert "| DNW | " in table and "Changed from the cpu protocol" in table
    assert (tmp_path / "fig" / "results_wired_mobilenet_v2_fashion_mnist.png").stat().st_size > 5000
    capsys.readouterr()
    assert reproduce_wired.main(argv) == 0  # finished runs are read, not trained again
    assert capsys.readouterr().out.count("finished earlier") == 3
