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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from genutil import api
from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config
from genutil.errors import CheckpointError, UserError
from models.graphs.edges import Graph

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
    "plot_dag",
    "plot_degrees",
    "plot_edge_changes",
    "write_adjacency_gif",
    "plot_checkpoints",
    "main",
]

log = logging.getLogger(__name__)
TINY_PRUNE_RATE = 0.95  # every tiny-classifier yml of the paper (SPEC section 3)
_MAX_CELLS = 1024  # adjacency images wider than this are max-pooled: a cell shows any kept edge
_MAX_DRAWN = 3000  # node-link drawings show at most this many edges, the strongest
_GIF_CELLS = 400  # the same for the frames of the GIF (smaller)
Place = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class DagLayers:
    """Node layers of a static DAG. ``place(rows, cols)`` maps edges to (source layer, position
    in it, target layer, position in it); a node is drawn once per layer it belongs to."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    place: Place


@dataclass(frozen=True)
class GraphWiring:
    """One graph layer: effective weight [n_out, n_in] (rows targets, columns sources)."""

    name: str
    weight: Tensor
    allowed: Tensor  # [n_out, n_in] bool: the entries the forward reads (all, if recurrent)
    layers: Optional[DagLayers]  # None: recurrent (discrete/continuous time), no DAG to draw

    @property
    def kept(self) -> Tensor:
        return self.weight != 0

    @property
    def used(self) -> Tensor:
        return self.kept & self.allowed


@dataclass(frozen=True)
class Snapshot:
    """The wiring of one checkpoint of a run; ``epoch`` = epochs trained (None: unknown)."""

    path: str
    epoch: Optional[int]
    wirings: list[GraphWiring]

    @property
    def label(self) -> str:
        if self.epoch is None:
            return os.path.basename(self.path)
        return "init" if self.epoch == 0 else f"epoch {self.epoch}"


def _static_layers(model: nn.Module) -> DagLayers:
    """StaticNeuralGraph: stem, groups 1.., then the output nodes the last group writes to."""
    rng = torch.tensor(model.block_rng)
    out_lo = model.dim - model.feature_dim
    last = len(model.block_sz) - 1

    def place(rows: Tensor, cols: Tensor):
        src = torch.bucketize(cols, rng[1:], right=True)
        dst = torch.bucketize(rows, rng[1:], right=True)
        to_out = src == last  # step `last` adds into the output nodes (reference README 4.2)
        return (
            src,
            cols - rng[src],
            torch.where(to_out, last + 1, dst),
            torch.where(to_out, rows - out_lo, rows - rng[dst]),
        )

    names = ("stem",) + tuple(f"group {i}" for i in range(1, last + 1)) + ("output",)
    return DagLayers(names, tuple(model.block_sz) + (model.feature_dim,), place)


def _block_layers(block: nn.Module) -> DagLayers:
    """MobileNetV1Like Block: inputs, then ``blocks`` layers of ``oup`` nodes (last: outputs)."""
    inp, oup, blocks = block.inp, block.oup, block.blocks

    def place(rows: Tensor, cols: Tensor):
        src = torch.where(cols < inp, 0, 1 + (cols - inp).div(oup, rounding_mode="floor"))
        src_pos = torch.where(cols < inp, cols, (cols - inp) % oup)
        return src, src_pos, 1 + rows.div(oup, rounding_mode="floor"), rows % oup

    names = ("input",) + tuple(f"layer {i}" for i in range(1, blocks)) + ("output",)
    return DagLayers(names, (inp,) + (oup,) * blocks, place)


def _dag_of(model: nn.Module, name: str) -> tuple[Optional[DagLayers], Optional[Tensor]]:
    owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if hasattr(owner, "allowed_edges") and hasattr(owner, "block_rng"):
        return _static_layers(owner), owner.allowed_edges()
    if all(hasattr(owner, k) for k in ("inp", "oup", "blocks")):
        from models.graphs.mobilenetv1like import block_allowed  # noqa: PLC0415

        return _block_layers(owner), block_allowed(owner.inp, owner.oup, owner.blocks)
    return None, None


def _infer_model(state: Mapping[str, Tensor], prune_rate: Optional[float], path: str):
    """The original's files carry no config: rebuild the model from the state dict's shapes."""
    from models.graphs import neuralgraph as ng  # noqa: PLC0415

    mask = next((v for k, v in state.items() if k.endswith("graph.mask")), None)
    graph = "dnw" if mask is None else ("dnw_no_update" if bool((mask == 1).all()) else "random")
    if "layers.0.graph.weight" in state:
        if prune_rate is None and mask is None:
            raise CheckpointError(
                f"{path} has no config and a MobileNetV1Like's prune rate "
                "cannot be read from its weights: pass --app <its yml>"
            )
        from models.graphs.mobilenetv1like import MobileNetV1Like  # noqa: PLC0415

        return MobileNetV1Like(
            prune_rate=prune_rate or 0.0,
            graph=graph,
            in_channels=state["conv1.weight"].shape[1],
            small="linear.graph.weight" in state,
            output_size=next(v.shape[0] for k, v in state.items() if k.startswith("linear.")),
        )
    key = next((k for k in ("graph.weight", "odesolve.odefunc.graph.weight") if k in state), "")
    if not key or "fc.weight" not in state or "zeros" not in state:
        raise CheckpointError(
            f"{path} holds no model with a graph layer that can be recognised "
            "from its weights: pass --app <the yml it was trained with>"
        )
    if prune_rate is None and mask is None:
        log.warning(
            "%s has no config: assuming prune_rate %s (the paper's tiny models); "
            "pass --app to be exact",
            path,
            TINY_PRUNE_RATE,
        )
    kwargs = dict(
        dim=state[key].shape[0],
        downsample_dim=state["downsample.4.weight"].shape[0],
        feature_dim=state["fc.weight"].shape[1],
        output_size=state["fc.weight"].shape[0],
        image_size=4 * state["zeros"].shape[-1],
        graph=graph,
        in_channels=state["downsample.0.weight"].shape[1],
        prune_rate=TINY_PRUNE_RATE if prune_rate is None else prune_rate,
    )
    if key != "graph.weight":
        return ng.ContinuousTimeNeuralGraph(**kwargs)
    if "norm.0.weight" in state:
        return ng.StaticNeuralGraph(
            layers=sum(k.endswith(".weight") and k.startswith("norm.") for k in state), **kwargs
        )
    return ng.DiscreteTimeNeuralGraph(**kwargs)  # time steps are not in the weights


def load_model(
    path: str, app: Optional[str] = None, prune_rate: Optional[float] = None
) -> tuple[nn.Module, dict]:
    """(model in eval mode with the checkpoint's weights, the checkpoint dict)."""
    ckpt = read_checkpoint(path)
    state = model_state(ckpt)
    overrides = {} if prune_rate is None else {"prune_rate": prune_rate}
    if app:
        model = api.build_model(app, **overrides)
    elif isinstance(ckpt.get("config"), dict):
        names = {f.name for f in dataclasses.fields(Config)}
        cfg = Config(**{k: v for k, v in ckpt["config"].items() if k in names})
        model = api.model_from_config(dataclasses.replace(cfg, **overrides))
    else:
        model = _infer_model(state, prune_rate, path)
    load_model_state(model, state, source=f"checkpoint {path}")
    return model.eval(), ckpt


def load_wirings(model: nn.Module) -> list[GraphWiring]:
    """Every graph layer of ``model`` with its effective weight and DAG structure."""
    out = []
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, Graph):
                w = layer.get_weight().detach().float().reshape(layer.weight.shape[:2])
                layers, allowed = _dag_of(model, name)
                allowed = torch.ones_like(w, dtype=torch.bool) if allowed is None else allowed
                out.append(GraphWiring(name, w.clone(), allowed.reshape(w.shape), layers))
    if not out:
        raise CheckpointError("the model has no graph layer: there is no wiring to draw")
    return out


