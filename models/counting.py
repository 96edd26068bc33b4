"""Parameters and multiply-adds as the paper counts them (docs/faithfulness.md, "Counting").

The "FLOPs" of the paper's tables are multiply-adds, and its parameters are EFFECTIVE ones: the
edges a wiring keeps, not the dense weight that holds them. Three counts live here, each used by
the networks' ``profile()`` (the contract, ``models/contract.py``):

- ``count_generic``: any network. Kept edges (non-zero entries of each graph layer's effective
  weight) plus every other parameter; MACs of one forward at the given input side, where a
  convolution counts ``out_h * out_w * out_c * in_c / groups * kh * kw``, a linear layer
  ``in * out`` and a graph layer ``kept edges * out_h * out_w``.
- ``count_mobilenet``: the original's formula for MobileNetV1Like (per Block: the edge BUDGET
  ``n_in * n_out * (1 - block prune rate)``, a fractional number, plus 9 per non-output node
  with an out-edge; the original's 224 x 224 ImageNet spatial sizes unless an input side is
  given; each Block's totals truncated in float32, as the original's ``int(tensor + float)``).
- ``count_tiny``: the tiny classifiers (about 41k effective parameters in the paper's Table 1):
  the original's graph count (edge budget plus 9 per source node with an out-edge) plus the stem
  and classifier weights and biases (norms not counted, as in the MobileNet formula); MACs at
  the model's input side per pass over the graph (the static DAG once, the discrete-time model
  once per time step, the continuous-time model once per function evaluation of its ODE solver,
  a number that changes with the input).

Norm and bias parameters count in the generic count; the MobileNetV1Like formula leaves both
out, as the original did, and the tiny count leaves out the norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from models.contract import Profile
from models.graphs.edges import Graph

__all__ = [
    "BlockCount",
    "MobileNetCount",
    "count_generic",
    "count_mobilenet",
    "count_block",
    "count_tiny",
    "graph_params",
    "module_macs",
    "spatial_sizes",
]

_IMAGENET_STEM = 224 // 2  # the original's hard-coded spatial size after conv1
_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)


def _original_int(count: int, budget: float) -> int:
    # int(<0-dim int64 tensor> + <python float>) as the original wrote it: float32 arithmetic.
    return int(torch.tensor(count, dtype=torch.int64) + budget)


@torch.no_grad()
def module_macs(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """(multiply-adds per sample of ``module(x)``, its output): convolutions, linear layers and
    graph layers (at their kept edges) that run as modules."""
    total = [0]

    def hook(m: nn.Module, inputs: tuple, out: Tensor) -> None:
        per_sample = out.numel() // max(out.shape[0], 1)
        if isinstance(m, Graph):
            kept = int(torch.count_nonzero(m.get_weight()))
            total[0] += kept * per_sample // max(m.weight.shape[0], 1)
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += per_sample * k
        elif isinstance(m, nn.Linear):
            total[0] += per_sample * m.in_features

    kinds = (Graph, nn.Conv2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    try:
        out = module(x)
    finally:
        for h in handles:
            h.remove()
    return total[0], out


def count_generic(model: nn.Module, input_size: Optional[int] = None) -> Profile:
    """The generalised count of any network implementing the contract (module docstring)."""
    layers = model.graph_layers()
    graph_weights = {id(layer.module.weight) for layer in layers}
    kept = sum(int(torch.count_nonzero(layer.effective_weight())) for layer in layers)
    others = sum(p.numel() for p in model.parameters() if id(p) not in graph_weights)
    dense = sum(p.numel() for p in model.parameters())
    channels, height, width = model.input_shape()
    if input_size is not None:
        height = width = input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        macs, _ = module_macs(model, torch.zeros(1, channels, height, width, device=device))
    finally:
        model.train(was_training)
    return Profile(
        params=kept + others,
        macs=macs,
        dense_params=dense,
        input_size=height,
        method=f"kept edges + other parameters; MACs of one {height}x{width} forward",
        lines=(f"  {len(layers)} graph layers: {kept:,} kept edges; other parameters {others:,}",),
    )


def graph_params(weight: Tensor, prune_rate: float) -> int:
    """Parameters of a tiny neural graph as the original's ``profiling()`` counts them.

    ``weight`` is the effective edge weight [n_out, n_in, 1, 1]: the edge budget
    ``n_in * n_out * (1 - prune_rate)`` plus 9 for every source node with an out-edge (its
    depthwise conv), in the original's float32 sum.
    """
    w = weight.detach().reshape(weight.shape[0], -1)
    nodes = int((w != 0).any(0).sum())
    return _original_int(nodes * 3 * 3, w.shape[1] * w.shape[0] * (1 - prune_rate))


def count_tiny(model: nn.Module, steps: int, input_size: Optional[int] = None) -> Profile:
    """The tiny classifiers' count (module docstring); ``steps``: passes over the graph."""
    layer = model.graph_layers()[0]
    graph = layer.module
    w = layer.effective_weight()
    nodes = int((w != 0).any(0).sum())
    budget = w.numel() * (1 - graph.prune_rate)
    in_graph = graph_params(w, graph.prune_rate)
    node_weights = {id(graph.weight), id(model.node_conv_weight())}
    others = sum(
        p.numel()
        for m in model.modules()
        if not isinstance(m, _NORMS)
        for p in m.parameters(recurse=False)
        if id(p) not in node_weights
    )
    size = input_size if input_size is not None else model.image_size
    device = graph.weight.device
    x = torch.zeros(1, model.in_channels, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        stem_macs, stem = module_macs(model.downsample, x)
    finally:
        model.train(was_training)
    side = stem.shape[-1]
    graph_macs = steps * _original_int(nodes * 9 * side * side, budget * side * side)
    head_macs = model.fc.in_features * model.fc.out_features
    dense = sum(p.numel() for p in model.parameters())
    return Profile(
        params=in_graph + others,
        macs=stem_macs + graph_macs + head_macs,
        dense_params=dense,
        input_size=size,
        method=(
            "edge budget + 9 per node with an out-edge (the original's graph count) + stem and "
            f"classifier; MACs at {size}x{size}"
        ),
        lines=(
            f"  graph: {budget:,.0f} edges (budget) of {w.numel():,}, {nodes} nodes with an "
            f"out-edge: {in_graph:,} parameters, {graph_macs:,} MACs"
            + (f" ({steps} passes)" if steps != 1 else ""),
            f"  stem and classifier: {others:,} parameters (norms not counted), "
            f"{stem_macs + head_macs:,} MACs",
        ),
    )


@dataclass(frozen=True)
class BlockCount:
    """Counts for one MobileNetV1Like Block. Node counts are over its effective weight W as the
    original reads it: the whole matrix, including entries the forward never uses."""

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
class MobileNetCount:
    """MobileNetV1Like totals (``params``, ``macs``) and their parts."""

    params: int
    macs: int
    blocks: tuple[BlockCount, ...]
    stem_spatial: int
    stem_macs: int
    stem_params: int
    pool_macs: int
    classifier_macs: int
    classifier_params: int
    input_size: Optional[int]  # None: the original's ImageNet assumption


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 1 - 3) // stride + 1  # 3x3 kernel, padding 1


