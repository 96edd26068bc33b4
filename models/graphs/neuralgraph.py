"""The tiny classifiers of the paper's Table 1 (about 41k effective parameters).

Every model is stem ("downsample") -> a graph of ``dim`` nodes -> read-out. A node applies a
per-channel op (InstanceNorm, ReLU, a 3x3 depthwise conv); an edge is one entry of the
[dim, dim] weight of ``graph``. Three ways to run the graph (docs/faithfulness.md):

- StaticNeuralGraph: a feed-forward DAG over ordered node groups.
- DiscreteTimeNeuralGraph: ``layers`` recurrent steps where every node may feed every node.
- ContinuousTimeNeuralGraph: the same update as an ODE integrated from t=0 to 1 (dopri5).

Each forward is the paper's update in plain torch ops, with one branch to a forward arranged for
speed (``fastpath.on``: per-group tensors, sparse products, native kernels; same math). Module and
buffer names are the original's, so its checkpoints load.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchdiffeq import odeint

from models.contract import GraphLayer, NodeLayout, Profile, WiredNetwork
from models.graphs import fastpath
from models.graphs.edges import edge_type_from_mask, make_graph
from models.graphs.ode import dopri5
from models.graphs.ops import graph_conv, instance_norm, node_update, weight_slices
from models.graphs.products import sparse_weight
from models.graphs.static_fused import static_graph

__all__ = [
    "TINY_PRUNE_RATE",
    "StaticNeuralGraph",
    "DiscreteTimeNeuralGraph",
    "ContinuousTimeNeuralGraph",
    "ODEFunc",
    "ODEBlock",
    "static_groups",
]


def _stem(in_channels: int, downsample_dim: int) -> nn.Sequential:
    """3x3/2 conv + BN + ReLU, 3x3/2 depthwise, 1x1 conv, BN: image -> downsample_dim at S/4."""
    half = downsample_dim // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, half, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, half, kernel_size=3, stride=2, padding=1, groups=half),
        nn.Conv2d(half, downsample_dim, kernel_size=1),
        nn.BatchNorm2d(downsample_dim),
    )


# The prune rate of every tiny-classifier experiment of the paper: assumed for an original
# checkpoint, which carries no config, when none is given.
TINY_PRUNE_RATE = 0.95


def _depthwise(dim: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)


def static_groups(dim: int, downsample_dim: int, layers: int) -> list[int]:
    """Node group sizes of the static DAG: the stem's nodes, then equal groups.

    The original hard-codes [32, 192, 192, 192, 192]; the default config derives the same.
    """
    if layers < 2 or (dim - downsample_dim) % (layers - 1) or dim <= downsample_dim:
        raise ValueError(
            f"dim - downsample_dim = {dim - downsample_dim} must split into layers - 1 = "
            f"{layers - 1} equal node groups"
        )
    return [downsample_dim] + [(dim - downsample_dim) // (layers - 1)] * (layers - 1)


class _TinyBase(WiredNetwork):
    """What the three tiny classifiers share: stem, zero padding to ``dim`` nodes, read-out."""

    config_keys = frozenset(
        {"dim", "downsample_dim", "feature_dim", "layers", "graph", "prune_rate", "rho", "td_abs",
         "setting"}
    )  # fmt: skip

    def __init__(
        self,
        *,
        dim: int,
        downsample_dim: int,
        feature_dim: int,
        image_size: int,
        in_channels: int,
        output_size: int,
    ) -> None:
        super().__init__()
        if image_size < 16 or image_size % 4:
            raise ValueError(
                f"image_size {image_size}: the tiny models need a multiple of 4, "
                ">= 16 (the read-out crops a 3x3 window of the S/4 map)"
            )
        if not 0 < feature_dim <= dim or downsample_dim % 2 or downsample_dim >= dim:
            raise ValueError("need 0 < feature_dim <= dim, downsample_dim even and < dim")
        self.dim = dim
        self.downsample_dim = downsample_dim
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.in_channels = in_channels
        # The original's read-out: crop rows/cols half-1 .. half+1 of the S/4 map, then a 2x2
        # average pool, which averages only the top-left 2x2 of that crop (docs/faithfulness.md).
        self.half = (image_size // 4) // 2 - 1
        self.register_buffer(
            "zeros", torch.zeros(1, dim - downsample_dim, image_size // 4, image_size // 4)
        )

    def _nodes(self, x: Tensor) -> Tensor:
        """Stem output padded with zero channels up to ``dim`` nodes: [B, dim, S/4, S/4]."""
        stem = self.downsample(x)
        return torch.cat((stem, self.zeros.expand(x.size(0), -1, -1, -1)), dim=1)

    def _readout(self, features: Tensor) -> Tensor:
        """features [B, feature_dim, S/4, S/4] -> logits [B, output_size]."""
        h = self.half
        out = self.pool(features[:, :, h - 1 : h + 2, h - 1 : h + 2])
        return self.fc(out.reshape(out.size(0), self.feature_dim))

    def get_weight(self) -> Tensor:
        """Effective edge weight [dim, dim, 1, 1] (rows: targets, columns: sources)."""
        return self.graph_layers()[0].module.get_weight()

    def node_conv_weight(self) -> Tensor:
        """The nodes' depthwise filters [dim, 1, 3, 3]."""
        return self.conv.weight

    def profile(self, input_size: Optional[int] = None) -> Profile:
        """The paper's count (models/counting.py: ``count_tiny``)."""
        from models.counting import count_tiny  # noqa: PLC0415

        return count_tiny(self, self.passes(), input_size)

    def passes(self) -> int:
        """Passes over the graph per forward (for the count of multiply-adds)."""
        return 1

    @staticmethod
    def _shape_kwargs(state: Mapping[str, Tensor], key: str, prune_rate: Optional[float]) -> dict:
        """Constructor arguments read off an original checkpoint's state dict."""
        return dict(
            dim=state[key].shape[0],
            downsample_dim=state["downsample.4.weight"].shape[0],
            feature_dim=state["fc.weight"].shape[1],
            output_size=state["fc.weight"].shape[0],
            image_size=4 * state["zeros"].shape[-1],
            in_channels=state["downsample.0.weight"].shape[1],
            graph=edge_type_from_mask(state.get(key[: -len("weight")] + "mask")),
            prune_rate=TINY_PRUNE_RATE if prune_rate is None else prune_rate,
        )

    @staticmethod
    def _graph_kwargs(cfg) -> dict:
        return dict(
            dim=cfg.dim,
            downsample_dim=cfg.downsample_dim,
            feature_dim=cfg.feature_dim,
            image_size=cfg.image_size,
            in_channels=cfg.in_channels,
            output_size=cfg.output_size,
            graph=cfg.graph,
            prune_rate=cfg.prune_rate,
            rho=cfg.rho,
            td_abs=cfg.td_abs,
        )


