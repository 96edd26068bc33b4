"""Wiring figures from checkpoints: adjacency, layered DAG, degree histograms, edge churn.

    python -m genutil.plot <ckpt> [<ckpt> ...] --out fig/run    (fig/run_adjacency.png, ...)
    python -m genutil.plot <run folder> --out fig/run/           (fig/run/adjacency.png, ...)

One checkpoint gives, for every graph layer, (a) its adjacency (kept edges) as an image, (b) for
a static DAG a layered node-link drawing with the edge weight as colour, and (c) in- and
out-degree histograms. Several checkpoints, or a run's folder, also give (d) the edges changed
between consecutive checkpoints and an animated GIF of the adjacency over training.

The model comes from the checkpoint's ``config`` (our files), ``--app <yml>``, or, for the
original's files, the state dict's shapes. A kept edge is a non-zero entry of the effective
weight ``get_weight()``, so every edge type (top-k, random mask, fine-tune mask) is drawn alike.
Figures use matplotlib's Figure API (Agg canvas, no GUI); matplotlib is imported only here.
What is drawn is read by ``genutil.wiring`` (masks, DAG layers, edge changes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from genutil.errors import CheckpointError, UserError
from genutil.wiring import (
    DagLayers,
    GraphWiring,
    Snapshot,
    edge_changes,
    kept_masks,
    load_model,
    load_series,
    load_wirings,
)

__all__ = [
    "DagLayers",
    "GraphWiring",
    "Snapshot",
    "load_model",
    "load_wirings",
    "kept_masks",
    "edge_changes",
    "load_series",
    "plot_adjacency",
    "adjacency_figure",
    "plot_dag",
    "plot_degrees",
    "plot_edge_changes",
    "write_adjacency_gif",
    "plot_checkpoints",
    "main",
]

log = logging.getLogger(__name__)

_MAX_CELLS = 1024  # adjacency images wider than this are max-pooled: a cell shows any kept edge
_MAX_DRAWN = 3000  # node-link drawings show at most this many edges, the strongest
_GIF_CELLS = 400  # the same for the frames of the GIF (smaller)
_ADDED = (0.85, 0.1, 0.1)  # red: edges kept now but not at the previous checkpoint
_READABLE = (0.84, 0.9, 0.97)  # light blue: the entries the forward reads (static DAGs)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # noqa: PLC0415  (lazy: only the figures need it)

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str, dpi: int = 150) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _pooled(mask: Tensor, max_cells: int = _MAX_CELLS) -> tuple[Tensor, int]:
    """[n_out, n_in] bool shrunk to at most ``max_cells`` a side: True if any entry is."""
    factor = -(-max(mask.shape) // max_cells)
    if factor == 1:
        return mask, 1
    return F.max_pool2d(mask[None, None].float(), factor, ceil_mode=True)[0, 0] > 0, factor


def _adjacency_image(
    w: GraphWiring, added: Optional[Tensor] = None, max_cells: int = _MAX_CELLS
) -> tuple[Tensor, int]:
    """RGB [h, w, 3]: white, blue where the forward reads, black kept, red newly kept."""
    kept, factor = _pooled(w.kept, max_cells)
    img = torch.ones(*kept.shape, 3)
    if not bool(w.allowed.all()):
        img[_pooled(w.allowed, max_cells)[0]] = torch.tensor(_READABLE)
    img[kept] = 0.0
    if added is not None:
        img[_pooled(added, max_cells)[0]] = torch.tensor(_ADDED)
    return img, factor


def _draw_adjacency(
    ax, w: GraphWiring, added: Optional[Tensor] = None, max_cells: int = _MAX_CELLS
) -> int:
    img, factor = _adjacency_image(w, added, max_cells)
    n_out, n_in = w.weight.shape
    ax.imshow(img.numpy(), interpolation="nearest", extent=(-0.5, n_in - 0.5, n_out - 0.5, -0.5))
    ax.set_xlabel("source node (column)")
    ax.set_ylabel("target node (row)")
    return factor


def plot_adjacency(w: GraphWiring, path: str, label: str = "") -> str:
    """(a) The kept edges of one graph layer as an image; returns ``path``."""
    return _save(adjacency_figure(w, label), path)


def adjacency_figure(w: GraphWiring, label: str = ""):
    """The figure of ``plot_adjacency`` (also what TensorBoard shows each epoch)."""
    n_out, n_in = w.weight.shape
    cells = max(n_out, n_in)
    inch = max(5.5 / min(cells, _MAX_CELLS), 1 / 150) * min(cells, _MAX_CELLS) / cells
    fig = _figure(n_in * inch + 1.3, n_out * inch + 1.5)
    factor = _draw_adjacency(fig.add_subplot(), w)
    kept, unused = int(w.kept.sum()), int((w.kept & ~w.allowed).sum())
    notes = ["black: kept edge"]
    if not bool(w.allowed.all()):
        notes.append("blue: edges the forward can read")
        notes.append(f"{unused:,} kept edges lie outside it" if unused else "")
    if factor > 1:
        notes.append(f"one pixel = {factor}x{factor} entries")
    fig.suptitle(
        f"Adjacency of '{w.name}'{f' ({label})' if label else ''}: {kept:,} kept edges of "
        f"{n_out:,} x {n_in:,}\n" + "; ".join(n for n in notes if n),
        fontsize=9,
    )
    return fig


def _edge_curves(w: GraphWiring) -> tuple[Tensor, Tensor, Tensor]:
    """Kept, readable edges as [E, 16, 2] curves in (layer, height) space, weights, and the
    (target layer, source layer) of each edge. Edges that skip layers arc above the nodes."""
    rows, cols = w.used.nonzero(as_tuple=True)
    src, src_pos, dst, dst_pos = w.layers.place(rows, cols)
    sizes = torch.tensor(w.layers.sizes, dtype=torch.float32)
    x0, x1 = src.float(), dst.float()
    y0, y1 = (src_pos + 0.5) / sizes[src], (dst_pos + 0.5) / sizes[dst]
    skip = (x1 - x0 - 1).clamp(min=0)
    cy = torch.where(skip > 0, torch.maximum(y0, y1) + 0.2 * skip, (y0 + y1) / 2)
    t = torch.linspace(0, 1, 16)[:, None]  # quadratic Bezier through the control point
    bx = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * (x0 + x1) / 2 + t**2 * x1  # [16, E]
    by = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1
    return torch.stack([bx, by], -1).permute(1, 0, 2), w.weight[rows, cols], torch.stack([dst, src])


def plot_dag(w: GraphWiring, path: str, label: str = "") -> str:
    """(b) A static graph as layered nodes and its kept edges coloured by weight."""
    from matplotlib import colormaps  # noqa: PLC0415
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.collections import LineCollection  # noqa: PLC0415
    from matplotlib.colors import Normalize  # noqa: PLC0415

    curves, values, pairs = _edge_curves(w)
    num_layers = len(w.layers.sizes)
    fig = _figure(13, 6)
    grid = fig.add_gridspec(1, 2, width_ratios=[2.3, 1])
    ax = fig.add_subplot(grid[0])
    # legibility: only the strongest edges are drawn, weakest first; opacity grows with |w|
    order = values.abs().argsort()[-_MAX_DRAWN:]
    vmax = float(values.abs().quantile(0.99)) if len(values) else 1.0
    norm = Normalize(-vmax, vmax)
    floor = min(0.6, max(0.05, 200 / max(len(order), 1)))
    colours = colormaps["coolwarm"](norm(values[order].numpy()))
    colours[:, 3] = (floor + (0.9 - floor) * torch.linspace(0, 1, len(order)) ** 3).numpy()
    lines = LineCollection(curves[order].numpy(), colors=colours, linewidths=0.5)
    ax.add_collection(lines)
    for i, size in enumerate(w.layers.sizes):
        ys = (torch.arange(size) + 0.5) / size
        ax.scatter(
            [i] * size,
            ys.numpy(),
            s=max(0.3, min(12.0, 300 / size)),
            c="black",
            zorder=3,
            linewidths=0,
        )
    ax.set_xticks(
        range(num_layers),
        [f"{n}\n{s} nodes" for n, s in zip(w.layers.names, w.layers.sizes)],
        fontsize=8,
    )
    ax.set_yticks([])
    ax.set_xlim(-0.3, num_layers - 0.7)
    top = float(curves[..., 1].max()) if len(values) else 1.0
    ax.set_ylim(-0.02, max(1.02, top + 0.03))
    drawn = f"the {len(order):,} strongest edges (|w|) of {len(values):,} drawn"
    if len(order) == len(values):
        drawn = "every kept edge drawn"
    ax.set_title(
        f"{drawn}, opacity growing with |w|\nnodes (dots) by layer; edges that skip layers arc "
        "above",
        fontsize=9,
    )
    fig.colorbar(
        ScalarMappable(norm, "coolwarm"),
        ax=ax,
        shrink=0.7,
        fraction=0.04,
        label="edge weight (clipped at the 99th percentile of |w|)",
    )
    counts = torch.zeros(num_layers, num_layers, dtype=torch.long)
    counts.index_put_((pairs[0], pairs[1]), torch.ones_like(pairs[0]), accumulate=True)
    right = fig.add_subplot(grid[1])
    right.imshow(counts.numpy(), cmap="Blues")
    for (i, j), c in zip(counts.nonzero().tolist(), counts[counts > 0].tolist()):
        right.text(
            j,
            i,
            f"{c:,}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if c > counts.max() / 2 else "black",
        )
    right.set_xticks(range(num_layers), w.layers.names, rotation=45, fontsize=8)
    right.set_yticks(range(num_layers), w.layers.names, fontsize=8)
    right.set_xlabel("source layer")
    right.set_ylabel("target layer")
    right.set_title("kept edges between layers", fontsize=9)
    fig.suptitle(
        f"'{w.name}' as a layered DAG ({label}): {len(values):,} kept edges that the "
        "forward reads, colour = edge weight",
        fontsize=10,
    )
    return _save(fig, path)


def _int_bins(values: Tensor) -> Union[int, list]:
    top = int(values.max()) if len(values) else 0
    return [b - 0.5 for b in range(top + 2)] if top <= 60 else 50


def plot_degrees(w: GraphWiring, path: str, label: str = "") -> str:
    """(c) Histograms of in-degree and out-degree over the nodes that can have them."""
    fig = _figure(10, 4)
    receive, send = w.allowed.any(1), w.allowed.any(0)
    parts = [
        ("in-degree", w.used.sum(1)[receive], "edges into each node that can receive"),
        ("out-degree", w.used.sum(0)[send], "edges out of each node that can send"),
    ]
    for i, (what, degree, about) in enumerate(parts):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.hist(degree.numpy(), bins=_int_bins(degree), color="tab:blue" if i else "tab:orange")
        ax.set_xlabel(f"{what} (kept edges)")
        ax.set_ylabel("nodes")
        ax.set_title(
            f"{what}: {about} ({len(degree)} nodes)\nmean {degree.float().mean():.1f}, "
            f"max {int(degree.max())}, {int((degree == 0).sum())} nodes with none",
            fontsize=9,
        )
    fig.suptitle(f"Degree histograms of '{w.name}' ({label}), edges the forward reads", fontsize=10)
    return _save(fig, path)


def plot_edge_changes(snaps: Sequence[Snapshot], path: str) -> str:
    """(d) Edges changed (added + removed) between consecutive checkpoints of a run."""
    if len(snaps) < 2:
        raise CheckpointError("edge changes need two or more checkpoints of one run")
    xs = [s.epoch if s.epoch is not None else i for i, s in enumerate(snaps)][1:]
    ys = [edge_changes(a.wirings, b.wirings) for a, b in zip(snaps, snaps[1:])]
    kept = sum(int(w.kept.sum()) for w in snaps[-1].wirings)
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    ax.plot(xs, ys, marker="o")
    for x, y in zip(xs, ys):
        ax.annotate(
            f"{y:,}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
        )
    ax.set_xticks(xs, [s.label for s in snaps[1:]], fontsize=8)
    ax.set_xlabel("checkpoint (epochs trained)")
    ax.set_ylabel("edges changed since the previous checkpoint")
    ax.set_ylim(bottom=0, top=max(ys) * 1.15 + 1)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"Edges changed between consecutive checkpoints (added + removed; {kept:,} "
        "kept)\nthe wiring settles as this falls; each point covers the epochs since "
        "the previous checkpoint",
        fontsize=9,
    )
    return _save(fig, path)


def write_adjacency_gif(
    frames: Sequence[tuple[str, GraphWiring]], path: str, ms_per_frame: int = 900
) -> str:
    """(d) Animated GIF of one graph's adjacency over training; newly kept edges in red."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415  (matplotlib depends on Pillow)

    images, previous = [], None
    for label, w in frames:
        added = None if previous is None else w.kept & ~previous.kept
        fig = _figure(5.6, 6.0)
        # about one screen pixel per cell, so that no kept edge falls between pixels
        factor = _draw_adjacency(fig.add_subplot(), w, added, max_cells=_GIF_CELLS)
        notes = [f"one pixel = {factor}x{factor} entries"] if factor > 1 else []
        if previous is not None:
            notes.insert(
                0,
                f"{edge_changes([previous], [w]):,} edges changed since the previous "
                "frame (red: newly kept)",
            )
        title = f"Adjacency of '{w.name}' over training: {label}"
        fig.suptitle("\n".join([title] + notes), fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        images.append(Image.open(buffer).convert("RGB"))
        previous = w
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return path


def _target(out: str, kind: str, name: str, many: bool, ext: str = "png") -> str:
    suffix = "_" + name.replace(".", "-") if many else ""
    if out.endswith(os.sep) or os.path.isdir(out):
        return os.path.join(out, f"{kind}{suffix}.{ext}")
    joiner = "" if out.endswith(("_", "-")) else "_"  # fig/run and fig/run_ name the same files
    return f"{out}{joiner}{kind}{suffix}.{ext}"


def plot_checkpoints(
    paths: Sequence[str], out: str, app: Optional[str] = None, prune_rate: Optional[float] = None
) -> list[str]:
    """Every figure for ``paths`` (see the module docstring); returns the files written."""
    snaps = load_series(paths, app, prune_rate)
    final = snaps[-1]
    folder = out if out.endswith(os.sep) else os.path.dirname(out)
    os.makedirs(folder or ".", exist_ok=True)
    many, written = len(final.wirings) > 1, []
    for w in final.wirings:
        written.append(plot_adjacency(w, _target(out, "adjacency", w.name, many), final.label))
        if w.layers is not None:
            written.append(plot_dag(w, _target(out, "dag", w.name, many), final.label))
        written.append(plot_degrees(w, _target(out, "degrees", w.name, many), final.label))
    if len(snaps) > 1:
        written.append(plot_edge_changes(snaps, _target(out, "edge_changes", "", False)))
        for i, w in enumerate(final.wirings):
            frames = [(s.label, s.wirings[i]) for s in snaps]
            written.append(
                write_adjacency_gif(
                    frames, _target(out, "adjacency_over_training", w.name, many, "gif")
                )
            )
    return written


def main(argv: Optional[list[str]] = None) -> int:
    """Command line; a bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m genutil.plot",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files or a run's folder")
    parser.add_argument(
        "--out", required=True, help="file-name prefix (fig/run) or folder ending in / (fig/run/)"
    )
    parser.add_argument(
        "--app",
        default=None,
        help="experiment yml the checkpoints came from "
        "(needed only for the original's MobileNetV1Like files)",
    )
    parser.add_argument(
        "--prune_rate",
        type=float,
        default=None,
        help="override the prune rate (files without a config)",
    )
    args = parser.parse_args(argv)
    try:
        for path in plot_checkpoints(args.checkpoints, args.out, args.app, args.prune_rate):
            print(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
