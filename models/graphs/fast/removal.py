"""Dead-node removal: the plan of a MobileNetV1Like or StaticNeuralGraph (docs/faithfulness.md,
"Fast evaluation").

Which nodes are kept:

* MobileNetV1Like, ``rule="original"`` (default): the original's rule, so the counts equal its
  ``block_sz``: a source node is kept if its column of the WHOLE effective weight has a non-zero
  entry (entries the forward never reads count too); the last Block keeps the outputs with an
  in-edge, the others the outputs the next Block keeps as inputs.
* ``rule="transitive"`` (the static tiny model always; MobileNetV1Like on request): dead-code
  elimination from the classifier backwards over the edges the forward reads, so a node whose
  out-edges all end in dropped nodes is dropped too.

Exact in every case (docs/faithfulness.md, "Where we differ"): a last-Block output that the
classifier reads but that has no in-edge is 0 before the final BatchNorm, so it reaches the
classifier as the constant relu(bn(0)); it is folded into the classifier's bias instead of being
dropped. Outputs the classifier never reads (a zero column, e.g. with ``small: True``) are dropped.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs.fast.plan import BlockPlan, HeadPlan, NetPlan, NodeOps

__all__ = ["plan_mobilenet", "plan_static"]


def _fold_bn(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval BatchNorm as x * scale + shift."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    weight = bn.weight if bn.weight is not None else torch.ones_like(inv)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(inv)
    scale = weight * inv
    return scale, bias - bn.running_mean * scale


def _build_edges(
    w: Tensor, src_cols: list[Tensor], tgt_rows: list[Tensor], out_rows: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Edges among kept nodes, pull form: targets of layer i read layers < i, outputs read all.

    ``w`` [rows, cols] effective weight; ``src_cols[l]`` the kept columns of layer l;
    ``tgt_rows[i - 1]`` the rows of layer i's kept nodes; ``out_rows`` the kept output rows.
    Works on the non-zero entries only (a row may be a target twice: a node of the static
    model's last group is read by that step and is also an output).
    """
    rows, cols = torch.nonzero(w, as_tuple=True)
    source = torch.full((w.shape[1],), -1, dtype=torch.long)  # column -> kept source index
    layer = torch.full((w.shape[1],), len(src_cols), dtype=torch.long)  # column -> its layer
    start = 0
    for j, kept in enumerate(src_cols):
        source[kept] = torch.arange(start, start + len(kept))
        layer[kept] = j
        start += len(kept)
    empty = torch.zeros(0, dtype=torch.long)
    srcs, dsts, vals, t0 = [empty], [empty], [w.new_zeros(0)], 0
    for i, kept_rows in enumerate(list(tgt_rows) + [out_rows]):
        if len(kept_rows) == 0:
            continue
        target = torch.full((w.shape[0],), -1, dtype=torch.long)  # row -> kept target index
        target[kept_rows] = torch.arange(t0, t0 + len(kept_rows))
        # nonzero() is row-major: only the entries in this group's row span need a look
        lo = int(torch.searchsorted(rows, kept_rows.min()))
        hi = int(torch.searchsorted(rows, kept_rows.max(), right=True))
        r, c = rows[lo:hi], cols[lo:hi]
        sel = (target[r] >= 0) & (layer[c] <= i)  # from the layers before target layer i
        dst, src, val = target[r[sel]], source[c[sel]], w[r[sel], c[sel]]
        key = dst * w.shape[1] + src
        if not bool((key[1:] > key[:-1]).all()):  # row-major already, for both models
            order = torch.argsort(key)
            dst, src, val = dst[order], src[order], val[order]
        srcs.append(src)
        dsts.append(dst)
        vals.append(val)
        t0 += len(kept_rows)
    return torch.cat(srcs), torch.cat(dsts), torch.cat(vals)