class StaticNeuralGraph(_TinyBase):
    """A feed-forward DAG: node groups in order, edges only from a group to later nodes.

    Step i takes group i's channels, applies its InstanceNorm, ReLU and depthwise convs, then
    adds its out-edges into every later node (rows ``r0_i ..``, ``r0_i = min(end_i, dim -
    feature_dim)``). As in the original, the last step reads its own group into the output
    nodes, which lie inside it (docs/faithfulness.md, "The static tiny model").
    """

    setting = "static"

    def __init__(
        self,
        *,
        dim: int = 800,
        downsample_dim: int = 32,
        feature_dim: int = 100,
        layers: int = 5,
        image_size: int = 32,
        in_channels: int = 3,
        output_size: int = 10,
        graph: str = "dnw",
        prune_rate: float = 0.95,
        rho: float | str = 0.5,
        td_abs: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            downsample_dim=downsample_dim,
            feature_dim=feature_dim,
            image_size=image_size,
            in_channels=in_channels,
            output_size=output_size,
        )
        self.layers = layers
        self.block_sz = static_groups(dim, downsample_dim, layers)
        if feature_dim > self.block_sz[-1]:
            raise ValueError(
                f"feature_dim {feature_dim} exceeds the last node group "
                f"({self.block_sz[-1]} nodes): lower feature_dim or raise dim"
            )
        self.block_rng = [0]
        for size in self.block_sz:
            self.block_rng.append(self.block_rng[-1] + size)
        self.targets = [min(end, dim - feature_dim) for end in self.block_rng[1:]]

        self.downsample = _stem(in_channels, downsample_dim)
        self.conv = _depthwise(dim)
        self.graph = make_graph(
            graph, prune_rate, dim, dim, allowed=self.allowed_edges(), rho=rho, td_abs=td_abs
        )
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(feature_dim, output_size)
        self.norm = nn.ModuleList(nn.InstanceNorm2d(s, affine=True) for s in self.block_sz)

    def allowed_edges(self) -> Tensor:
        """[dim, dim] bool: the region of the edge weight the forward reads (the DAG)."""
        allowed = torch.zeros(self.dim, self.dim, dtype=torch.bool)
        for i, r0 in enumerate(self.targets):
            allowed[r0:, self.block_rng[i] : self.block_rng[i + 1]] = True
        return allowed

    def forward(self, x: Tensor) -> Tensor:
        stem = self.downsample(x)  # [B, downsample_dim, S/4, S/4]: the first group's states
        w = self.graph.get_weight()  # [dim, dim, 1, 1], once per forward: one top-k
        if fastpath.on(stem):  # the same DAG arranged for speed (_dag_fast)
            return self._readout(self._dag_fast(stem, w))
        # The paper's static DAG as the original computes it: one state of every node not yet
        # read, zeros until an edge adds into them. Step i takes group i's nodes off the front,
        # runs their InstanceNorm, ReLU and depthwise conv, and adds their out-edges into every
        # later node (rows targets[i]..); the last step reads its own group into the output
        # nodes, which lie inside it (docs/faithfulness.md, "The static tiny model").
        state = torch.cat((stem, self.zeros.expand(x.size(0), -1, -1, -1)), dim=1)
        for i, size in enumerate(self.block_sz):
            lo, hi = self.block_rng[i], self.block_rng[i + 1]
            h = F.relu(self.norm[i](state[:, :size]))
            h = F.conv2d(h, self.conv.weight[lo:hi], padding=1, groups=size)
            h = F.conv2d(h, w[self.targets[i] :, lo:hi])
            rest = state[:, size:] if i < self.layers - 1 else state[:, -self.feature_dim :]
            state = rest + h
        return self._readout(state)

    def _dag_fast(self, stem: Tensor, w: Tensor) -> Tensor:
        """The read-out nodes' states [B, feature_dim, S/4, S/4], same math as ``forward``.

        On the CPU the whole DAG is one autograd Function over the native kernels
        (static_fused.py). Otherwise step by step, with each node group kept as a tensor of its
        own (None: still all zero) rather than one state that every step slices: slicing costs
        a zero-filled full-size gradient per step in the backward.
        """
        fused = static_graph(stem, w, self.conv.weight, self.norm, self.block_rng, self.feature_dim)
        if fused is not None:
            return fused
        groups: list[Optional[Tensor]] = [stem] + [None] * (self.layers - 1)
        edges = weight_slices(  # group i's out-edges; the column ranges do not overlap
            w,
            [
                (slice(r0, None), slice(lo, hi))
                for r0, lo, hi in zip(self.targets, self.block_rng, self.block_rng[1:])
            ],
        )
        for i in range(self.layers):
            lo, hi = self.block_rng[i], self.block_rng[i + 1]
            h = node_update(groups[i], self.conv.weight[lo:hi], self.norm[i])  # norm, ReLU, dw
            h = graph_conv(h, edges[i])  # into every later node
            if i == self.layers - 1:  # the output nodes are the last ones of the last group
                return groups[i][:, -self.feature_dim :] + h
            later = range(i + 1, self.layers)
            for j, part in zip(later, h.split([self.block_sz[j] for j in later], dim=1)):
                groups[j] = part if groups[j] is None else groups[j] + part
        raise AssertionError("unreachable: the loop returns at the last group")

    def graph_layers(self) -> list[GraphLayer]:
        """The one graph, its DAG region and node groups."""
        return [GraphLayer("graph", self.graph, self.allowed_edges(), self.node_layout())]

    def node_layout(self) -> NodeLayout:
        """Stem, groups 1.., then the output nodes the last group writes to."""
        rng = torch.tensor(self.block_rng)
        out_lo = self.dim - self.feature_dim
        last = len(self.block_sz) - 1

        def place(rows: Tensor, cols: Tensor):
            src = torch.bucketize(cols, rng[1:], right=True)
            dst = torch.bucketize(rows, rng[1:], right=True)
            to_out = src == last  # the last step adds into the output nodes
            return (
                src,
                cols - rng[src],
                torch.where(to_out, last + 1, dst),
                torch.where(to_out, rows - out_lo, rows - rng[dst]),
            )

        names = ("stem",) + tuple(f"group {i}" for i in range(1, last + 1)) + ("output",)
        return NodeLayout(names, tuple(self.block_sz) + (self.feature_dim,), place)

    def fast_plan(self, rule: str = "original"):
        """Dead-node removal over the DAG (models/graphs/fast/removal.py; always transitive)."""
        from models.graphs.fast.removal import plan_static  # noqa: PLC0415

        return plan_static(self)

    @classmethod
    def from_state_dict(cls, state, prune_rate=None) -> Optional["StaticNeuralGraph"]:
        """Shaped for an original checkpoint with per-group norms ``norm.0`` ..."""
        if "graph.weight" not in state or "norm.0.weight" not in state or "zeros" not in state:
            return None
        layers = sum(k.startswith("norm.") and k.endswith(".weight") for k in state)
        return cls(layers=layers, **cls._shape_kwargs(state, "graph.weight", prune_rate))

    @classmethod
    def from_config(cls, cfg) -> "StaticNeuralGraph":
        return cls(layers=cfg.layers, **cls._graph_kwargs(cfg))