def spatial_sizes(model: nn.Module, input_size: Optional[int] = None) -> tuple[int, list[int]]:
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


def count_block(block: nn.Module, spatial: int, index: int = 0) -> BlockCount:
    """Counts of one Block at output side ``spatial`` (the original's formula)."""
    with torch.no_grad():
        w = block.get_weight().detach().reshape(block.num_targets, block.num_sources)
        nonzero = w != 0  # [n_out, n_in]
        has_output = nonzero.any(0).tolist()  # per source node
        has_input = nonzero.any(1)  # per target node
        unread = int((nonzero & ~block.allowed_edges().to(w.device)).sum())
    sizes = [block.inp] + [block.oup] * (block.blocks - 1)
    layers, start = [], 0
    for size in sizes:
        layers.append(sum(has_output[start : start + size]))
        start += size
    outputs_with_input = int(has_input[-block.oup :].sum())
    budget = w.shape[1] * w.shape[0] * (1 - block.graph.prune_rate)
    nodes = sum(layers)
    return BlockCount(
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


def count_mobilenet(model: nn.Module, input_size: Optional[int] = None) -> MobileNetCount:
    """MACs and params of a MobileNetV1Like by the original's formula (module docstring)."""
    stem_spatial, sides = spatial_sizes(model, input_size)
    blocks = tuple(count_block(b, s, i) for i, (b, s) in enumerate(zip(model.layers, sides)))
    used_by_block0 = blocks[0].sources_with_output[0]
    stem_params = model.conv1.in_channels * used_by_block0 * 3 * 3
    stem_macs = stem_params * stem_spatial * stem_spatial
    outputs = blocks[-1].outputs_with_input
    pool_macs = sides[-1] * sides[-1] * outputs
    classifier = model.classifier_graph()
    if classifier is not None:  # small: a pruned graph classifier, counted by its budget
        n = classifier.weight.shape[0] * classifier.weight.shape[1]
        classifier_params = int(n * (1 - classifier.prune_rate))
    else:
        classifier_params = outputs * model.output_size
    return MobileNetCount(
        params=sum(b.params for b in blocks) + stem_params + classifier_params,
        macs=sum(b.macs for b in blocks) + stem_macs + pool_macs + classifier_params,
        blocks=blocks,
        stem_spatial=stem_spatial,
        stem_macs=stem_macs,
        stem_params=stem_params,
        pool_macs=pool_macs,
        classifier_macs=classifier_params,
        classifier_params=classifier_params,
        input_size=input_size,
    )
