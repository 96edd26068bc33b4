"""DNW against a random wiring on real Fashion-MNIST, by the fixed protocol of issue 8.

    python bench/reproduce.py                   # the CPU protocol (make reproduce-cpu)
    python bench/reproduce.py --protocol gpu    # the full one: 60,000 images, 30 epochs, 6 rows

The CPU protocol, the same for every implementation held against it:

- train on a 20,000-image random subset of the training set, drawn with the run's seed
  (data/fashion_mnist.py); evaluate on the full 10,000-image test set after every epoch;
- batch 128; the experiment file's SGD (lr 0.1, momentum 0.9, weight decay 1e-4, ``nestorov``);
  cosine learning rate per iteration over the whole run, no warm-up;
- random horizontal flip only; 28x28 padded to 32x32 with the background value 0; grey repeated
  to 3 channels; mean 0.2860, std 0.3530 (what data/fashion_mnist.py does for every run);
- static rows 5 epochs, discrete-time rows 3 epochs, seeds 0 and 1; continuous-time rows only
  on a GPU (the ODE solver is too slow on 2 cores; the table says so).

Every run goes through ``genutil.run.run``, exactly as ``python main.py
app:apps/fashion_mnist/<row>.yml --num_epochs N --seed S --train_subset 20000 --lr_scheduler
cosine --batch_size 128 --test_batch_size 512 --workers 0`` would. A finished run leaves
``<work>/results/<title>.json`` and is skipped by the next invocation; an interrupted one
continues from its ``last.pt``. Writes ``<out>/results_fashion_mnist[_<protocol>].md`` and
``.png``, and the wiring figures of the first seed of each DNW row (genutil.plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from genutil.errors import UserError  # noqa: E402

__all__ = [
    "ROWS",
    "PROTOCOLS",
    "Protocol",
    "run_row",
    "train_recorded",
    "write_result",
    "write_markdown",
    "write_chart",
    "main",
]

SETTINGS = ("static", "discrete_time", "continuous")
SETTING_NAMES = {
    "static": "static",
    "discrete_time": "discrete time",
    "continuous": "continuous time",
}
# (setting, yml stem under apps/fashion_mnist, wiring, the authors' CIFAR-10 top-1, Table 1)
ROWS = (
    ("static", "static_random_graph", "random", 76.1),
    ("static", "static_dnw", "DNW", 80.9),
    ("discrete_time", "discrete_time_random_graph", "random", 77.3),
    ("discrete_time", "discrete_time_dnw", "DNW", 82.3),
    ("continuous", "continuous_time_random_graph", "random", 78.5),
    ("continuous", "continuous_time_dnw", "DNW", 83.1),
)
APP_DIR = os.path.join(ROOT, "apps", "fashion_mnist")


@dataclass(frozen=True)
class Protocol:
    """What every run of one table shares."""

    name: str
    train_subset: int  # 0: all 60,000 images
    epochs: dict  # setting -> epochs
    settings: tuple  # settings that run; the others are listed as not run
    seeds: tuple = (0, 1)
    batch_size: int = 128
    test_batch_size: int = 512
    workers: int = 0
    changes: tuple = field(default=())  # how this differs from the named protocol


PROTOCOLS = {
    "cpu": Protocol("cpu", 20000, {"static": 5, "discrete_time": 3}, ("static", "discrete_time")),
    "gpu": Protocol("gpu", 0, {s: 30 for s in SETTINGS}, SETTINGS, workers=4),
}
_SKIPPED_ON_CPU = "not run: the ODE solver is too slow on 2 CPU cores (`--protocol gpu` runs it)"


def _protocol(args: argparse.Namespace) -> Protocol:
    """The named protocol with the command line's changes, which the table reports."""
    base = PROTOCOLS[args.protocol]
    settings = tuple(args.settings or base.settings)
    epochs = {s: args.epochs or base.epochs.get(s, 30) for s in settings}
    subset = base.train_subset if args.subset is None else args.subset
    seeds = tuple(args.seeds or base.seeds)
    epochs_text = ", ".join(f"{SETTING_NAMES[s]} {e}" for s, e in epochs.items())
    checks = [
        (f"settings {', '.join(settings)}", settings != base.settings),
        (f"epochs {epochs_text}", any(base.epochs.get(s) != e for s, e in epochs.items())),
        (f"train images {subset or 'all'}", subset != base.train_subset),
        (f"seeds {list(seeds)}", seeds != base.seeds),
    ]
    changes = [what for what, changed in checks if changed]
    return Protocol(
        base.name,
        subset,
        epochs,
        settings,
        seeds,
        workers=base.workers if args.workers is None else args.workers,
        changes=tuple(changes),
    )


