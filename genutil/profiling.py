"""MACs and parameters of a wired network, counted the way the paper counts them (SPEC section 7).

The "FLOPs" of the paper's tables are multiply-adds. For a MobileNetV1Like Block whose output
map is s x s (reference README 4.5):

* edges: the Block's budget ``n_in * n_out * (1 - block prune rate)``, a FRACTIONAL number, not
  the count of non-zero entries; MACs ``edges * s^2``, params ``edges``;
* nodes: every non-output node with at least one out-edge runs a 3x3 depthwise conv: 9 params,
  ``9 * s^2`` MACs; a Block's MACs and params are each truncated to int;
* conv1: ``in_channels * 9`` params per channel that Block 0 uses, times the stem's s^2 for MACs;
* global pool: ``s^2`` per last-Block output with an in-edge; classifier: those outputs times
  ``output_size`` (with ``small: True``: the classifier graph's budget, truncated).
BatchNorm and biases are not counted.

Spatial sizes: ``input_size=None`` (the default) is the original's assumption of a 224 x 224
ImageNet input (112 after conv1, Blocks at 112, 56, 28, 14, 7), whatever the model's own
image_size; it reproduces the paper's ImageNet table and the original's numbers for CIFAR models
too (52 551 552 MACs / 212 946 params on the medium fixture). ``input_size=N`` derives the
sizes from an N x N input through the model's real strides instead: the true cost at that
resolution (for a model built with image_size 224, N = 224 gives the default's numbers; a CIFAR
model keeps its stride-1 stem, so its real cost at 32 x 32 is about 4.3M MACs, not 52.6M).

Numerics follow the original on purpose: its per-Block sum ``int(tensor + float)`` runs in
float32 (torch promotes a 0-dim int64 tensor plus a Python float to float32), and float64 would
give 52 551 549 instead of 52 551 552 on the medium fixture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs.mobilenetv1like import block_allowed

__all__ = [
    "BlockProfile",
    "ProfileResult",
    "graph_params",
    "profile",
    "profile_block",
    "spatial_sizes",
]

_IMAGENET_STEM = 224 // 2  # the original's hard-coded spatial size after conv1


@dataclass(frozen=True)
class BlockProfile:
    """Counts for one Block. Node counts are over its effective weight W as the original reads
    it: the whole matrix, including entries the forward never uses."""

    index: int
    spatial: int  # side of the Block's output map
    edge_budget: float  # n_in * n_out * (1 - block prune rate)
    num_edges: int  # non-zero entries of W
    num_unread_edges: int  # non-zero entries the forward never reads (not earlier -> later)
    sources_with_output: tuple[int, ...]  # per source layer [inputs, intermediate 1, ...]
    dead_sources: tuple[int, ...]  # per source layer: nodes without an out-edge
    outputs_with_input: int
    dead_outputs: int  # output nodes without an in-edge
    macs: int
    params: int

    @property
    def num_nodes_with_ops(self) -> int:
        """Non-output nodes that run a depthwise conv (they have an out-edge)."""
        return sum(self.sources_with_output)


@dataclass(frozen=True)
class ProfileResult:
    """Totals (``params``, ``macs``) and their parts."""

    params: int
    macs: int
    blocks: tuple[BlockProfile, ...]
    stem_spatial: int
    stem_macs: int
    stem_params: int
    pool_macs: int
    classifier_macs: int
    classifier_params: int
    input_size: int | None  # None: the original's ImageNet assumption


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 1 - 3) // stride + 1  # 3x3 kernel, padding 1


def spatial_sizes(model: nn.Module, input_size: int | None = None) -> tuple[int, list[int]]:
    """(side after conv1, side of each Block's output) for ``input_size`` (None: ImageNet)."""
    if input_size is None:
        # The original halves after every Block but the first, assuming the strides.
        sides = [_IMAGENET_STEM]
        for _ in range(len(model.layers) - 1):
            sides.append(sides[-1] // 2)
        return _IMAGENET_STEM, sides
    stem = _conv_out(input_size, model.conv1.stride[0])
    sides, side = [], stem
    for block in model.layers:
        side = _conv_out(side, block.stride)
        sides.append(side)
    return stem, sides


def _original_int(count: int, budget: float) -> int:
    # int(<0-dim int64 tensor> + <python float>) as the original wrote it: float32 arithmetic.
    return int(torch.tensor(count, dtype=torch.int64) + budget)


def _layer_sizes(block: nn.Module) -> list[int]:
    return [block.inp] + [block.oup] * (block.blocks - 1)


def profile_block(block: nn.Module, spatial: int, index: int = 0) -> BlockProfile:
    """Counts of one Block at output side ``spatial`` (reference README 4.5)."""
    with torch.no_grad():
        w = block.get_weight().detach().reshape(block.num_targets, block.num_sources)
        nonzero = w != 0  # [n_out, n_in]
        has_output = nonzero.any(0).tolist()  # per source node
        has_input = nonzero.any(1)  # per target node
        allowed = block_allowed(block.inp, block.oup, block.blocks).to(w.device)
        unread = int((nonzero & ~allowed).sum())
    sizes = _layer_sizes(block)
    layers, start = [], 0
    for size in sizes:
        layers.append(sum(has_output[start : start + size]))
        start += size
    outputs_with_input = int(has_input[-block.oup :].sum())
    budget = w.shape[1] * w.shape[0] * (1 - block.graph.prune_rate)
    nodes = sum(layers)
    return BlockProfile(
        index=index,
        spatial=spatial,
        edge_budget=budget,
        num_edges=int(nonzero.sum()),
        num_unread_edges=unread,
        sources_with_output=tuple(layers),
        dead_sources=tuple(s - k for s, k in zip(sizes, layers)),
        outputs_with_input=outputs_with_input,
        dead_outputs=block.oup - outputs_with_input,
        macs=_original_int(nodes * 3 * 3 * spatial * spatial, budget * spatial * spatial),
        params=_original_int(nodes * 3 * 3, budget),
    )


def profile(model: nn.Module, input_size: int | None = None) -> ProfileResult:
    """MACs and params of a MobileNetV1Like as the paper counts them (see the module docstring).

    ``input_size=None`` reproduces the original (and the paper's table); an int derives the
    spatial sizes from that input side. A DataParallel wrapper is looked through.
    """
    model = getattr(model, "module", model)
    stem_spatial, sides = spatial_sizes(model, input_size)
    blocks = tuple(profile_block(b, s, i) for i, (b, s) in enumerate(zip(model.layers, sides)))

    used_by_block0 = blocks[0].sources_with_output[0]
    stem_params = model.conv1.in_channels * used_by_block0 * 3 * 3
    stem_macs = stem_params * stem_spatial * stem_spatial
    outputs = blocks[-1].outputs_with_input
    pool_macs = sides[-1] * sides[-1] * outputs
    linear = model.linear
    if hasattr(linear, "graph"):  # small: a pruned graph classifier, counted by its budget
        n = linear.graph.weight.shape[0] * linear.graph.weight.shape[1]
        classifier_params = int(n * (1 - linear.graph.prune_rate))
    else:
        classifier_params = outputs * linear.out_features
    classifier_macs = classifier_params
    return ProfileResult(
        params=sum(b.params for b in blocks) + stem_params + classifier_params,
        macs=sum(b.macs for b in blocks) + stem_macs + pool_macs + classifier_macs,
        blocks=blocks,
        stem_spatial=stem_spatial,
        stem_macs=stem_macs,
        stem_params=stem_params,
        pool_macs=pool_macs,
        classifier_macs=classifier_macs,
        classifier_params=classifier_params,
        input_size=input_size,
    )


def graph_params(weight: Tensor, prune_rate: float) -> int:
    """Parameters of a tiny neural graph as the original's ``profiling()`` counts them.

    ``weight`` is the effective edge weight [n_out, n_in, 1, 1]: the edge budget
    ``n_in * n_out * (1 - prune_rate)`` plus 9 for every source node with an out-edge (its
    depthwise conv); stem and classifier are not counted. Same float32 sum as above.
    """
    w = weight.detach().reshape(weight.shape[0], -1)
    nodes = int((w != 0).any(0).sum())
    return _original_int(nodes * 3 * 3, w.shape[1] * w.shape[0] * (1 - prune_rate))


def profile_or_none(model: nn.Module, input_size: int | None = None) -> ProfileResult | None:
    """``profile`` for models it applies to (MobileNetV1Like); None for the others."""
    inner = getattr(model, "module", model)
    if not (hasattr(inner, "layers") and hasattr(inner, "conv1")):
        return None
    return profile(inner, input_size)


def describe(result: ProfileResult) -> list[str]:
    """Lines for the console: totals as the paper counts them, and dead nodes per block."""
    where = (
        "224x224 ImageNet input, as the original and the paper count"
        if result.input_size is None
        else f"{result.input_size}x{result.input_size} input"
    )
    lines = [
        f"params {result.params / 1e6:.3f}M ({result.params}), MACs "
        f"{result.macs / 1e6:.1f}M ({result.macs}) [{where}]"
    ]
    for b in result.blocks:
        lines.append(
            f"  Block {b.index}: {b.num_edges} edges, dead source nodes per layer "
            f"{list(b.dead_sources)}, outputs without in-edge {b.dead_outputs}"
        )
    return lines
