"""MobileNetV1-like network whose pointwise convolutions are learned graphs (docs/faithfulness.md).

Each of the five Blocks is one static DAG of channels: ``inp`` input nodes, ``blocks - 1``
layers of ``oup`` intermediate nodes and ``oup`` output nodes. A single edge weight
[oup * blocks, inp + oup * (blocks - 1), 1, 1] holds every edge from a non-output node (column)
to a non-input node (row); the forward only reads edges that go to a LATER layer (reference
README 4.3). Each Block gets the edge budget of a MobileNetV1 of width ``1 - prune_rate``.

Module and parameter names (``conv1``, ``layers.N.downsample.0``, ``layers.N.conv``,
``layers.N.norm.K``, ``layers.N.graph``, ``linear``, ``bn``) and their registration order are
those of the original release, so its checkpoints load and ``seed`` draws the same initial
weights (construction order is the original's).
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.contract import GraphLayer, NodeLayout, Profile, WiredNetwork
from models.graphs import fastpath
from models.graphs.edges import Graph, make_graph
from models.graphs.ops import bn_node_update, graph_conv, weight_slices

__all__ = [
    "BLOCK_CFG",
    "Block",
    "GraphLinear",
    "MobileNetV1Like",
    "block_allowed",
    "block_prune_rate",
]

# (inp, oup, stride, blocks) per Block, as in the original (docs/faithfulness.md).
BLOCK_CFG: tuple[tuple[int, int, int, int], ...] = (
    (32, 64, 1, 1),
    (64, 128, 2, 2),
    (128, 256, 2, 2),
    (256, 512, 2, 6),
    (512, 1024, 2, 2),
)

Rho = Union[float, str]


def block_prune_rate(prune_rate: float, inp: int, oup: int, blocks: int) -> float:
    """The Block's own prune rate: 1 - (edges of MobileNetV1 x (1 - p)) / (size of W).

    Evaluated in float64 exactly as the original (docs/faithfulness.md, "MobileNetV1-like"): each
    term is ``a * b * (1 - p) * (1 - p)`` left to right and the numerator is accumulated term by
    term, so the result equals the original's bit for bit (it decides ``int(rate * n)``).
    """
    p = float(prune_rate)
    num_edges = inp * oup * (1 - p) * (1 - p)
    for _ in range(blocks - 1):
        num_edges += oup * oup * (1 - p) * (1 - p)
    graph_size = (inp + oup * (blocks - 1)) * oup * blocks
    return 1 - (num_edges / float(graph_size))


def block_allowed(inp: int, oup: int, blocks: int) -> Tensor:
    """DAG constraint of a Block as a bool [oup * blocks, inp + oup * (blocks - 1)].

    Input columns feed every target row; the columns of intermediate layer g feed only the
    rows of layers g + 1, g + 2, ... (rows are grouped by ``oup``); docs/faithfulness.md,
    "The DAG constraint".
    """
    row_layer = torch.arange(oup * blocks) // oup  # [n_out]: target layer 0..blocks-1
    col = torch.arange(inp + oup * (blocks - 1))
    col_layer = torch.where(col < inp, torch.full_like(col, -1), (col - inp) // oup)  # [n_in]
    return row_layer[:, None] > col_layer[None, :]


class Block(nn.Module):
    """One static graph replacing a run of depthwise-separable layers (docs/faithfulness.md,
    "MobileNetV1-like")."""

    def __init__(
        self,
        *,
        inp: int,
        oup: int,
        stride: int,
        blocks: int,
        net_prune_rate: float,
        graph: str,
        rho: Rho = 0.5,
        td_abs: bool = False,
    ) -> None:
        """``net_prune_rate`` is the network's prune rate p; ``self.prune_rate`` the Block's."""
        super().__init__()
        self.inp = inp
        self.oup = oup
        self.stride = stride
        self.blocks = blocks
        self.num_sources = inp + oup * (blocks - 1)  # columns of W: every non-output node
        self.num_targets = oup * blocks  # rows of W: every non-input node

        self.downsample = nn.Sequential(
            nn.Conv2d(inp, inp, kernel_size=3, stride=stride, padding=1, groups=inp, bias=False)
        )
        if blocks > 1:  # one 3x3 depthwise filter per intermediate node
            dim = oup * (blocks - 1)
            self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = nn.ModuleList(
            [nn.BatchNorm2d(inp)] + [nn.BatchNorm2d(oup) for _ in range(blocks - 1)]
        )
        self.prune_rate = block_prune_rate(net_prune_rate, inp, oup, blocks)
        self.graph = make_graph(
            graph,
            self.prune_rate,
            self.num_sources,
            self.num_targets,
            allowed=block_allowed(inp, oup, blocks),
            rho=rho,
            td_abs=td_abs,
        )

    def get_weight(self) -> Tensor:
        """Effective edge weight [num_targets, num_sources, 1, 1]."""
        return self.graph.get_weight()

    def allowed_edges(self) -> Tensor:
        """[num_targets, num_sources] bool: the entries of W the forward reads."""
        return block_allowed(self.inp, self.oup, self.blocks)

    def node_layout(self) -> NodeLayout:
        """Inputs, then ``blocks`` layers of ``oup`` nodes (the last: the outputs)."""
        inp, oup, blocks = self.inp, self.oup, self.blocks

        def place(rows: Tensor, cols: Tensor):
            src = torch.where(cols < inp, 0, 1 + (cols - inp).div(oup, rounding_mode="floor"))
            src_pos = torch.where(cols < inp, cols, (cols - inp) % oup)
            return src, src_pos, 1 + rows.div(oup, rounding_mode="floor"), rows % oup

        names = ("input",) + tuple(f"layer {i}" for i in range(1, blocks)) + ("output",)
        return NodeLayout(names, (inp,) + (oup,) * blocks, place)

    def forward(self, x: Tensor) -> Tensor:
        w = self.get_weight()  # [num_targets, num_sources, 1, 1], once per forward: one top-k
        inp, oup = self.inp, self.oup
        if fastpath.on(x):  # the same nodes and edges arranged for speed (_edges_fast)
            return self._edges_fast(x, w)
        x = self.downsample(F.relu(self.norm[0](x)))  # the input nodes: BN, ReLU, depthwise
        # The original's Block: one state of every target node not yet read. The inputs' edges
        # reach every target; then each intermediate layer is read off the front of the state,
        # runs its BN, ReLU and depthwise conv, and adds its edges into the later layers
        # (docs/faithfulness.md, "MobileNetV1-like"). The last ``oup`` nodes are the output.
        state = F.conv2d(x, w[:, :inp])  # [B, oup * blocks, H, W]
        for i in range(self.blocks - 1):
            h = F.relu(self.norm[i + 1](state[:, :oup]))
            h = F.conv2d(h, self.conv.weight[i * oup : (i + 1) * oup], padding=1, groups=oup)
            cols = slice(inp + i * oup, inp + (i + 1) * oup)
            state = state[:, oup:] + F.conv2d(h, w[(i + 1) * oup :, cols])
        return state

    def _edges_fast(self, x: Tensor, w: Tensor) -> Tensor:
        """The output nodes [B, oup, H, W] from the Block's input ``x``, same math as
        ``forward``: each node layer's BatchNorm, ReLU and depthwise conv is one
        ``bn_node_update`` (one native kernel in training on the CPU), each target layer's input
        is a tensor of its own (slicing one state costs a zero-filled full-size gradient per
        slice), the edge slices share one gradient buffer (``weight_slices``), and the edge
        products take the CPU's sparse path (``graph_conv``)."""
        inp, oup = self.inp, self.oup
        x = bn_node_update(x, self.downsample[0].weight, self.norm[0], self.stride)
        edges = weight_slices(  # the column ranges never overlap
            w,
            [(slice(None), slice(0, inp))]
            + [
                (slice((i + 1) * oup, None), slice(inp + i * oup, inp + (i + 1) * oup))
                for i in range(self.blocks - 1)
            ],
        )
        layers = list(graph_conv(x, edges[0]).split(oup, dim=1))
        for i in range(self.blocks - 1):
            active = bn_node_update(
                layers[i], self.conv.weight[i * oup : (i + 1) * oup], self.norm[i + 1]
            )
            out = graph_conv(active, edges[i + 1]).split(oup, dim=1)
            for j, part in enumerate(out, start=i + 1):
                layers[j] = layers[j] + part
        return layers[-1]  # [B, oup, H, W]: the output nodes

    def extra_repr(self) -> str:
        return (
            f"inp={self.inp}, oup={self.oup}, stride={self.stride}, blocks={self.blocks}, "
            f"prune_rate={self.prune_rate!r}"
        )