class DiscreteTimeNeuralGraph(_TinyBase):
    """``layers`` steps of: ReLU, depthwise conv, graph (every node to every node), InstanceNorm."""

    setting = "discrete_time"

    def __init__(
        self,
        *,
        dim: int = 800,
        downsample_dim: int = 32,
        feature_dim: int = 100,
        layers: int = 5,
        image_size: int = 32,
        in_channels: int = 3,
        output_size: int = 10,
        graph: str = "dnw",
        prune_rate: float = 0.95,
        rho: float | str = 0.5,
        td_abs: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            downsample_dim=downsample_dim,
            feature_dim=feature_dim,
            image_size=image_size,
            in_channels=in_channels,
            output_size=output_size,
        )
        self.layers = layers
        self.downsample = _stem(in_channels, downsample_dim)
        self.conv = _depthwise(dim)
        self.graph = make_graph(graph, prune_rate, dim, dim, rho=rho, td_abs=td_abs)
        self.norm = nn.InstanceNorm2d(dim, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(feature_dim, output_size)

    def forward(self, x: Tensor) -> Tensor:
        # The weight does not change within a forward: one top-k serves every time step (the
        # original recomputed it per step; the straight-through gradient is the same sum).
        w = self.graph.get_weight()  # [dim, dim, 1, 1]
        if fastpath.on(x):  # the same steps arranged for speed (_steps_fast)
            return self._readout(self._steps_fast(self.downsample(x), w))
        # The paper's discrete-time update of every node, ``layers`` times:
        # state <- InstanceNorm(W * depthwise(relu(state))), every node may feed every node.
        state = self._nodes(x)
        for _ in range(self.layers):
            state = self.norm(F.conv2d(self.conv(F.relu(state)), w))
        return self._readout(state[:, -self.feature_dim :])

    def _steps_fast(self, z: Tensor, w: Tensor) -> Tensor:
        """The read-out nodes' states after the last step, same math as ``forward``.

        Two exact savings over running every step on all ``dim`` nodes: the first step reads
        only the stem's channels (the zero ones stay zero through ReLU and the depthwise conv,
        so their edges add nothing), and the last step computes only the read-out nodes (no
        other node of it reaches the loss). A step's norm and the next step's ReLU and depthwise
        conv run as one node_update, so ``z`` holds a step's states before its norm (the stem's
        output, which no norm follows, at first). The middle steps share one sparse form of W.
        """
        shared = sparse_weight(w) if self.layers > 2 else None
        first = self.dim - self.feature_dim
        for t in range(self.layers):
            c_in = z.shape[1]
            lo = first if t == self.layers - 1 else 0
            w_t = w[lo:, :c_in]
            sparse = shared if w_t.shape == w.shape else True  # True: graph_conv decides
            h = node_update(z, self.conv.weight[:c_in], self.norm if t else None)
            z = graph_conv(h, w_t, sparse)
        return instance_norm(z, self.norm, first)

    def passes(self) -> int:
        return self.layers

    def fast_plan(self, rule: str = "original"):
        raise ValueError(
            "fast_eval: the discrete-time model has no dead nodes to remove (every node feeds "
            "every node at every step); its evaluation already runs only the kept edges"
        )

    @classmethod
    def from_state_dict(cls, state, prune_rate=None) -> Optional["DiscreteTimeNeuralGraph"]:
        """Shaped for an original checkpoint with one shared ``norm`` (time steps are not in
        the weights: the paper's 5)."""
        if "graph.weight" not in state or "norm.weight" not in state or "zeros" not in state:
            return None
        return cls(**cls._shape_kwargs(state, "graph.weight", prune_rate))

    @classmethod
    def from_config(cls, cfg) -> "DiscreteTimeNeuralGraph":
        return cls(layers=cfg.layers, **cls._graph_kwargs(cfg))


class ODEFunc(nn.Module):
    """dx/dt = InstanceNorm(graph(depthwise(relu(x)))).

    ``inplace_relu=True`` reproduces the original: its ReLU is in place on the tensor the
    solver hands in, so with dopri5 the solver's own state (the initial value and every accepted
    step, which FSAL reuses as a stage input) is clamped at zero. That is what the released
    models learned (docs/faithfulness.md, "Where we differ"). ``False`` gives the clean ODE.
    """

    def __init__(
        self,
        *,
        dim: int,
        graph: str,
        prune_rate: float,
        rho: float | str = 0.5,
        td_abs: bool = False,
        inplace_relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = _depthwise(dim)
        self.graph = make_graph(graph, prune_rate, dim, dim, rho=rho, td_abs=td_abs)
        self.norm = nn.InstanceNorm2d(dim, affine=True)
        self.inplace_relu = inplace_relu
        self.nfe = 0  # function evaluations of the last solve
        self._weight: Optional[Tensor] = None
        self._sparse = None  # the weight's sparse form, shared by a solve's evaluations

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        out = torch.relu_(x) if self.inplace_relu else torch.relu(x)
        w = self._weight if self._weight is not None else self.graph.get_weight()
        if fastpath.on(out):  # the same function arranged for speed (_fast)
            return self._fast(out, w)
        return self.norm(F.conv2d(self.conv(out), w))

    def _fast(self, out: Tensor, w: Tensor) -> Tensor:
        """Same math as ``forward``'s: the depthwise conv by the native kernel (its ReLU is a
        no-op on ``out``, already clamped), the graph over the kept edges only, InstanceNorm as a
        GroupNorm of one channel per group."""
        h = node_update(out, self.conv.weight)
        sparse = self._sparse if self._weight is not None else True  # True: graph_conv decides
        return instance_norm(graph_conv(h, w, sparse), self.norm)


class ODEBlock(nn.Module):
    """Integrates ``odefunc`` from t=0 to t=1 with dopri5, rtol = atol = ``tol`` (paper: 1e-3)."""

    def __init__(self, odefunc: ODEFunc, tol: float = 1e-3) -> None:
        super().__init__()
        self.odefunc = odefunc
        self.tol = tol

    def forward(self, x: Tensor) -> Tensor:
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        self.odefunc.nfe = 0
        func = self.odefunc
        func._weight = func.graph.get_weight()  # one top-k per solve
        func._sparse = sparse_weight(func._weight) if fastpath.on(x) else None  # one CSR, too
        try:
            if fastpath.on(x):  # the same steps, leaner on memory traffic (models/graphs/ode.py)
                return dopri5(func, x, self.tol, self.tol)
            return odeint(func, x, t, rtol=self.tol, atol=self.tol, method="dopri5")[1]
        finally:
            func._weight = func._sparse = None


class ContinuousTimeNeuralGraph(_TinyBase):
    """The discrete update made continuous: an ODE over the node states (torchdiffeq)."""

    setting = "continuous"
    config_keys = (_TinyBase.config_keys - {"layers"}) | {"ode_inplace_relu"}
    # the authors' continuous-time files set layers: 5, which their code never read (the solver
    # decides the steps)
    inert_keys = {"layers": 5}

    def __init__(
        self,
        *,
        dim: int = 800,
        downsample_dim: int = 32,
        feature_dim: int = 100,
        image_size: int = 32,
        in_channels: int = 3,
        output_size: int = 10,
        graph: str = "dnw",
        prune_rate: float = 0.95,
        rho: float | str = 0.5,
        td_abs: bool = False,
        inplace_relu: bool = True,
        tol: float = 1e-3,
    ) -> None:
        super().__init__(
            dim=dim,
            downsample_dim=downsample_dim,
            feature_dim=feature_dim,
            image_size=image_size,
            in_channels=in_channels,
            output_size=output_size,
        )
        self.downsample = _stem(in_channels, downsample_dim)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(feature_dim, output_size)
        func = ODEFunc(
            dim=dim,
            graph=graph,
            prune_rate=prune_rate,
            rho=rho,
            td_abs=td_abs,
            inplace_relu=inplace_relu,
        )
        self.odesolve = ODEBlock(func, tol=tol)

    @property
    def nfe(self) -> int:
        """ODE function evaluations of the last forward."""
        return self.odesolve.odefunc.nfe

    def node_conv_weight(self) -> Tensor:
        return self.odesolve.odefunc.conv.weight

    def fast_plan(self, rule: str = "original"):
        raise ValueError(
            "fast_eval: the continuous-time model has no dead nodes to remove (every node feeds "
            "every node along the ODE)"
        )

    @classmethod
    def from_state_dict(cls, state, prune_rate=None) -> Optional["ContinuousTimeNeuralGraph"]:
        """Shaped for an original checkpoint of the ODE model."""
        key = "odesolve.odefunc.graph.weight"
        if key not in state or "zeros" not in state:
            return None
        return cls(**cls._shape_kwargs(state, key, prune_rate))

    def forward(self, x: Tensor) -> Tensor:
        out = self.odesolve(self._nodes(x))
        return self._readout(out[:, -self.feature_dim :])

    @classmethod
    def from_config(cls, cfg) -> "ContinuousTimeNeuralGraph":
        return cls(inplace_relu=cfg.ode_inplace_relu, **cls._graph_kwargs(cfg))
