"""Runs you can read and compare (issue 16): the record a run leaves, evaluation results, the
report over seeds, progress without a terminal, TensorBoard, and the torch.export file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from genutil import report
from tests.reliability.util import QUICKSTART, ROOT, dirs, run_main

pytestmark = pytest.mark.slow  # end to end: main.py in subprocesses

TINY = [QUICKSTART, "--dim", "160", "--feature_dim", "32", "--num_epochs", "2"]


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("record")
    result = run_main(TINY + dirs(tmp) + ["--seed", "0"])
    (folder,) = (tmp / "ck").iterdir()
    return tmp, folder, result


def _records(folder) -> list[dict]:
    with open(folder / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh]


def test_the_run_folder_holds_its_record(trained):
    _, folder, result = trained
    out = _ok(result)
    names = set(os.listdir(folder))
    assert {"config.yaml", "metrics.jsonl", "environment.jsonl", "console.log"} <= names
    # metrics.jsonl has the numbers the console printed, one epoch numbering (from 1)
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    records = _records(folder)
    assert [r["epoch"] for r in records] == [1, 2] and len(lines) == 2
    for line, rec in zip(lines, records):
        assert line.startswith(f"epoch {rec['epoch']}/2 ")
        assert f"train loss {rec['train_CELoss']:.4f}" in line
        assert (
            f"val loss {rec['val_CELoss']:.4f} top-1 {100 * rec['val_top1_accuracy']:.2f}%" in line
        )
        assert f"{rec['train_images_per_s']:,.0f} img/s" in line
        assert rec["lr"] >= 0 and rec["edges_changed"] >= 0 and rec["params"] > 0
    assert records[0]["edges_changed"] > 0  # DNW rewires during its first epoch
    # the environment record
    (env,) = [json.loads(line) for line in open(folder / "environment.jsonl")]
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["threads"] >= 1
    assert env["fast_paths"]["enabled"] == "on" and "main.py" in env["command"][0]
    assert len(env["git"]["commit"] or "x" * 40) == 40
    # the console output, including what the library logged (the data set's line)
    console = open(folder / "console.log").read()
    assert all(line in console for line in lines) and "digits: 1438 train" in console
    # and the paper's parameter count printed beside the dense one
    assert re.search(r"params [\d,]+ as the paper counts them \(dense: [\d,]+\)", out)


def test_progress_without_a_terminal_has_no_redraws(trained):
    _, _, result = trained
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert "img/s" in result.stdout


def test_the_saved_config_runs_the_same_experiment_again(trained, tmp_path):
    _, folder, _ = trained
    with open(folder / "config.yaml") as fh:
        saved = yaml.safe_load(fh)
    assert saved["title"] == folder.name and saved["seed"] == 0 and saved["dim"] == 160
    again = _ok(run_main([f"app:{folder / 'config.yaml'}"] + dirs(tmp_path)))
    (copy,) = (tmp_path / "ck").iterdir()
    assert copy.name == folder.name  # the same title
    first, repeat = _records(folder)[0], _records(copy)[0]
    for key in ("train_CELoss", "val_CELoss", "val_top1_accuracy", "edges_changed", "params"):
        assert repeat[key] == first[key], key
    assert "epoch 2/2" in again


def test_evaluate_writes_results_and_never_replaces_them(trained, tmp_path):
    tmp, folder, _ = trained
    args = TINY + dirs(tmp) + ["--resume", str(folder / "best.pt"), "--evaluate"]
    out = _ok(run_main(args + ["--results_file", str(tmp_path / "r.json")]))
    results = json.load(open(tmp_path / "r.json"))
    line = next(ln for ln in out.splitlines() if ln.startswith("eval "))
    assert f"loss {results['loss']:.4f} top-1 {100 * results['top1']:.2f}%" in line
    assert results["backend"] == "full model" and results["images_per_s"] > 0
    assert results["params"] > 0 and results["checkpoint"] == str(folder / "best.pt")
    assert results["checkpoint_config"]["dim"] == 160
    # the same file again: refused; beside the checkpoint by default, numbered, never replaced
    refused = run_main(args + ["--results_file", str(tmp_path / "r.json")])
    assert refused.returncode == 2 and "already exists" in refused.stderr
    _ok(run_main(args + ["--fast_eval"]))
    _ok(run_main(args + ["--fast_eval"]))
    assert {"eval_best_fast_sparse.json", "eval_best_fast_sparse-2.json"} <= set(os.listdir(folder))


def test_report_over_two_seeds(trained, tmp_path, capsys):
    tmp, folder, _ = trained
    _ok(run_main(TINY + dirs(tmp) + ["--seed", "1"]))
    assert report.main([str(tmp / "ck"), "--plot", str(tmp_path / "bars.png")]) == 0
    out = capsys.readouterr().out
    runs = report.collect([str(tmp / "ck")])
    finals = sorted(r.final_top1 for r in runs)
    mean, std = report.mean_std(finals)
    row = next(ln for ln in out.splitlines() if "base=static_dnw_dim=160_feature_dim=32 |" in ln)
    assert "| 2 (0, 1) |" in row and f"{mean:.2f} ± {std:.2f}" in row and std > 0
    assert os.path.getsize(tmp_path / "bars.png") > 5000
    assert report.main([str(tmp / "ck"), "--csv"]) == 0
    assert capsys.readouterr().out.startswith("experiment,seeds,")
    assert report.main([str(tmp_path / "nothing")]) == 2


def test_tensorboard_has_hparams_step_loss_and_images_per_second(trained):
    tmp, folder, _ = trained
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp / "runs" / folder.name))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_step", "train/images_per_s", "val/top1_accuracy"} <= set(tags["scalars"])
    assert len(events.Scalars("train/loss_step")) == 2 * 23
    assert "val/non_zero" in tags["images"]  # the adjacency figure, with axes
    plugins = events.PluginTagToContent("hparams")
    assert plugins  # the HPARAMS tab's session data


def test_export_pt2_round_trips_with_its_metadata(trained, tmp_path):
    tmp, folder, _ = trained
    path = tmp_path / "m.pt2"
    args = TINY + dirs(tmp) + ["--resume", str(folder / "last.pt"), "--evaluate", "--fast_eval"]
    out = _ok(run_main(args + ["--export", str(path)]))
    assert "torch.export" in out and path.exists()
    x = torch.randn(5, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import json, sys, torch\n"
        f"extra = {{'metadata.json': ''}}\n"
        f"m = torch.export.load({str(path)!r}, extra_files=extra).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        "meta = json.loads(extra['metadata.json'])\n"
        "assert meta['input_shape'] == [3, 16, 16] and meta['num_classes'] == 10\n"
        "assert len(meta['classes']) == 10 and meta['normalization']['mean']\n"
        "assert meta['config']['dim'] == 160\n"
        "assert not any(k.split('.')[0] in ('models', 'genutil') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, check=True, timeout=120)
    from genutil import api

    model = api.build_model("apps/quickstart/static_dnw.yml", dim=160, feature_dim=32)
    api.load_checkpoint(model, str(folder / "last.pt"))
    with torch.no_grad():
        want = model.eval()(x)
    assert (torch.load(tmp_path / "y.pt") - want).abs().max().item() <= 1e-5


def test_an_experiments_help_lists_its_resolved_keys():
    out = _ok(run_main([QUICKSTART, "--lr=0.05", "--help"]))
    assert "run title base=static_dnw_lr=0.05" in out
    assert re.search(r"--lr\s+0\.05\s+\(command line\)", out)
    assert re.search(r"--batch_size\s+64\s+\(experiment file\)", out)
    assert re.search(r"--rho\s+0\.5\s+\(default\)", out)
    assert ROOT  # run from the repository's root
