"""bench/reproduce.py: the protocol's plumbing on a tiny generated Fashion-MNIST (1 epoch, a
30-image subset): the runs go through the framework with the protocol's settings, the table and
chart are written, and a second invocation skips the finished runs."""

from __future__ import annotations

import glob
import json
import os

import pytest

import data.fashion_mnist as fashion_mnist
from bench import reproduce
from genutil.checkpoint import read_checkpoint
from tests.data.fakes import make_fashion_mnist

pytestmark = pytest.mark.slow  # end to end: main.py or its parts, in subprocesses


def test_cpu_protocol_is_issue_8s():
    cpu = reproduce.PROTOCOLS["cpu"]
    assert (cpu.train_subset, cpu.epochs, cpu.seeds) == (
        20000,
        {"static": 5, "discrete_time": 3},
        (0, 1),
    )
    assert (cpu.batch_size, cpu.settings) == (128, ("static", "discrete_time"))
    gpu = reproduce.PROTOCOLS["gpu"]
    assert gpu.train_subset == 0 and min(gpu.epochs.values()) >= 30 and len(gpu.settings) == 3


@pytest.fixture()
def tiny(tmp_path):
    make_fashion_mnist(tmp_path / "data", n=40, n_test=20)
    argv = [
        "--data-dir",
        str(tmp_path / "data"),
        "--subset",
        "30",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--settings",
        "static",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "fig"),
        "--no-wiring",
    ]
    return tmp_path, argv


def test_runs_table_chart_and_skip(tiny, capsys):
    tmp_path, argv = tiny
    assert reproduce.main(argv) == 0
    results = sorted(glob.glob(str(tmp_path / "work" / "results" / "*.json")))
    assert len(results) == 2  # static random and static DNW, seed 0
    for path in results:
        with open(path) as f:
            result = json.load(f)
        assert (result["epochs"], result["train_subset"], result["seed"]) == (1, 30, 0)
        assert 0 <= result["top1"] <= 100 and result["params"] > 0
        cfg = read_checkpoint(os.path.join(result["checkpoints"], "last.pt"))["config"]
        assert (
            cfg["lr_scheduler"],
            cfg["batch_size"],
            cfg["train_subset"],
            cfg["num_epochs"],
            cfg["lr"],
            cfg["momentum"],
        ) == ("cosine", 128, 30, 1, 0.1, 0.9)
    table = (tmp_path / "fig" / "results_fashion_mnist.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| static |")]
    assert len(rows) == 2 and all(" 1 | 30 | " in row for row in rows)
    assert "| continuous time | DNW | not run: the ODE solver is too slow" in table
    assert "| discrete time | random | not run (left out with --settings)" in table
    assert "Changed from the named protocol" in table
    assert (tmp_path / "fig" / "results_fashion_mnist.png").stat().st_size > 1000
    capsys.readouterr()

    stamps = {p: os.path.getmtime(p) for p in results}
    last = glob.glob(str(tmp_path / "work" / "checkpoints" / "*" / "last.pt"))
    last_stamps = {p: os.path.getmtime(p) for p in last}
    assert reproduce.main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    assert {p: os.path.getmtime(p) for p in results} == stamps
    assert {p: os.path.getmtime(p) for p in last} == last_stamps  # nothing trained again


def test_missing_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    assert reproduce.main(["--data-dir", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST not found") and err.count("\n") == 1
    assert "apt-get install -y dataset-fashion-mnist" in err


def test_jobs_run_in_parallel_processes_and_times_add_up(tiny, capsys):
    tmp_path, argv = tiny
    assert reproduce.main(argv + ["--jobs", "2"]) == 0
    results = sorted(glob.glob(str(tmp_path / "work" / "results" / "*.json")))
    assert len(results) == 2
    for path in results:
        with open(path) as f:
            result = json.load(f)
        seconds = tmp_path / "work" / "logs" / (result["title"] + ".seconds")
        assert abs(float(seconds.read_text()) - result["wall_s"]) < 1e-2 and result["wall_s"] > 0
    table = (tmp_path / "fig" / "results_fashion_mnist.md").read_text()
    assert "2 runs at a time" in table
    elapsed = float((tmp_path / "work" / "logs" / "table_cpu.seconds").read_text())
    assert f"wall time of the whole table {reproduce._duration(elapsed)}" in table


def test_add_time_keeps_a_running_total(tmp_path):
    path = str(tmp_path / "logs" / "run.seconds")
    assert reproduce._add_time(path, 1.5) == 1.5
    assert reproduce._add_time(path, 2.25) == 3.75
    assert float(open(path).read()) == 3.75
