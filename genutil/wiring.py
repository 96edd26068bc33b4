"""What a checkpoint's wiring is, as data: kept-edge masks, layered DAGs, edge changes.

A kept edge is a non-zero entry of a graph layer's effective weight ``get_weight()``, so every
edge type (top-k, random mask, fine-tune mask) is read alike. The model comes from the
checkpoint's ``config`` (our files), an experiment file, or, for the original's files, the state
dict's shapes. ``genutil.plot`` draws what this module reads; nothing here needs matplotlib.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from genutil import api
from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config
from genutil.errors import CheckpointError
from models.graphs.edges import Graph

__all__ = [
    "DagLayers",
    "GraphWiring",
    "Snapshot",
    "TINY_PRUNE_RATE",
    "load_model",
    "load_wirings",
    "kept_masks",
    "edge_changes",
    "load_series",
]

log = logging.getLogger(__name__)

TINY_PRUNE_RATE = 0.95  # every tiny-classifier yml of the paper (SPEC section 3)
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
