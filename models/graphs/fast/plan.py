"""A plan: which nodes of a trained wired network are kept, and the edges among them.

Framework-neutral data (``removal.py`` decides, ``backends.py`` runs it): per Block, the kept
nodes of each source layer with their node ops (norm -> ReLU -> 3x3 depthwise) and the edges
among kept nodes as (src, dst, weight).

Every Block is described in "pull" form. Source layer 0 reads the Block's input; source layer
i > 0 is a set of target nodes whose raw value is the sum of their in-edges from layers < i;
the outputs' raw value is the sum of their in-edges from every layer. That is the computation of
both MobileNetV1Like Blocks and the static tiny DAG (docs/faithfulness.md); only edges that
the full model's forward reads are listed, so the sums are those of the full model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["NodeOps", "BlockPlan", "HeadPlan", "NetPlan"]


@dataclass
class NodeOps:
    """The ops of one source layer's kept nodes: norm, ReLU, 3x3 depthwise conv (pad 1).

    ``norm`` is ``"batch"`` (an eval BatchNorm folded to ``x * scale + shift``) or
    ``"instance"`` (per-sample statistics, then ``* scale + shift``).
    """

    norm: str
    scale: Tensor  # [n]
    shift: Tensor  # [n]
    weight: Tensor  # [n, 1, 3, 3] depthwise filters
    stride: int = 1
    eps: float = 1e-5

    @property
    def size(self) -> int:
        return self.weight.shape[0]


@dataclass
class BlockPlan:
    """One Block's kept nodes and edges. Sources: layers in order; targets: the kept nodes of
    layers 1.. in order, then the kept outputs (``dst`` indexes that list)."""

    layers: list[NodeOps]
    num_outputs: int
    src: Tensor  # [E] int64, index into the kept sources
    dst: Tensor  # [E] int64, index into the kept targets; edges sorted by (dst, src)
    weight: Tensor  # [E]
    full_sizes: list[int]  # nodes per layer and outputs before removal
    kept_index: list[Tensor] = field(default_factory=list)  # original node ids, per layer + out

    @property
    def sizes(self) -> list[int]:
        """Kept nodes per source layer, then kept outputs (the original's ``block_sz``)."""
        return [op.size for op in self.layers] + [self.num_outputs]

    def source_offsets(self) -> list[int]:
        """Start of each layer in the source index space, and the total."""
        out = [0]
        for op in self.layers:
            out.append(out[-1] + op.size)
        return out

    def target_offsets(self) -> list[int]:
        """Start of layers 1.. and of the outputs in the target index space, and the total."""
        out = [0]
        for op in self.layers[1:]:
            out.append(out[-1] + op.size)
        out.append(out[-1] + self.num_outputs)
        return out

    def dense(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The edges as a dense [num_targets, num_sources] matrix."""
        w = torch.zeros(
            self.target_offsets()[-1], self.source_offsets()[-1], dtype=dtype or self.weight.dtype
        )
        w[self.dst, self.src] = self.weight.to(w.dtype)
        return w


@dataclass
class HeadPlan:
    """Classifier on the last Block's kept outputs; ``kind`` "pool" (MobileNetV1Like: norm,
    ReLU, global mean) or "window" (tiny model: mean of the read-out window)."""

    kind: str
    weight: Tensor  # [classes, kept]
    bias: Tensor  # [classes], constants of dropped nodes folded in
    scale: Optional[Tensor] = None  # "pool": final BatchNorm folded, [kept]
    shift: Optional[Tensor] = None
    window: tuple[int, int] = (0, 0)  # "window": first row/col and side of the mean
    full_features: int = 0
    num_constants: int = 0  # outputs folded into the bias


@dataclass
class NetPlan:
    """Stem (a module, already shrunk), Blocks, head."""

    stem: nn.Module
    blocks: list[BlockPlan]
    head: HeadPlan
    stem_full: int  # stem output channels before removal
    rule: str = "original"

    def build(self, backend: str) -> nn.Module:
        """The shrunk network (``network.FastGraphNet``) running its Blocks with ``backend``
        (``backends.BACKENDS``); in eval mode, on the CPU."""
        from models.graphs.fast.network import FastGraphNet  # noqa: PLC0415

        return FastGraphNet(self, backend)

    def report(self, backend: str) -> list[str]:
        """One line for the stem and head, one per Block: kept of total nodes, edges."""
        kept = self.kept_channels()
        lines = [
            f"fast_eval ({backend}): stem keeps {kept['stem']}/{self.stem_full} channels,"
            f" classifier reads {kept['features']}/{self.head.full_features} features"
            + (
                f" ({kept['constants']} constant outputs folded into its bias)"
                if kept["constants"]
                else ""
            )
        ]
        for i, block in enumerate(self.blocks):
            lines.append(
                f"  Block {i}: kept {block.sizes} of {block.full_sizes} nodes, "
                f"{int(block.weight.numel())} edges"
            )
        return lines

    def kept_channels(self) -> dict:
        """{"stem": kept, "blocks": [[inputs, layer 1, ..., outputs], ...], "features": kept,
        "constants": outputs folded into the classifier bias}."""
        return {
            "stem": self.blocks[0].layers[0].size,
            "blocks": [b.sizes for b in self.blocks],
            "features": self.head.weight.shape[1],
            "constants": self.head.num_constants,
        }
