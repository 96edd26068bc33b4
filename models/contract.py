"""The contract every network of the project implements: what the tools may ask a network.

The tools of ``genutil`` (wiring figures, profiling, TensorBoard images, fast evaluation, the
public API, checkpoints of the original release) see a network only through this interface; they
never look inside it. A new network subclasses ``WiredNetwork`` (docs/architecture.md):

    class MyNet(WiredNetwork):
        def __init__(self, *, width: int, graph: str = "dnw", prune_rate: float = 0.5): ...
        @classmethod
        def from_config(cls, cfg): return cls(width=..., graph=cfg.graph, ...)
        def forward(self, x): ...

What it gets for free (generic defaults, right for any network whose graph layers are called as
modules, like the ``edges.Graph`` layers that ``models/wired.py`` puts into any network):

- ``graph_layers()``: every ``edges.Graph`` module, all entries readable, no DAG layout;
- ``profile()``: kept edges plus every other parameter; multiply-adds of one forward at
  ``input_shape()`` with each graph layer counted at its kept edges (``counting.py``);
- ``fast_plan()``: a copy whose graph layers run only their kept edges (``sparse_layers.py``).

What it overrides where it knows better: the paper's own counts (``profile``), the forward's DAG
region and node layers for the figures (``graph_layers``), dead-node removal (``fast_plan``),
and rebuilding itself from a bare state dict of the original release (``from_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs.edges import Graph

__all__ = [
    "NodeLayout",
    "GraphLayer",
    "Profile",
    "FastPlan",
    "WiredNetwork",
    "unwrap",
    "graph_layers",
]

Place = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class NodeLayout:
    """Node layers of a DAG, for the figures. ``place(rows, cols)`` maps edges (target row,
    source column of the weight) to (source layer, position in it, target layer, position in
    it); a node is drawn once per layer it belongs to."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    place: Place


@dataclass(frozen=True)
class GraphLayer:
    """One graph layer as the tools see it: its name, the edge-type module that holds the
    weight [n_out, n_in, 1, 1] (rows targets, columns sources), the entries its forward reads
    (None: all of them) and its node layers (None: not a DAG, e.g. recurrent)."""

    name: str
    module: Graph
    allowed: Optional[Tensor] = None  # [n_out, n_in] bool
    layout: Optional[NodeLayout] = None

    @property
    def shape(self) -> tuple[int, int]:
        """(n_out, n_in)."""
        w = self.module.weight
        return int(w.shape[0]), int(w.shape[1])

    @torch.no_grad()
    def effective_weight(self) -> Tensor:
        """The weight an evaluation forward uses, [n_out, n_in]: zero where there is no edge.
        Read in eval mode (targeted dropout's random drops are a training-time draw) and
        without touching the random generators, so that looking never changes a run."""
        module = self.module
        was_training = module.training
        with torch.random.fork_rng(devices=[]):
            if was_training:
                module.train(False)
            try:
                weight = module.get_weight().detach().reshape(self.shape)
            finally:
                if was_training:
                    module.train(True)
        return weight


@dataclass(frozen=True)
class Profile:
    """Parameters and multiply-adds of a network as the paper counts them.

    ``params``/``macs``: the paper's count (effective parameters: kept edges, not the dense
    weight); ``dense_params``: every parameter; ``input_size``: the input side the MACs are for
    (None: the original's 224 x 224 ImageNet assumption); ``method``: how it was counted, one
    line; ``lines``: details for the console; ``detail``: the model's own numbers (e.g. per
    Block) for callers that know the model.
    """

    params: int
    macs: int
    dense_params: int
    input_size: Optional[int]
    method: str
    lines: tuple[str, ...] = ()
    detail: Any = field(default=None, compare=False)


class FastPlan(Protocol):
    """What ``WiredNetwork.fast_plan()`` returns: the shrunk network, built for a backend."""

    def build(self, backend: str) -> nn.Module:
        """A NEW module in eval mode that gives the network's outputs (ValueError for a
        backend this plan cannot run)."""
        ...

    def report(self, backend: str) -> list[str]:
        """Lines for the console: what is kept and how it runs."""
        ...


class WiredNetwork(nn.Module):
    """Base class of every network of the project (see the module docstring)."""

    #: input channels and side a forward takes, for the generic count (``from_config`` sets
    #: them from ``in_channels`` / ``image_size``; subclasses may set them in ``__init__``)
    in_channels: int = 3
    image_size: int = 32
    #: the paper's wiring setting this network runs ("static", "discrete_time", "continuous";
    #: None: none), which the config key ``setting`` must name if it is given
    setting: Optional[str] = None
    #: keys the authors' experiment files set for this network without any effect, with the
    #: value they set: accepted at exactly that value, so that their files run unchanged
    inert_keys: dict = {}
    #: the config keys ``from_config`` reads beyond every run's (a set, or a function of the
    #: config); None: not declared, so unused keys are not refused
    config_keys = None

    def graph_layers(self) -> list[GraphLayer]:
        """Every graph layer, in module order."""
        return [GraphLayer(n, m) for n, m in self.named_modules() if isinstance(m, Graph)]

    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        return (self.in_channels, self.image_size, self.image_size)

    def profile(self, input_size: Optional[int] = None) -> Profile:
        """Parameters and multiply-adds by the paper's count, generalised (``counting.py``):
        kept edges plus every other parameter; MACs of one forward at ``input_size`` (default:
        ``image_size``), graph layers at their kept edges."""
        from models.counting import count_generic  # noqa: PLC0415

        return count_generic(self, input_size)

    def fast_plan(self, rule: str = "original") -> FastPlan:
        """How to shrink this network for evaluation. Default: the same network with every graph
        layer running only its kept edges (no node removal). ``rule``: which nodes count as
        dead, for models that remove nodes."""
        from models.sparse_layers import SparseLayersPlan  # noqa: PLC0415

        return SparseLayersPlan(self)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], prune_rate: Optional[float] = None
    ) -> Optional["WiredNetwork"]:
        """A model of this class shaped for ``state`` (a checkpoint of the original release,
        which carries no config), or None if ``state`` is not of this class. ``prune_rate``:
        where the weights cannot tell it."""
        return None


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside torch.compile, DataParallel and DistributedDataParallel wrappers."""
    while True:
        inner = getattr(net, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            net = inner
        elif isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        else:
            return net


def graph_layers(net: nn.Module) -> list[GraphLayer]:
    """The graph layers of any module: a ``WiredNetwork``'s own answer, else every ``Graph``."""
    net = unwrap(net)
    if isinstance(net, WiredNetwork):
        return net.graph_layers()
    return WiredNetwork.graph_layers(net)  # type: ignore[arg-type]