def _device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def run_row(stem: str, setting: str, seed: int, protocol: Protocol, args) -> Optional[dict]:
    """Train (or skip, if finished) one row at one seed; its result, None if interrupted."""
    from genutil.config import run_title  # noqa: PLC0415  (heavy imports once args are valid)

    app = os.path.join(APP_DIR, stem + ".yml")
    epochs = protocol.epochs[setting]
    overrides = dict(
        num_epochs=epochs,
        seed=seed,
        train_subset=protocol.train_subset,
        lr_scheduler="cosine",
        batch_size=protocol.batch_size,
        test_batch_size=protocol.test_batch_size,
        workers=protocol.workers,
    )
    title = run_title(app, overrides)
    result = train_recorded(app, overrides, title, f"{stem} seed {seed}", epochs, args)
    if result is None or "stem" in result:  # stopped, or finished by an earlier invocation
        return result
    result = dict(
        stem=stem,
        setting=setting,
        seed=seed,
        title=title,
        epochs=epochs,
        train_subset=protocol.train_subset,
        **result,
    )
    result["stored_params"] = result.pop("dense_params")
    return write_result(os.path.join(args.work, "results", title + ".json"), result)


def train_recorded(
    app: str, overrides: dict, title: str, tag: str, epochs: int, args
) -> Optional[dict]:
    """Train the run ``title`` of experiment file ``app`` with ``overrides`` through
    ``genutil.run.run`` (resumed from its ``last.pt`` if an earlier invocation was stopped),
    its checkpoints and record under ``args.work``; its figures from the run record, or None
    if it stopped before ``epochs``. A run whose result file exists is not trained again: that
    result is returned as stored."""
    from genutil import api, process, report  # noqa: PLC0415
    from genutil.checkpoint import read_checkpoint  # noqa: PLC0415
    from genutil.config import load_config  # noqa: PLC0415
    from genutil.run import run  # noqa: PLC0415

    result_path = os.path.join(args.work, "results", title + ".json")
    if os.path.exists(result_path):
        print(f"[{tag}] finished earlier: {result_path}")
        with open(result_path) as f:
            return json.load(f)
    cfg = load_config(
        app,
        {
            **overrides,
            "data_dir": args.data_dir,
            "resume": "auto",
            "save_dir": os.path.join(args.work, "checkpoints"),
            "log_dir": os.path.join(args.work, "tensorboard"),
            "progress": False,
        },
    )
    last = os.path.join(cfg.save_dir, title, "last.pt")
    resumed = os.path.exists(last)
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)
    with open(os.path.join(args.work, "logs", title + ".log"), "a") as log_file:

        def write(line: str) -> None:
            print(f"[{tag}] {line}", flush=True)
            log_file.write(line + "\n")

        start = time.perf_counter()
        write(process.configure(cfg))  # this script is an entry point, as main.py
        try:
            run(cfg, title, write=write)
        finally:  # a stopped run's time counts too: the rerun adds its own
            wall = _add_time(
                os.path.join(args.work, "logs", title + ".seconds"), time.perf_counter() - start
            )
    ckpt = read_checkpoint(last)
    if int(ckpt.get("epoch", -1)) != epochs or ckpt.get("batch", 0):
        return None  # stopped by a signal: the next invocation continues it
    (summary,) = report.collect([os.path.dirname(last)])  # the run's own record
    return dict(
        top1=summary.final_top1,
        params=summary.params,
        dense_params=sum(p.numel() for p in api.model_from_config(cfg).parameters()),
        device=_device(),
        wall_s=wall,
        load_avg_15min=os.getloadavg()[2],  # other processes on the machine inflate wall_s
        cpu_count=os.cpu_count(),
        resumed=resumed,
        torch=torch.__version__,
        checkpoints=os.path.dirname(last),
        finished=time.strftime("%Y-%m-%d %H:%M"),
    )