def _transitive(
    w: Tensor, src_cols: list[Tensor], tgt_rows: list[Tensor], out_rows: Tensor
) -> list[Tensor]:
    """Keep-masks per source layer by dead-code elimination over the read edges.

    ``src_cols``/``tgt_rows`` are the full layers (tgt_rows[i - 1] pairs with src_cols[i]);
    ``out_rows`` the outputs that are needed.
    """
    nz = w != 0
    keep: list[Optional[Tensor]] = [None] * len(src_cols)
    for layer in range(len(src_cols) - 1, -1, -1):
        needed = [out_rows] + [
            rows[keep[i + 1]] for i, rows in enumerate(tgt_rows) if i + 1 > layer
        ]
        rows = torch.cat(needed)
        keep[layer] = nz[rows][:, src_cols[layer]].any(0)
    return keep  # type: ignore[return-value]


def _node_ops(norm: nn.Module, dw: Tensor, keep: Tensor, stride: int) -> NodeOps:
    if isinstance(norm, nn.BatchNorm2d):
        scale, shift = _fold_bn(norm)
        return NodeOps("batch", scale[keep], shift[keep], dw[keep], stride)
    if isinstance(norm, nn.InstanceNorm2d):
        n = norm.num_features
        gamma = norm.weight if norm.weight is not None else torch.ones(n)
        beta = norm.bias if norm.bias is not None else torch.zeros(n)
        return NodeOps("instance", gamma[keep], beta[keep], dw[keep], stride, float(norm.eps))
    raise TypeError(f"fast_eval: unsupported node norm {type(norm).__name__}")


def _mobilenet_block(
    block: nn.Module, w: Tensor, keep: list[Tensor], keep_out: Tensor
) -> BlockPlan:
    inp, oup, k = block.inp, block.oup, block.blocks
    cols = [torch.arange(inp)] + [inp + oup * i + torch.arange(oup) for i in range(k - 1)]
    rows = [oup * i + torch.arange(oup) for i in range(k)]  # layer i + 1 targets, last: outputs
    src_cols = [c[m] for c, m in zip(cols, keep)]
    tgt_rows = [r[m] for r, m in zip(rows[:-1], keep[1:])]
    src, dst, val = _build_edges(w, src_cols, tgt_rows, rows[-1][keep_out])
    conv = block.conv.weight if k > 1 else None
    layers = [_node_ops(block.norm[0], block.downsample[0].weight, keep[0], block.stride)]
    for i in range(k - 1):
        layers.append(_node_ops(block.norm[i + 1], conv[i * oup : (i + 1) * oup], keep[i + 1], 1))
    index = [torch.nonzero(m).flatten() for m in list(keep) + [keep_out]]
    return BlockPlan(
        layers, int(keep_out.sum()), src, dst, val, [inp] + [oup] * (k - 1) + [oup], index
    )


def _head_weight(linear: nn.Module) -> tuple[Tensor, Tensor]:
    """(weight [classes, features], bias [classes]) of a Linear or a GraphLinear."""
    if hasattr(linear, "get_weight"):  # small: True, a pruned graph classifier without bias
        w = linear.get_weight().detach().flatten(1)
        return w, torch.zeros(w.shape[0], dtype=w.dtype)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    return linear.weight.detach(), bias.detach()


