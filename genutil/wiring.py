"""What a checkpoint's wiring is, as data: kept-edge masks, layered DAGs, edge changes.

A kept edge is a non-zero entry of a graph layer's effective weight, so every edge type (top-k,
random mask, fine-tune mask) is read alike. Everything about a network comes through its
contract (``models/contract.py``: ``graph_layers()``, ``from_state_dict``). The model comes from
the checkpoint's ``config`` (our files), an experiment file, or, for the original's files, the
network that recognises the state dict. ``genutil.plot`` draws what this module reads; nothing
here needs matplotlib.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

import models
from genutil import api
from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config
from genutil.errors import CheckpointError
from models.contract import NodeLayout, graph_layers

__all__ = [
    "DagLayers",
    "GraphWiring",
    "Snapshot",
    "load_model",
    "load_wirings",
    "kept_masks",
    "edge_changes",
    "load_series",
]

log = logging.getLogger(__name__)

DagLayers = NodeLayout  # the name the figures' API used before the contract


@dataclass(frozen=True)
class GraphWiring:
    """One graph layer: effective weight [n_out, n_in] (rows targets, columns sources)."""

    name: str
    weight: Tensor
    allowed: Tensor  # [n_out, n_in] bool: the entries the forward reads (all, if recurrent)
    layers: Optional[NodeLayout]  # None: not a DAG (recurrent), nothing to draw as one

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


def _infer_model(state: Mapping[str, Tensor], prune_rate: Optional[float], path: str):
    """The original's files carry no config: the network that recognises the state dict."""
    try:
        model = models.from_state_dict(state, prune_rate)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}: pass --app <its yml>") from None
    if model is None:
        raise CheckpointError(
            f"{path} holds no model with a graph layer that can be recognised "
            "from its weights: pass --app <the yml it was trained with>"
        )
    if prune_rate is None:
        rates = sorted({layer.module.prune_rate for layer in graph_layers(model)})
        log.warning(
            "%s has no config: rebuilt from its weights with prune rate %s; pass --app to be exact",
            path,
            ", ".join(f"{r:g}" for r in rates),
        )
    return model


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
    for layer in graph_layers(model):
        w = layer.effective_weight().float()
        allowed = layer.allowed
        allowed = torch.ones_like(w, dtype=torch.bool) if allowed is None else allowed
        out.append(GraphWiring(layer.name, w.clone(), allowed.reshape(w.shape), layer.layout))
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