def write_result(path: str, result: dict) -> dict:
    """``result`` as JSON at ``path``, whole or not at all (a kill never leaves half a result
    that a rerun would trust); returns it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def _add_time(path: str, seconds: float) -> float:
    """Add ``seconds`` to the running total kept in ``path``; the new total."""
    total = seconds
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        with open(path) as f:
            total += float(f.read().strip() or 0)
    with open(path + ".tmp", "w") as f:
        f.write(f"{total:.3f}\n")
    os.replace(path + ".tmp", path)
    return total


def _why_not_run(setting: str, protocol: Protocol) -> str:
    if setting == "continuous" and protocol.name == "cpu":
        return _SKIPPED_ON_CPU
    return "not run (left out with --settings)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def _mean_std(values: list) -> tuple[float, float]:
    from genutil.report import mean_std  # noqa: PLC0415  (the one aggregation: genutil.report)

    return mean_std(values)


def _gap_sentence(setting: str, runs: dict) -> str:
    rand, dnw = runs.get((setting, "random")), runs.get((setting, "DNW"))
    if not rand or not dnw:
        return ""
    (mr, sr), (md, sd) = _mean_std([r["top1"] for r in rand]), _mean_std([r["top1"] for r in dnw])
    paper = {w: top1 for s, _, w, top1 in ROWS if s == setting}
    paper = paper["DNW"] - paper["random"]
    gap, spread = md - mr, max(sr, sd)
    if gap <= 0:
        verdict = "reversed: the random wiring did as well or better at this budget"
    elif gap <= 2 * spread:
        verdict = "within twice the seed-to-seed spread: not a clear difference at this budget"
    else:
        verdict = "DNW ahead by more than twice the seed-to-seed spread"
    return (
        f"{SETTING_NAMES[setting]}: DNW - random = {gap:+.2f} points ({verdict}; "
        f"paper on CIFAR-10: {paper:+.1f})"
    )


def write_markdown(path: str, protocol: Protocol, runs: dict, total_s: float) -> str:
    """The results table with its caption; ``runs``: (setting, wiring) -> list of results."""
    subset = f"{protocol.train_subset:,}" if protocol.train_subset else "60,000 (all)"
    head = (
        "| setting | wiring | "
        + " | ".join(f"top-1 seed {s}" for s in protocol.seeds)
        + " | mean ± std | params (paper's count) | epochs | train images | device | "
        "wall time | paper, CIFAR-10 |"
    )
    lines = [
        f"# DNW vs a random wiring on Fashion-MNIST ({protocol.name} protocol of issue 8)",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for setting, stem, wiring, paper in ROWS:
        name = SETTING_NAMES[setting]
        results = runs.get((setting, wiring), [])
        if setting not in protocol.settings:
            lines.append(
                f"| {name} | {wiring} | {_why_not_run(setting, protocol)} |"
                + " |" * (len(protocol.seeds) + 5)
                + f" {paper} |"
            )
            continue
        by_seed = {r["seed"]: r for r in results}
        tops = " | ".join(
            f"{by_seed[s]['top1']:.2f}" if s in by_seed else "—" for s in protocol.seeds
        )
        mean, std = _mean_std([r["top1"] for r in results]) if results else (float("nan"),) * 2
        first = results[0] if results else {}
        wall = _duration(sum(r["wall_s"] for r in results))
        mark = "†" if any(r["resumed"] for r in results) else ""
        lines.append(
            f"| {name} | {wiring} | {tops} | {mean:.2f} ± {std:.2f} | "
            f"{first.get('params', 0):,} | {protocol.epochs[setting]} | {subset} | "
            f"{first.get('device', '—')} | {wall}{mark} | {paper} |"
        )
    gaps = [g for g in (_gap_sentence(s, runs) for s in SETTINGS) if g]
    changed = (
        f" Changed from the named protocol: {', '.join(protocol.changes)}."
        if (protocol.changes)
        else ""
    )
    lines += [
        "",
        f"Top-1 accuracy (%) on the full 10,000-image Fashion-MNIST test set after the "
        f"last epoch, per seed, and mean ± sample standard deviation over seeds. Training: "
        f"{subset} training images drawn at random with the run's seed, batch 128, the "
        "experiment file's SGD (lr 0.1, momentum 0.9, weight decay 1e-4), cosine learning "
        "rate per iteration, no warm-up, horizontal flip only, 28x28 padded to 32x32, grey "
        "repeated to 3 channels, mean 0.2860 std 0.3530; same models as the paper's "
        f"CIFAR-10 tiny classifiers (800 nodes, 95% of edges removed).{changed} Params: "
        "the paper's count (genutil.report, from the run's record): kept-edge budget plus 9 per "
        "node with an out-edge, plus the stem and classifier weights. Wall time: both seeds, "
        "training and evaluation"
        + (" († resumed: the time of every part, added up)" if "†" in "".join(lines) else "")
        + ". The paper column is the authors' CIFAR-10 result after 160 "
        "epochs: another dataset and budget, to compare the direction of the gap only.",
        "",
        "DNW against random, measured here and not tuned:",
        "",
    ]
    lines += [f"- {g}" for g in gaps] or ["- no setting has both rows finished"]
    busy = [
        r
        for rs in runs.values()
        for r in rs
        if r.get("load_avg_15min", 0) > r.get("cpu_count", os.cpu_count() or 1)
    ]
    if busy:
        loads = [r["load_avg_15min"] for r in busy]
        lines += [
            "",
            f"The machine was shared while this table was made: its 15-minute load "
            f"average was {min(loads):.1f} to {max(loads):.1f} on {busy[0]['cpu_count']} "
            "cores at the ends of the runs, so the wall times are longer than on an idle "
            "machine.",
        ]
    lines += [
        "",
        "At this short budget the gap may be small or reversed: the wiring is still "
        "changing when training stops (the discrete-time wiring needs time to settle).",
        "",
        f"Produced by `python bench/reproduce.py --protocol {protocol.name}`"
        + (" (`make reproduce-cpu`)" if protocol.name == "cpu" and not protocol.changes else "")
        + f" on {_device()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; wall time of the whole table "
        f"{_duration(total_s)}. Chart: {os.path.basename(path)[:-3]}.png.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_chart(path: str, protocol: Protocol, runs: dict) -> str:
    """Bars of mean top-1 (seeds as dots, ± std) and the DNW - random gap per setting."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (lazy: only the chart needs it)

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.6, 1])
    tops = [r["top1"] for results in runs.values() for r in results]
    floor = max(0.0, 5 * (min(tops, default=50.0) // 5) - 5)
    for i, setting in enumerate(SETTINGS):
        if setting not in protocol.settings:
            why = (
                "ODE too slow on CPU"
                if setting == "continuous" and protocol.name == "cpu"
                else "left out (--settings)"
            )
            left.text(
                i, floor + 2, f"not run:\n{why}", ha="center", va="bottom", fontsize=8, color="grey"
            )
        for j, (wiring, colour) in enumerate((("random", "tab:grey"), ("DNW", "tab:blue"))):
            values = [r["top1"] for r in runs.get((setting, wiring), [])]
            if not values:
                continue
            x = i + (j - 0.5) * 0.38
            mean, std = _mean_std(values)
            left.bar(
                x,
                mean - floor,
                0.36,
                bottom=floor,
                color=colour,
                yerr=std,
                capsize=3,
                label=wiring if i == 0 else None,
            )
            left.scatter([x] * len(values), values, color="black", s=10, zorder=3)
            left.text(x, mean + std + 0.3, f"{mean:.2f}", ha="center", fontsize=8)
    left.set_xticks(range(len(SETTINGS)), [SETTING_NAMES[s] for s in SETTINGS])
    left.set_xlim(-0.6, len(SETTINGS) - 0.4)
    left.set_ylim(floor, min(100.0, max(tops, default=95.0) + 4))
    left.set_ylabel("top-1 on the 10k test set (%)")
    left.set_title(
        f"mean over seeds {list(protocol.seeds)} (dots: each seed; y axis starts at {floor:.0f}%)",
        fontsize=9,
    )
    left.legend(loc="upper right", fontsize=8, ncols=2)
    for i, setting in enumerate(SETTINGS):
        paper = {w: top1 for s, _, w, top1 in ROWS if s == setting}
        right.scatter(
            i,
            paper["DNW"] - paper["random"],
            marker="D",
            facecolors="none",
            edgecolors="black",
            label="paper, CIFAR-10" if i == 0 else None,
            zorder=3,
        )
        rand, dnw = runs.get((setting, "random")), runs.get((setting, "DNW"))
        if rand and dnw:
            gap = _mean_std([r["top1"] for r in dnw])[0] - _mean_std([r["top1"] for r in rand])[0]
            right.bar(
                i,
                gap,
                0.5,
                color="tab:blue" if gap > 0 else "tab:red",
                label="measured here" if i == 0 else None,
            )
            right.text(
                i, gap, f"{gap:+.2f}", ha="center", va="bottom" if gap > 0 else "top", fontsize=8
            )
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(range(len(SETTINGS)), [SETTING_NAMES[s] for s in SETTINGS])
    right.set_ylabel("DNW - random (points of top-1)")
    right.set_title("the gap the paper claims, here and on CIFAR-10", fontsize=9)
    right.legend(fontsize=8)
    epochs = ", ".join(f"{SETTING_NAMES[s]} {e}" for s, e in protocol.epochs.items())
    subset = f"{protocol.train_subset:,}" if protocol.train_subset else "all 60,000"
    fig.suptitle(
        f"DNW vs random wiring on Fashion-MNIST ({protocol.name} protocol): top-1 after "
        f"the last epoch; {subset} training images; epochs: {epochs}",
        fontsize=10,
    )
    fig.savefig(path, dpi=130)
    return path


def _wiring_figures(runs: dict, out: str, suffix: str) -> list[str]:
    from genutil.plot import plot_checkpoints  # noqa: PLC0415

    written = []
    for setting, stem, wiring, _ in ROWS:
        results = sorted(runs.get((setting, wiring), []), key=lambda r: r["seed"])
        if wiring == "DNW" and results and setting != "continuous":
            prefix = os.path.join(out, f"wiring_fashion_mnist{suffix}_{stem}")
            written += plot_checkpoints([results[0]["checkpoints"]], prefix)
    return written


def _run_parallel(protocol: Protocol, args, argv: list) -> list:
    """Every run of the table in its own process, ``args.jobs`` at a time (a finished run's
    process only reads its result); the runs that did not finish (their ``STEM:SEED``)."""
    import subprocess  # noqa: PLC0415
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    todo = [
        f"{stem}:{seed}"
        for seed in protocol.seeds
        for setting, stem, _, _ in ROWS
        if setting in protocol.settings
    ]
    base = [sys.executable, os.path.abspath(__file__), *argv]

    def one(run: str) -> bool:
        return subprocess.run([*base, "--run", run]).returncode == 0

    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, todo))
    return [run for run, ok in zip(todo, done) if not ok]


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; a bad input (missing data, bad option) is one line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--epochs", type=int, help="epochs of every row (default: protocol's)")
    parser.add_argument("--subset", type=int, help="training images (0: all 60,000)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, help="settings to run")
    parser.add_argument("--workers", type=int, help="data-loading processes")
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        default="./datasets",
        help="datasets root (Fashion-MNIST: <root>/fashion-mnist or "
        "/usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--work",
        default=os.path.join("runs", "reproduce"),
        help="checkpoints, TensorBoard logs and per-run results JSON",
    )
    parser.add_argument("--out", default="fig", help="folder of the table, chart and figures")
    parser.add_argument(
        "--no-wiring",
        dest="wiring",
        action="store_false",
        help="skip the wiring figures of the DNW rows",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process (several tiny models share one GPU well)",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)  # STEM:SEED, one run (used by --jobs)
    args = parser.parse_args(argv)
    protocol = _protocol(args)
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        from data.fashion_mnist import find_fashion_mnist  # noqa: PLC0415
        from genutil.log import setup_logging  # noqa: PLC0415

        find_fashion_mnist(args.data_dir, download=False)  # one clear line before any training
        setup_logging()
        if args.run:  # one run of a --jobs invocation
            stem, seed = args.run.rsplit(":", 1)
            setting = next(s for s, st, _, _ in ROWS if st == stem)
            return 0 if run_row(stem, setting, int(seed), protocol, args) else 130
        if args.jobs > 1:
            start = time.perf_counter()
            failed = _run_parallel(protocol, args, argv if argv is not None else sys.argv[1:])
            elapsed = _add_time(
                os.path.join(args.work, "logs", f"table_{protocol.name}.seconds"),
                time.perf_counter() - start,
            )
            if failed:
                print(
                    f"stopped or failed: {', '.join(failed)}; run the same command again to "
                    "continue",
                    file=sys.stderr,
                )
                return 130
        runs: dict = {}
        for seed in protocol.seeds:  # seed-major: an early stop still leaves whole comparisons
            for setting, stem, wiring, _ in ROWS:
                if setting in protocol.settings:
                    result = run_row(stem, setting, seed, protocol, args)
                    if result is None:
                        print("stopped: run the same command again to continue", file=sys.stderr)
                        return 130
                    runs.setdefault((setting, wiring), []).append(result)
        os.makedirs(args.out, exist_ok=True)
        name = "results_fashion_mnist" + ("" if protocol.name == "cpu" else f"_{protocol.name}")
        total = sum(r["wall_s"] for results in runs.values() for r in results)
        if args.jobs > 1:  # runs overlapped: the table's wall time is the elapsed time
            total = elapsed
            protocol = dataclasses.replace(
                protocol, changes=protocol.changes + (f"{args.jobs} runs at a time",)
            )
        written = [
            write_markdown(os.path.join(args.out, name + ".md"), protocol, runs, total),
            write_chart(os.path.join(args.out, name + ".png"), protocol, runs),
        ]
        if args.wiring:
            suffix = "" if protocol.name == "cpu" else f"_{protocol.name}"
            written += _wiring_figures(runs, args.out, suffix)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(["wrote:"] + written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
