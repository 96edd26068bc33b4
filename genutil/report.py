"""Compare runs: one table over run folders, grouped by experiment with the seed left out.

    python -m genutil.report checkpoints/                   # markdown table on stdout
    python -m genutil.report runA runB --csv                # CSV
    python -m genutil.report checkpoints/ --plot fig/x.png  # bars, a dot per seed

A run folder is one that holds the record a run leaves (``metrics.jsonl``, ``config.yaml``;
genutil.record); the paths given are run folders or folders above them, searched recursively.
Runs whose configs differ only in ``seed`` form one group (and in the keys that do not make a
run: where it ran, how it was launched). Per group: the number of seeds, final and best top-1
as mean ± sample standard deviation, the parameters by the paper's count, and the wall time
(training and validation epochs, summed over the seeds' epochs, mean per seed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import yaml

from genutil.config import NOT_IN_TITLE
from genutil.errors import UserError
from genutil.record import CONFIG, METRICS

__all__ = ["RunSummary", "collect", "group", "mean_std", "markdown", "csv_text", "plot", "main"]


@dataclass
class RunSummary:
    """What one run folder says: its last epoch, its best, its cost."""

    folder: str
    title: str
    experiment: str  # the group: the run's title without its seed
    seed: int
    config: dict
    epochs: int
    final_top1: float  # percent
    best_top1: float
    params: Optional[int]
    wall_s: float
    metrics: list = field(default_factory=list, repr=False)


def _run_folders(paths: Iterable[str]) -> list[str]:
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise UserError(f"{path} is not a folder: give run folders or folders above them")
        for base, dirs, files in os.walk(path):
            dirs.sort()
            if METRICS in files:
                found.append(base)
    return found


def _experiment(title: str, seed: int) -> str:
    parts = [p for p in title.split("_seed=") if p]
    if len(parts) == 2 and parts[1].split("_", 1)[0] == str(seed):
        rest = parts[1].split("_", 1)
        return parts[0] + ("_" + rest[1] if len(rest) > 1 else "")
    return title


def _read(folder: str) -> Optional[RunSummary]:
    with open(os.path.join(folder, METRICS), encoding="utf-8") as fh:
        metrics = [json.loads(line) for line in fh if line.strip()]
    if not metrics:
        return None
    config = {}
    if os.path.exists(os.path.join(folder, CONFIG)):
        with open(os.path.join(folder, CONFIG), encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
    title = config.get("title") or os.path.basename(folder)
    seed = int(config.get("seed", 0))
    last = metrics[-1]
    return RunSummary(
        folder=folder,
        title=title,
        experiment=_experiment(title, seed),
        seed=seed,
        config=config,
        epochs=int(last["epoch"]),
        final_top1=100 * float(last["val_top1_accuracy"]),
        best_top1=100 * float(last["best_top1"]),
        params=last.get("params"),
        wall_s=sum(m.get("train_epoch_time", 0) + m.get("val_epoch_time", 0) for m in metrics),
        metrics=metrics,
    )


def collect(paths: Sequence[str]) -> list[RunSummary]:
    """Every run found under ``paths`` (runs without a finished epoch are left out)."""
    runs = [r for r in (_read(f) for f in _run_folders(paths)) if r is not None]
    if not runs:
        raise UserError(
            f"no run record ({METRICS}) under {', '.join(paths)}: give the folders of runs "
            "trained by this project"
        )
    return runs


def _identity(run: RunSummary) -> tuple:
    keys = {k: v for k, v in run.config.items() if k not in NOT_IN_TITLE + ("seed",)}
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in keys.items()))


def group(runs: Sequence[RunSummary]) -> dict[str, list[RunSummary]]:
    """{experiment: its runs, by seed}: runs whose configs differ only in the seed."""
    by_identity: dict[tuple, list[RunSummary]] = {}
    for run in runs:
        by_identity.setdefault(_identity(run) if run.config else (run.experiment,), []).append(run)
    out: dict[str, list[RunSummary]] = {}
    for members in by_identity.values():
        name = members[0].experiment
        while name in out:
            name += "'"
        out[name] = sorted(members, key=lambda r: r.seed)
    return dict(sorted(out.items()))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if not n:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _rows(groups: dict[str, list[RunSummary]]) -> list[dict]:
    rows = []
    for name, runs in groups.items():
        final, best = mean_std([r.final_top1 for r in runs]), mean_std([r.best_top1 for r in runs])
        params = sorted({r.params for r in runs if r.params is not None})
        rows.append(
            {
                "experiment": name,
                "seeds": len(runs),
                "seed_list": [r.seed for r in runs],
                "epochs": sorted({r.epochs for r in runs}),
                "final_top1_mean": final[0],
                "final_top1_std": final[1],
                "best_top1_mean": best[0],
                "best_top1_std": best[1],
                "final_top1_per_seed": [r.final_top1 for r in runs],
                "params": params[0] if len(params) == 1 else (params or None),
                "wall_s_mean": mean_std([r.wall_s for r in runs])[0],
            }
        )
    return rows


def _wall(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def markdown(groups: dict[str, list[RunSummary]]) -> str:
    """The table in markdown."""
    lines = [
        "| experiment | seeds | epochs | final top-1 (%) | best top-1 (%) | params (paper's "
        "count) | wall time per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in _rows(groups):
        params = row["params"]
        params = f"{params:,}" if isinstance(params, int) else (str(params) if params else "—")
        lines.append(
            f"| {row['experiment']} | {row['seeds']} ({', '.join(map(str, row['seed_list']))}) "
            f"| {', '.join(map(str, row['epochs']))} "
            f"| {row['final_top1_mean']:.2f} ± {row['final_top1_std']:.2f} "
            f"| {row['best_top1_mean']:.2f} ± {row['best_top1_std']:.2f} | {params} "
            f"| {_wall(row['wall_s_mean'])} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(groups: dict[str, list[RunSummary]]) -> str:
    """The table as CSV (one row per group; per-seed values joined by ';')."""
    out = io.StringIO()
    rows = _rows(groups)
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
        )
    return out.getvalue()


def plot(groups: dict[str, list[RunSummary]], path: str, title: str = "") -> str:
    """Bars of mean final top-1 per group (± std), each seed a dot; returns ``path``."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (lazy: only the chart needs it)

    rows = _rows(groups)
    fig = Figure(figsize=(max(5.0, 1.2 * len(rows) + 2), 4.4), layout="constrained")
    ax = fig.add_subplot()
    tops = [v for row in rows for v in row["final_top1_per_seed"]]
    floor = max(0.0, 5 * (min(tops) // 5) - 5)
    for i, row in enumerate(rows):
        mean, std = row["final_top1_mean"], row["final_top1_std"]
        ax.bar(i, mean - floor, 0.6, bottom=floor, color="tab:blue", yerr=std, capsize=3)
        values = row["final_top1_per_seed"]
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.text(i, mean + std + 0.3, f"{mean:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["experiment"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(floor, min(100.0, max(tops) + 4))
    ax.set_ylabel("final top-1 (%)")
    ax.set_title(
        title or f"final top-1, mean over seeds (dots: each seed; y axis from {floor:.0f}%)",
        fontsize=9,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; a bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m genutil.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run folders, or folders above them")
    parser.add_argument("--csv", action="store_true", help="CSV instead of markdown")
    parser.add_argument("--plot", default="", help="also draw the grouped bars to this file")
    args = parser.parse_args(argv)
    try:
        groups = group(collect(args.paths))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(csv_text(groups) if args.csv else markdown(groups), end="")
    if args.plot:
        print(f"chart: {plot(groups, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