class GraphLinear(nn.Module):
    """The classifier of ``small: True``: a graph layer (no bias) used as a linear layer."""

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        prune_rate: float,
        graph: str,
        rho: Rho = 0.5,
        td_abs: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        # No DAG here: a random classifier draws from every edge, as the original does.
        self.graph = make_graph(
            graph, prune_rate, in_features, out_features, rho=rho, td_abs=td_abs
        )

    def get_weight(self) -> Tensor:
        """Effective weight [out_features, in_features, 1, 1]."""
        return self.graph.get_weight()

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        return F.conv2d(x[:, :, None, None], self.get_weight()).flatten(1)


class MobileNetV1Like(WiredNetwork):
    """conv1 -> five graph Blocks -> BatchNorm, ReLU, global pool -> classifier."""

    feature_dim = 1024
    setting = "static"  # every Block is a static DAG
    config_keys = frozenset({"prune_rate", "graph", "small", "rho", "td_abs", "setting"})

    def __init__(
        self,
        *,
        prune_rate: float,
        graph: str,
        image_size: int = 32,
        output_size: int = 10,
        in_channels: int = 3,
        small: bool = False,
        rho: Rho = 0.5,
        td_abs: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= prune_rate < 1:
            raise ValueError(f"prune_rate must be in [0, 1), got {prune_rate}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.output_size = output_size
        self.small = small
        # CIFAR-sized inputs keep full resolution in the stem (docs/faithfulness.md).
        stem_stride = 1 if image_size <= 64 else 2
        self.conv1 = nn.Conv2d(
            in_channels, 32, kernel_size=3, stride=stem_stride, padding=1, bias=False
        )
        self.layers = nn.Sequential(
            *[
                Block(
                    inp=inp,
                    oup=oup,
                    stride=stride,
                    blocks=blocks,
                    net_prune_rate=prune_rate,
                    graph=graph,
                    rho=rho,
                    td_abs=td_abs,
                )
                for inp, oup, stride, blocks in BLOCK_CFG
            ]
        )
        if small:  # the classifier is itself pruned at the network's prune rate
            self.linear: nn.Module = GraphLinear(
                in_features=self.feature_dim,
                out_features=output_size,
                prune_rate=prune_rate,
                graph=graph,
                rho=rho,
                td_abs=td_abs,
            )
        else:
            self.linear = nn.Linear(self.feature_dim, output_size)
        self.bn = nn.BatchNorm2d(self.feature_dim)

    @classmethod
    def from_config(cls, cfg) -> MobileNetV1Like:
        """Build from the experiment config (the only place its keys are read)."""
        return cls(
            prune_rate=cfg.prune_rate,
            graph=cfg.graph,
            image_size=cfg.image_size,
            output_size=cfg.output_size,
            in_channels=cfg.in_channels,
            small=cfg.small,
            rho=cfg.rho,
            td_abs=cfg.td_abs,
        )

    def get_weight(self) -> list[Tensor]:
        """Effective weight of every graph layer, in ``graph_layers()`` order."""
        return [layer.module.get_weight() for layer in self.graph_layers()]

    def graph_layers(self) -> list[GraphLayer]:
        """Each Block's graph with its DAG region and node layers; with ``small``, the
        classifier's graph (every entry read, no layers)."""
        out = [
            GraphLayer(f"layers.{i}.graph", b.graph, b.allowed_edges(), b.node_layout())
            for i, b in enumerate(self.layers)
        ]
        classifier = self.classifier_graph()
        return out + ([GraphLayer("linear.graph", classifier)] if classifier is not None else [])

    def classifier_graph(self) -> Optional[Graph]:
        """The classifier's graph layer (``small: True``), or None for a plain Linear."""
        return self.linear.graph if isinstance(self.linear, GraphLinear) else None

    def profile(self, input_size: Optional[int] = None) -> Profile:
        """The original's formula (models/counting.py: ``count_mobilenet``); ``input_size``
        None is its 224 x 224 ImageNet assumption, which the paper's tables use."""
        from models.counting import count_mobilenet  # noqa: PLC0415

        count = count_mobilenet(self, input_size)
        lines = [
            f"  Block {b.index}: {b.num_edges} edges, dead source nodes per layer "
            f"{list(b.dead_sources)}, outputs without in-edge {b.dead_outputs}"
            for b in count.blocks
        ]
        where = (
            "224x224 ImageNet input, as the original and the paper count"
            if input_size is None
            else f"{input_size}x{input_size} input"
        )
        return Profile(
            params=count.params,
            macs=count.macs,
            dense_params=sum(p.numel() for p in self.parameters()),
            input_size=input_size,
            method=f"the original's formula (edge budgets + 9 per node with an out-edge), {where}",
            lines=tuple(lines),
            detail=count,
        )

    def fast_plan(self, rule: str = "original"):
        """Dead-node removal (models/graphs/fast/removal.py); ``rule`` "original" keeps the
        original's node counts, "transitive" removes what no output depends on."""
        from models.graphs.fast.removal import plan_mobilenet  # noqa: PLC0415

        return plan_mobilenet(self, rule=rule)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], prune_rate: Optional[float] = None
    ) -> Optional["MobileNetV1Like"]:
        """Shaped for an original checkpoint (``layers.0.graph.weight``). Its prune rate cannot
        be read from dnw weights: ValueError unless given (a random graph's mask tells)."""
        if "layers.0.graph.weight" not in state:
            return None
        mask = state.get("layers.0.graph.mask")
        if prune_rate is None and mask is None:
            raise ValueError(
                "a MobileNetV1Like's prune rate cannot be read from its weights: "
                "give the experiment file it was trained with"
            )
        graph = (
            "dnw" if mask is None else ("dnw_no_update" if bool((mask == 1).all()) else "random")
        )
        return cls(
            prune_rate=prune_rate or 0.0,
            graph=graph,
            in_channels=state["conv1.weight"].shape[1],
            small="linear.graph.weight" in state,
            output_size=next(v.shape[0] for k, v in state.items() if k.startswith("linear.")),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out), inplace=True)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # [B, 1024]
        return self.linear(out)
