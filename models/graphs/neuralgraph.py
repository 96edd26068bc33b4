"""The tiny classifiers of the paper's Table 1 (about 41k effective parameters).

Every model is stem ("downsample") -> a graph of ``dim`` nodes -> read-out. A node applies a
per-channel op (InstanceNorm, ReLU, a 3x3 depthwise conv); an edge is one entry of the
[dim, dim] weight of ``graph``. Three ways to run the graph (SPEC section 5):

- StaticNeuralGraph: a feed-forward DAG over ordered node groups.
- DiscreteTimeNeuralGraph: ``layers`` recurrent steps where every node may feed every node.
- ContinuousTimeNeuralGraph: the same update as an ODE integrated from t=0 to 1 (dopri5).

Module and buffer names are the original's, so its checkpoints load.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchdiffeq import odeint

from models.graphs.edges import Graph, make_graph
from models.graphs.ops import graph_conv, instance_norm, node_update, weight_slices
from models.graphs.products import sparse_weight
from models.graphs.static_fused import static_graph

__all__ = [
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


class _TinyBase(nn.Module):
    """What the three tiny classifiers share: stem, zero padding to ``dim`` nodes, read-out."""

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
        # The original's read-out: crop rows/cols half-1 .. half+1 of the S/4 map, then a 2x2
        # average pool, which averages only the top-left 2x2 of that crop (SPEC section 8).
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

    def graphs(self) -> Iterator[tuple[str, Graph]]:
        """(name, layer) of every graph layer."""
        for name, module in self.named_modules():
            if isinstance(module, Graph):
                yield name, module

    def get_weight(self) -> Tensor:
        """Effective edge weight [dim, dim, 1, 1] (rows: targets, columns: sources)."""
        return self._graph().get_weight()

    def _graph(self) -> Graph:
        return next(self.graphs())[1]

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
            rho=cfg.rho if cfg.rho != "gamma" else cfg.prune_rate,
            td_abs=cfg.td_abs,
        )


class StaticNeuralGraph(_TinyBase):
    """A feed-forward DAG: node groups in order, edges only from a group to later nodes.

    Step i takes group i's channels, applies its InstanceNorm, ReLU and depthwise convs, then
    adds its out-edges into every later node (rows ``r0_i ..``, ``r0_i = min(end_i, dim -
    feature_dim)``). As in the original, the last step reads its own group into the output
    nodes, which lie inside it (reference README 4.2).
    """

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
        rho: float = 0.5,
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
        stem = self.downsample(x)
        w = self.graph.get_weight()  # once per forward, shared by every step
        fused = static_graph(stem, w, self.conv.weight, self.norm, self.block_rng, self.feature_dim)
        if fused is not None:  # the CPU fast path: the same graph as one Function
            return self._readout(fused)
        # Step by step. Node groups are kept as separate tensors (None: still all zero) rather
        # than one [B, dim] state that every step slices: slicing costs a zero-filled full-size
        # gradient per step in the backward. Same sums as the original's in-place form.
        groups: list[Optional[Tensor]] = [stem] + [None] * (self.layers - 1)
        edges = weight_slices(  # group i's out-edges; the column ranges do not overlap
            w,
            [
                (slice(r0, None), slice(lo, hi))
                for r0, lo, hi in zip(self.targets, self.block_rng, self.block_rng[1:])
            ],
        )
        out = None
        for i in range(self.layers):
            lo, hi = self.block_rng[i], self.block_rng[i + 1]
            h = node_update(groups[i], self.conv.weight[lo:hi], self.norm[i])  # norm, ReLU, dw
            h = graph_conv(h, edges[i])  # into every later node
            if i == self.layers - 1:  # the output nodes are the last ones of the last group
                out = groups[i][:, -self.feature_dim :] + h
                break
            later = range(i + 1, self.layers)
            for j, part in zip(later, h.split([self.block_sz[j] for j in later], dim=1)):
                groups[j] = part if groups[j] is None else groups[j] + part
        return self._readout(out)

    @classmethod
    def from_config(cls, cfg) -> "StaticNeuralGraph":
        return cls(layers=cfg.layers, **cls._graph_kwargs(cfg))


class DiscreteTimeNeuralGraph(_TinyBase):
    """``layers`` steps of: ReLU, depthwise conv, graph (every node to every node), InstanceNorm."""

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
        rho: float = 0.5,
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
        # The graph's nodes start as the stem's channels followed by zeros. Two exact savings
        # over running every step on all ``dim`` nodes (the original's way, same result):
        # the first step reads only the stem's channels (the zero ones stay zero through ReLU
        # and the depthwise conv, so their edges add nothing), and the last step computes only
        # the read-out nodes (no other node of it reaches the loss, so their gradient is 0).
        # Each step is norm(graph(dw(relu(state)))); a step's norm and the next step's ReLU and
        # depthwise conv run as one node_update, so z holds a step's states before its norm
        # (the stem's output, which no norm follows, at first).
        z = self.downsample(x)
        # The weight does not change within a forward: one top-k serves all time steps (the
        # straight-through gradient is the same sum either way).
        w = self.graph.get_weight()
        # the middle steps use the whole weight: its sparse form is made once for all of them
        shared = sparse_weight(w) if self.layers > 2 else None
        first = self.dim - self.feature_dim
        for t in range(self.layers):
            c_in = z.shape[1]
            lo = first if t == self.layers - 1 else 0
            w_t = w[lo:, :c_in]
            sparse = shared if w_t.shape == w.shape else True  # True: graph_conv decides
            h = node_update(z, self.conv.weight[:c_in], self.norm if t else None)
            z = graph_conv(h, w_t, sparse)
        return self._readout(instance_norm(z, self.norm, first))

    @classmethod
    def from_config(cls, cfg) -> "DiscreteTimeNeuralGraph":
        return cls(layers=cfg.layers, **cls._graph_kwargs(cfg))


class ODEFunc(nn.Module):
    """dx/dt = InstanceNorm(graph(depthwise(relu(x)))).

    ``inplace_relu=True`` reproduces the original: its ReLU is in place on the tensor the
    solver hands in, so with dopri5 the solver's own state (the initial value and every accepted
    step, which FSAL reuses as a stage input) is clamped at zero. That is what the released
    models learned (SPEC section 8). ``False`` gives the clean ODE.
    """

    def __init__(
        self,
        *,
        dim: int,
        graph: str,
        prune_rate: float,
        rho: float = 0.5,
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

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        out = torch.relu_(x) if self.inplace_relu else torch.relu(x)
        w = self._weight if self._weight is not None else self.graph.get_weight()
        return self.norm(F.conv2d(self.conv(out), w))


class ODEBlock(nn.Module):
    """Integrates ``odefunc`` from t=0 to t=1 with dopri5, rtol = atol = ``tol`` (paper: 1e-3)."""

    def __init__(self, odefunc: ODEFunc, tol: float = 1e-3) -> None:
        super().__init__()
        self.odefunc = odefunc
        self.tol = tol

    def forward(self, x: Tensor) -> Tensor:
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        self.odefunc.nfe = 0
        self.odefunc._weight = self.odefunc.graph.get_weight()  # one top-k per solve
        try:
            out = odeint(self.odefunc, x, t, rtol=self.tol, atol=self.tol, method="dopri5")
        finally:
            self.odefunc._weight = None
        return out[1]


class ContinuousTimeNeuralGraph(_TinyBase):
    """The discrete update made continuous: an ODE over the node states (torchdiffeq)."""

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
        rho: float = 0.5,
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.odesolve(self._nodes(x))
        return self._readout(out[:, -self.feature_dim :])

    @classmethod
    def from_config(cls, cfg) -> "ContinuousTimeNeuralGraph":
        return cls(inplace_relu=cfg.ode_inplace_relu, **cls._graph_kwargs(cfg))
