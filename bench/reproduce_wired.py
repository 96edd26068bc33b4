"""DNW against a random wiring on a torchvision network: MobileNetV2 (width 0.5) on Fashion-MNIST.

    python bench/reproduce_wired.py               # the CPU protocol (make reproduce-wired)
    python bench/reproduce_wired.py --protocol gpu

The network is torchvision's ``mobilenet_v2(num_classes=10, width_mult=0.5)``, its 34 pointwise
(1x1) convolutions wired by ``models/wired.py`` (``wire: True``) at prune rate 0.8, from
``apps/torchvision/mobilenet_v2_fashion_mnist_{dnw,random_graph}.yml``; the same network
unwired (every edge: ``..._dense.yml``, ``wire: False``) is the reference row. The CPU
protocol, fixed:

- a 10,000-image random subset of the training set drawn with the run's seed; the full
  10,000-image test set after every epoch; 12 epochs; seeds 0 and 1;
- batch 128, the experiment file's SGD (lr 0.05, momentum 0.9, weight decay 4e-5), cosine
  learning rate per iteration, no warm-up; horizontal flip only; 28x28 padded to 32x32, grey
  repeated to 3 channels (data/fashion_mnist.py).

The ``gpu`` protocol: all 60,000 training images, 30 epochs. Every run goes through
``genutil.run.run`` as ``python main.py app:<file> --model_kwargs "{num_classes: 10,
width_mult: 0.5}" --num_epochs 12 --seed S --train_subset 10000 ...`` would; a finished run
leaves ``<work>/results/<title>.json`` and is skipped by the next invocation, an interrupted one
continues from its ``last.pt``. Writes ``<out>/results_wired_mobilenet_v2_fashion_mnist[_gpu]
.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

# OpenMP threads that wait by sleeping, not spinning (set before torch starts its thread pool):
# on a 2-core machine shared with another process, spinning threads made a training step of
# this network 40x slower (0.16 s alone, 7 s beside one other 2-thread process; 0.27 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.reproduce import _device, _duration, train_recorded, write_result  # noqa: E402
from genutil.errors import UserError  # noqa: E402

__all__ = ["ROWS", "PROTOCOLS", "WiredProtocol", "run_one", "write_markdown", "write_chart", "main"]

APP_DIR = os.path.join(ROOT, "apps", "torchvision")
# (label, experiment file stem, overrides beyond the protocol's)
ROWS = (
    ("random", "mobilenet_v2_fashion_mnist_random_graph", {}),
    ("DNW", "mobilenet_v2_fashion_mnist_dnw", {}),
    ("dense (every edge)", "mobilenet_v2_fashion_mnist_dense", {}),
)
MODEL_KWARGS = {"num_classes": 10, "width_mult": 0.5}
PRUNE_RATE = 0.8  # the experiment files' (both wirings)


@dataclass(frozen=True)
class WiredProtocol:
    """What every run of the table shares."""

    name: str
    train_subset: int  # 0: all 60,000
    epochs: int
    seeds: tuple = (0, 1)
    batch_size: int = 128
    test_batch_size: int = 512
    workers: int = 0
    changes: str = ""  # how the command line changed the named protocol


PROTOCOLS = {
    "cpu": WiredProtocol("cpu", 10000, 12),
    "gpu": WiredProtocol("gpu", 0, 30, workers=4),
}


def run_one(label: str, stem: str, extra: dict, seed: int, protocol: WiredProtocol, args):
    """Train (or skip, if finished) one row at one seed; its result, None if interrupted."""
    from genutil.config import run_title  # noqa: PLC0415  (heavy imports once args are valid)

    app = os.path.join(APP_DIR, stem + ".yml")
    overrides = dict(
        num_epochs=protocol.epochs,
        seed=seed,
        train_subset=protocol.train_subset,
        batch_size=protocol.batch_size,
        test_batch_size=protocol.test_batch_size,
        workers=protocol.workers,
        **extra,
    )
    title = run_title(app, overrides) + "_width_mult=0.5"  # model_kwargs, said shortly
    overrides["model_kwargs"] = MODEL_KWARGS
    result = train_recorded(app, overrides, title, f"{label} seed {seed}", protocol.epochs, args)
    if result is None or "label" in result:  # stopped, or finished by an earlier invocation
        return result
    result = dict(
        label=label,
        seed=seed,
        title=title,
        epochs=protocol.epochs,
        train_subset=protocol.train_subset,
        **result,
    )
    return write_result(os.path.join(args.work, "results", title + ".json"), result)


def _mean_std(values: list) -> tuple[float, float]:
    from genutil.report import mean_std  # noqa: PLC0415

    return mean_std(values)


def _edges_changed(result: dict) -> list[int]:
    """Edges changed per epoch of a finished run, from its record (``metrics.jsonl``)."""
    path = os.path.join(result.get("checkpoints", ""), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [int(r.get("edges_changed", 0)) for r in rows]


def results_kept(runs: dict) -> int:
    """Edges the wired rows keep: ``n - int(p * n)`` of each pointwise weight."""
    import torchvision  # noqa: PLC0415

    from models.wired import wirable_layers  # noqa: PLC0415

    net = torchvision.models.mobilenet_v2(**MODEL_KWARGS)
    sizes = [conv.weight.numel() for _, conv in wirable_layers(net)]
    return sum(n - int(PRUNE_RATE * n) for n in sizes)


def write_markdown(path: str, protocol: WiredProtocol, runs: dict, total_s: float) -> str:
    """The table with its caption; ``runs``: label -> results."""
    subset = f"{protocol.train_subset:,}" if protocol.train_subset else "60,000 (all)"
    seeds = " | ".join(f"top-1 seed {s}" for s in protocol.seeds)
    head = f"| wiring | {seeds} | mean ± std | params (kept edges + others) | wall time |"
    lines = [
        "# DNW vs a random wiring on torchvision's MobileNetV2 (width 0.5), Fashion-MNIST "
        f"({protocol.name} protocol)",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for label, _, _ in ROWS:
        results = runs.get(label, [])
        by_seed = {r["seed"]: r for r in results}
        tops = " | ".join(
            f"{by_seed[s]['top1']:.2f}" if s in by_seed else "—" for s in protocol.seeds
        )
        mean, std = _mean_std([r["top1"] for r in results]) if results else (float("nan"),) * 2
        params = results[0]["params"] if results else 0
        wall = _duration(sum(r["wall_s"] for r in results))
        lines.append(f"| {label} | {tops} | {mean:.2f} ± {std:.2f} | {params:,} | {wall} |")
    dnw, rand = runs.get("DNW"), runs.get("random")
    verdict = ""
    if dnw and rand:
        (md, sd), (mr, sr) = (
            _mean_std([r["top1"] for r in dnw]),
            _mean_std([r["top1"] for r in rand]),
        )
        gap, spread = md - mr, max(sd, sr)
        if gap <= 0:
            how = "reversed: the random wiring did as well or better"
        elif gap <= 2 * spread:
            how = "within twice the seed-to-seed spread: not a clear difference"
        else:
            how = "DNW ahead by more than twice the seed-to-seed spread"
        verdict = f"DNW - random = {gap:+.2f} points of top-1 ({how}), measured and not tuned."
    churn = [_edges_changed(r) for r in runs.get("DNW", [])]
    churn = [c for c in churn if c]
    if churn:
        first = sum(c[0] for c in churn) / len(churn)
        last = sum(c[-1] for c in churn) / len(churn)
        verdict += (
            f" DNW's wiring changed {first:,.0f} edges in the first epoch and {last:,.0f} in the "
            f"last (mean over seeds; {results_kept(runs):,} edges kept), so it had settled: the "
            "gap is not a wiring still moving when training stopped."
        )
    busy = [r for rs in runs.values() for r in rs if r.get("load_avg_15min", 0) > r["cpu_count"]]
    if busy:
        loads = [r["load_avg_15min"] for r in busy]
        verdict += (
            f" The machine was shared while the table was made (15-minute load average "
            f"{min(loads):.1f} to {max(loads):.1f} on {busy[0]['cpu_count']} cores at the ends of "
            "runs): the wall times are longer than on an idle machine."
        )
    lines += [
        "",
        f"Top-1 (%) on the full 10,000-image Fashion-MNIST test set after epoch "
        f"{protocol.epochs}, per seed, and mean ± sample standard deviation. torchvision's "
        "`mobilenet_v2(num_classes=10, width_mult=0.5)`; DNW and random: its 34 pointwise "
        "convolutions wired at prune rate 0.8 (each keeps `n - int(0.8 n)` edges), the same "
        "edge budget for both; dense: every edge. Training: "
        f"{subset} training images drawn with the run's seed, batch {protocol.batch_size}, SGD "
        "lr 0.05, momentum 0.9, weight decay 4e-5, cosine per iteration, horizontal flip, 28x28 "
        "padded to 32x32 and repeated to 3 channels. Params: kept edges plus every other "
        "parameter (the run record's count). Wall time: both seeds, training and evaluation.",
        "",
        verdict,
        "",
        (
            f"Changed from the {protocol.name} protocol: {protocol.changes}. "
            if protocol.changes
            else ""
        )
        + f"Produced by `python bench/reproduce_wired.py --protocol {protocol.name}` on "
        f"{_device()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; the whole table "
        f"took {_duration(total_s)}. Chart: {os.path.basename(path)[:-3]}.png.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(line for line in lines) + "\n")
    return path


def write_chart(path: str, protocol: WiredProtocol, runs: dict) -> str:
    """Bars of mean top-1 per wiring, seeds as dots, ± std."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    tops = [r["top1"] for results in runs.values() for r in results]
    floor = max(0.0, 5 * (min(tops, default=50.0) // 5) - 5)
    colours = {"random": "tab:grey", "DNW": "tab:blue"}
    for i, (label, _, _) in enumerate(ROWS):
        values = [r["top1"] for r in runs.get(label, [])]
        if not values:
            continue
        mean, std = _mean_std(values)
        ax.bar(i, mean - floor, 0.6, bottom=floor, yerr=std, capsize=3,
               color=colours.get(label, "tab:green"))  # fmt: skip
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.text(i, mean + std + 0.2, f"{mean:.2f}", ha="center", fontsize=9)
    ax.set_xticks(range(len(ROWS)), [label for label, _, _ in ROWS])
    ax.set_ylim(floor, min(100.0, max(tops, default=95.0) + 3))
    ax.set_ylabel("top-1 on the 10k test set (%)")
    subset = f"{protocol.train_subset:,}" if protocol.train_subset else "all 60,000"
    ax.set_title(
        f"MobileNetV2 x0.5, 1x1 convs wired at prune rate 0.8, Fashion-MNIST\n{subset} train "
        f"images, {protocol.epochs} epochs, seeds {list(protocol.seeds)} (dots)",
        fontsize=9,
    )
    fig.savefig(path, dpi=130)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; a bad input is one line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--data-dir", dest="data_dir", default="./datasets")
    parser.add_argument("--work", default=os.path.join("runs", "reproduce_wired"))
    parser.add_argument("--out", default="fig")
    parser.add_argument("--epochs", type=int, help="epochs (default: the protocol's)")
    parser.add_argument("--subset", type=int, help="training images (0: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1)")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    changed = {
        "epochs": args.epochs,
        "train_subset": args.subset,
        "seeds": tuple(args.seeds) if args.seeds else None,
    }
    changed = {k: v for k, v in changed.items() if v is not None and v != getattr(protocol, k)}
    if changed:
        said = ", ".join(f"{k} {v}" for k, v in changed.items())
        protocol = dataclasses.replace(protocol, changes=said, **changed)
    try:
        from data.fashion_mnist import find_fashion_mnist  # noqa: PLC0415
        from genutil.log import setup_logging  # noqa: PLC0415

        find_fashion_mnist(args.data_dir, download=False)
        setup_logging()
        runs: dict = {}
        for seed in protocol.seeds:
            for label, stem, extra in ROWS:
                result = run_one(label, stem, extra, seed, protocol, args)
                if result is None:
                    print("stopped: run the same command again to continue", file=sys.stderr)
                    return 130
                runs.setdefault(label, []).append(result)
        os.makedirs(args.out, exist_ok=True)
        name = "results_wired_mobilenet_v2_fashion_mnist" + (
            "" if protocol.name == "cpu" else f"_{protocol.name}"
        )
        total = sum(r["wall_s"] for results in runs.values() for r in results)
        written = [
            write_markdown(os.path.join(args.out, name + ".md"), protocol, runs, total),
            write_chart(os.path.join(args.out, name + ".png"), protocol, runs),
        ]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(["wrote:"] + written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