@torch.no_grad()
def plan_mobilenet(model: nn.Module, rule: str = "original") -> NetPlan:
    """Plan for a MobileNetV1Like (see the module docstring for ``rule``)."""
    if rule not in ("original", "transitive"):
        raise ValueError(f"rule must be 'original' or 'transitive', got {rule!r}")
    blocks = list(model.layers)
    weights = [b.get_weight().detach().flatten(1).float() for b in blocks]
    head_w, head_b = _head_weight(model.linear)
    reads = (head_w != 0).any(0)  # features the classifier reads
    keep_out = reads.clone()
    keeps: list[list[Tensor]] = [[] for _ in blocks]
    for b in range(len(blocks) - 1, -1, -1):
        block, w = blocks[b], weights[b]
        inp, oup, k = block.inp, block.oup, block.blocks
        if b == len(blocks) - 1:
            has_input = (w[-oup:] != 0).any(1)
            constants = reads & ~has_input
            keep_out = reads & has_input
            last_out = keep_out
        if rule == "original":
            has_output = (w != 0).any(0)
            keeps[b] = [has_output[:inp]] + [
                has_output[inp + oup * i : inp + oup * (i + 1)] for i in range(k - 1)
            ]
        else:
            cols = [torch.arange(inp)] + [inp + oup * i + torch.arange(oup) for i in range(k - 1)]
            rows = [oup * i + torch.arange(oup) for i in range(k)]
            keeps[b] = _transitive(w, cols, rows[:-1], rows[-1][keep_out])
        keep_out = keeps[b][0]
    plans = []
    for b, block in enumerate(blocks):
        out = keeps[b + 1][0] if b + 1 < len(blocks) else last_out
        plans.append(_mobilenet_block(block, weights[b], keeps[b], out))
    stem = copy.deepcopy(model.conv1)
    keep_stem = keeps[0][0]
    stem.weight = nn.Parameter(model.conv1.weight.detach()[keep_stem].clone())
    stem.out_channels = int(keep_stem.sum())
    scale, shift = _fold_bn(model.bn)
    # a constant feature reaches the classifier as relu(bn(0)) = relu(shift)
    bias = head_b + head_w[:, constants] @ torch.relu(shift[constants])
    head = HeadPlan(
        "pool",
        head_w[:, last_out].clone(),
        bias,
        scale[last_out],
        shift[last_out],
        full_features=head_w.shape[1],
        num_constants=int(constants.sum()),
    )
    return NetPlan(stem.eval(), plans, head, model.conv1.out_channels, rule)


@torch.no_grad()
def plan_static(model: nn.Module) -> NetPlan:
    """Plan for a StaticNeuralGraph (docs/faithfulness.md, "The static tiny model"), with
    transitive removal.

    Node groups are the source layers; the targets of layer i are group i's nodes (their raw
    value is the sum of in-edges from earlier groups); the outputs are the last
    ``feature_dim`` nodes, which read every group (the last step reads its own group into them).
    A dropped output is exactly 0 here (no norm before the read-out), so nothing is folded.
    """
    rng, dim, feat = model.block_rng, model.dim, model.feature_dim
    if any(t != e for t, e in zip(model.targets[:-1], rng[1:-1])) or dim - feat < rng[-2]:
        raise ValueError("fast_eval: the static model's targets are not its node groups")
    w = model.graph.get_weight().detach().flatten(1).float()  # [dim, dim]
    groups = [torch.arange(rng[i], rng[i + 1]) for i in range(len(rng) - 1)]
    out_rows = torch.arange(dim - feat, dim)
    fc_w, fc_b = model.fc.weight.detach(), model.fc.bias.detach()
    keep_out = (fc_w != 0).any(0) & (w[out_rows] != 0).any(1)
    keep = _transitive(w, groups, groups[1:], out_rows[keep_out])
    src_cols = [g[m] for g, m in zip(groups, keep)]
    src, dst, val = _build_edges(w, src_cols, src_cols[1:], out_rows[keep_out])
    dw = model.conv.weight.detach()
    layers = [_node_ops(model.norm[i], dw[g], m, 1) for i, (g, m) in enumerate(zip(groups, keep))]
    index = [torch.nonzero(m).flatten() for m in list(keep) + [keep_out]]
    block = BlockPlan(
        layers, int(keep_out.sum()), src, dst, val, [len(g) for g in groups] + [feat], index
    )
    stem = copy.deepcopy(model.downsample)
    conv, bn = stem[-2], stem[-1]
    conv.weight = nn.Parameter(conv.weight.detach()[keep[0]].clone())
    conv.bias = nn.Parameter(conv.bias.detach()[keep[0]].clone())
    conv.out_channels = int(keep[0].sum())
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, name)
        t.data = t.data[keep[0]].clone()
    bn.num_features = conv.out_channels
    head = HeadPlan(
        "window",
        fc_w[:, keep_out].clone(),
        fc_b.clone(),
        window=(model.half - 1, 2),
        full_features=feat,
    )
    return NetPlan(stem.eval(), [block], head, model.downsample_dim, "transitive")
