"""The static tiny model's graph as one autograd Function on the CPU fast path.

Same math as ``StaticNeuralGraph``'s step-by-step forward (docs/faithfulness.md), arranged for
memory traffic, which is most of what a training step costs on a CPU (bench/README.md):

- forward, "pull": every group's node update (the native kernel: norm, ReLU, depthwise) writes
  its output into one [B, dim, H, W] buffer, and a group's state is then one block-diagonal
  CSR product over the earlier channels of that buffer, written once. The step-by-step form
  adds each step's out-edges into every later group: a new tensor per addition.
- backward, "push": the gradient of a group's node output is one transposed product over the
  later channels of one buffer of state gradients. The step-by-step form concatenates the
  later groups' gradients for every step.
- the edge-weight gradient of a target group is one matrix product [n_j, B*H*W] x [B*H*W, r_j]
  over channel-major copies that the node kernels write beside their outputs (oneDNN's 1x1
  weight gradient reorders both operands instead).

The sums run in another order than the step-by-step form: results agree to float rounding
(tests/models/test_static_fused.py checks logits and every gradient).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs import fastpath, native
from models.graphs.products import graph_product, graph_products

__all__ = ["static_graph", "FUSED_MAX_DENSITY"]

# Above this density a product block is a batched GEMM instead of CSR products: the two cost the
# same near 28 % on the project's CPU ([576, 192], [192, 192] and [768, 32] blocks at batch 128,
# 8x8 maps).
FUSED_MAX_DENSITY = 0.25


class _Plan:
    """The products of one forward: pulls (a target group's rows over all earlier channels),
    pushes (a source group's out-edges, transposed, over all later rows) and the read-out; each
    a CSR product, or a batched GEMM where its block is dense (``graph_product``)."""

    def __init__(self, w2d: Tensor, rng: Sequence[int], feature_dim: int) -> None:
        d, last = rng[-1], len(rng) - 2

        def form(block: Tensor, transposed: bool = False, col_offset: int = 0, stride=d):
            return graph_product(block, transposed, stride, col_offset, FUSED_MAX_DENSITY)

        self.pull = [None] + [form(w2d[rng[j] : rng[j + 1], : rng[j]]) for j in range(1, last + 1)]
        self.push_t = [
            form(w2d[rng[i + 1] :, rng[i] : rng[i + 1]], True, rng[i + 1]) for i in range(last)
        ]
        out = w2d[d - feature_dim :, rng[last] :]
        forms = [(False, d, rng[last]), (True, None, 0)]
        self.out, self.out_t = graph_products(out, forms, FUSED_MAX_DENSITY)


class _StaticGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, rng, feature_dim, eps, stem, w, k, *norm_params):  # noqa: D102
        b, _, h, wd = stem.shape
        d, num = rng[-1], len(rng) - 1
        grads = any(ctx.needs_input_grad)
        nodes = stem.new_empty(b, d, h, wd)  # every group's node output, in place
        nodes_cm = stem.new_empty(d, b, h, wd) if grads else None  # their channel-major copy
        states, stats = [stem.contiguous()], []
        k = k.contiguous()
        for j in range(num):
            if j:
                states.append(plan.pull[j](nodes))
            gamma, beta = norm_params[2 * j], norm_params[2 * j + 1]
            _, mean, rstd = native.node_forward(
                states[j], k[rng[j] : rng[j + 1]], gamma, beta, eps,
                out=nodes, out_c0=rng[j], out_cm=nodes_cm, out_cm0=rng[j],
            )  # fmt: skip
            stats.append((mean, rstd))
        # as the original, the read-out nodes lie inside the last group, which the last step's
        # own out-edges add into; a copy, since the last node's backward needs its state as it
        # was (.contiguous() would return the state itself when the read-out is the whole group)
        last = states[-1][:, states[-1].shape[1] - feature_dim :]
        out = last.clone(memory_format=torch.contiguous_format)
        plan.out(nodes, out=out, beta=1.0)
        if grads:
            ctx.plan, ctx.rng, ctx.feature_dim = plan, rng, feature_dim
            ctx.states, ctx.stats, ctx.nodes_cm = states[1:], stats, nodes_cm
            ctx.save_for_backward(states[0], k, *norm_params)
        return out

    @staticmethod
    def backward(ctx, g_out: Tensor):  # noqa: D102
        plan, rng, f = ctx.plan, ctx.rng, ctx.feature_dim
        stem, k, *norm_params = ctx.saved_tensors
        states, nodes_cm = [stem, *ctx.states], ctx.nodes_cm
        d, last = rng[-1], len(rng) - 2
        b, _, h, wd = g_out.shape
        n = b * h * wd
        g_out = g_out.contiguous()
        g_states = g_out.new_empty(b, d, h, wd)  # every group's state gradient, in place
        g_states_cm = g_out.new_empty(d, b, h, wd)
        g_w = g_out.new_zeros(d, d)  # only the region the forward reads gets a gradient
        g_k = torch.empty_like(k)
        g_norm: list[Optional[Tensor]] = [None] * len(norm_params)
        g_out_cm = g_out.transpose(0, 1).contiguous()
        g_w[d - f :, rng[last] :].addmm_(
            g_out_cm.view(f, n), nodes_cm[rng[last] :].view(d - rng[last], n).t(), beta=0
        )
        g_stem = None
        for j in range(last, -1, -1):
            g_node = plan.out_t(g_out) if j == last else plan.push_t[j](g_states)
            mean, rstd = ctx.stats[j]
            # the stem's gradient leaves as a tensor of its own; the others go into the buffers
            into = (
                {}
                if j == 0
                else dict(out=g_states, out_c0=rng[j], out_cm=g_states_cm, out_cm0=rng[j])
            )
            g_x, g_k_j, g_gamma, g_beta = native.node_backward(
                states[j], g_node, k[rng[j] : rng[j + 1]], norm_params[2 * j],
                norm_params[2 * j + 1], mean, rstd, **into,
            )  # fmt: skip
            g_k[rng[j] : rng[j + 1]] = g_k_j
            g_norm[2 * j], g_norm[2 * j + 1] = g_gamma, g_beta
            if j == last:  # the read-out takes these nodes' states directly too
                g_states[:, d - f :] += g_out
                g_states_cm[d - f :] += g_out_cm
            if j:  # a target group's in-edges come from every earlier channel
                rows = g_states_cm[rng[j] : rng[j + 1]].view(rng[j + 1] - rng[j], n)
                g_w[rng[j] : rng[j + 1], : rng[j]].addmm_(
                    rows, nodes_cm[: rng[j]].view(rng[j], n).t(), beta=0
                )
            else:
                g_stem = g_x
        return (None, None, None, None, g_stem, g_w.view(d, d, 1, 1), g_k, *g_norm)


def static_graph(
    stem: Tensor,
    w: Tensor,
    conv_weight: Tensor,
    norms: Sequence[nn.InstanceNorm2d],
    rng: Sequence[int],
    feature_dim: int,
) -> Optional[Tensor]:
    """The read-out nodes' states [B, feature_dim, H, W] of the static DAG, or None where the
    fused path does not apply (not the CPU fast path, no native kernels, norms that are not
    affine InstanceNorms without running statistics).

    ``stem``: the first group's states; ``w``: the effective edge weight [dim, dim, 1, 1];
    ``conv_weight``: the nodes' depthwise weights [dim, 1, 3, 3]; ``rng``: group boundaries.
    """
    if not fastpath.fused_static_on(stem):
        return None
    if w.dtype != torch.float32 or conv_weight.dtype != torch.float32:
        return None
    if any(nm.track_running_stats or not nm.affine for nm in norms):
        return None
    if len({nm.eps for nm in norms}) != 1:
        return None
    plan = _Plan(w.reshape(w.shape[0], w.shape[1]), rng, feature_dim)
    params = [p for nm in norms for p in (nm.weight, nm.bias)]
    return _StaticGraph.apply(
        plan, tuple(rng), feature_dim, norms[0].eps, stem, w, conv_weight, *params
    )