Source = Union[str, Mapping[str, Tensor], Sequence[GraphWiring]]


def kept_masks(
    source: Source, app: Optional[str] = None, prune_rate: Optional[float] = None
) -> dict[str, Tensor]:
    """{graph layer name: [n_out, n_in] bool kept edges} of a checkpoint path or wirings."""
    if isinstance(source, str):
        source = load_wirings(load_model(source, app, prune_rate)[0])
    if isinstance(source, Mapping):
        return {k: v.bool() for k, v in source.items()}
    return {w.name: w.kept for w in source}


def edge_changes(
    a: Source, b: Source, app: Optional[str] = None, prune_rate: Optional[float] = None
) -> int:
    """Edges that differ between two wirings (added plus removed, over every graph layer).

    ``a``/``b``: checkpoint paths, {name: kept mask} or wirings. The reference fixtures count
    the same way (``kept_set_changed_vs_init`` is the symmetric difference).
    """
    ka, kb = kept_masks(a, app, prune_rate), kept_masks(b, app, prune_rate)
    if ka.keys() != kb.keys() or any(ka[k].shape != kb[k].shape for k in ka):
        raise CheckpointError(
            "the two checkpoints hold different models: compare checkpoints of one run"
        )
    return sum(int((ka[k] ^ kb[k]).sum()) for k in ka)


def load_series(
    paths: Sequence[str], app: Optional[str] = None, prune_rate: Optional[float] = None
) -> list[Snapshot]:
    """Snapshots of checkpoint files and run folders, ordered by epochs trained.

    A folder contributes every ``*.pt`` but ``best.pt`` (a copy of some epoch); checkpoints of
    an epoch already seen are skipped.
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(
                n
                for n in os.listdir(path)
                if n.endswith(".pt") and n != "best.pt" and not n.startswith(".")
            )
            if not names:
                raise CheckpointError(f"{path} holds no .pt checkpoint: name a run's folder")
            files += [os.path.join(path, n) for n in names]
        else:
            files.append(path)
    snaps, seen = [], set()
    for path in files:
        model, ckpt = load_model(path, app, prune_rate)
        epoch = ckpt.get("epoch", ckpt["last_epoch"] + 1 if "last_epoch" in ckpt else None)
        epoch = None if epoch is None else int(epoch)
        if epoch is not None and epoch in seen:
            continue
        seen.add(epoch)
        snaps.append(Snapshot(path, epoch, load_wirings(model)))
    if all(s.epoch is not None for s in snaps):
        snaps.sort(key=lambda s: s.epoch)
    return snaps


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
        f"Adjacency of '{w.name}' ({label}): {kept:,} kept edges of "
        f"{n_out:,} x {n_in:,}\n" + "; ".join(n for n in notes if n),
        fontsize=9,
    )
    return _save(fig, path)


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
