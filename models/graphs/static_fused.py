"""The static tiny model's graph as one autograd Function on the CPU fast path.

Same math as ``StaticNeuralGraph``'s step-by-step forward (docs/faithfulness.md), arranged for
memory traffic, which is most of what a training step costs on a CPU (bench/README.md). The
native kernels (``native.StaticDag``, node_ops.c) run the whole DAG one sample at a time, so
that a sample's node planes stay in a core's cache from the first group to the read-out:

- forward, "pull": a node's state is its CSR row of in-edges over the sample's earlier node
  outputs, then the node update (norm, ReLU, depthwise conv) writes its output beside them
  and, for the weight gradient, into a channel-major copy. The step-by-step form adds each
  step's out-edges into every later group over the whole batch: a new tensor per addition,
  and every earlier plane read back from memory for every group.
- backward, "push": a node's output gradient is its transposed CSR row of out-edges over the
  sample's later state gradients, then the node update's backward. The kernel, gamma and beta
  gradients are summed per plane, then over the samples in order.
- the edge-weight gradient of a target group is one matrix product [n_j, B*H*W] x [B*H*W, r_j]
  over the channel-major copies (oneDNN's 1x1 weight gradient reorders both operands instead);
  the straight-through rule needs it for every edge of the region the forward reads.

The sums run in another order than the step-by-step form: results agree to float rounding,
and do not depend on the number of threads (tests/models/test_static_fused.py checks logits
and every gradient).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs import fastpath, native

__all__ = ["static_graph"]


class _StaticGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dag, eps, stem, w, k, *norm_params):  # noqa: D102
        gamma, beta = torch.cat(norm_params[0::2]), torch.cat(norm_params[1::2])
        grads = any(ctx.needs_input_grad)
        states, mean, rstd, nodes_cm, out = dag.forward(
            stem.contiguous(), k, gamma, beta, eps, cm=grads
        )
        if grads:
            ctx.dag, ctx.nodes_cm = dag, nodes_cm
            ctx.save_for_backward(states, mean, rstd, k, gamma, beta)
        return out

    @staticmethod
    def backward(ctx, g_out: Tensor):  # noqa: D102
        dag, nodes_cm = ctx.dag, ctx.nodes_cm
        states, mean, rstd, k, gamma, beta = ctx.saved_tensors
        g_out = g_out.contiguous()
        g_stem, g_states_cm, g_k, g_gamma, g_beta = dag.backward(
            g_out, states, mean, rstd, k, gamma, beta
        )
        rng, d, f = dag.rng.tolist(), dag.D, dag.f
        last, n = rng[-2], g_out.shape[0] * g_out.shape[2] * g_out.shape[3]
        g_w = g_out.new_zeros(d, d)  # only the region the forward reads gets a gradient
        g_out_cm = g_out.transpose(0, 1).contiguous()
        g_w[d - f :, last:].addmm_(
            g_out_cm.view(f, n), nodes_cm[last:].view(d - last, n).t(), beta=0
        )
        for j in range(
            1, len(rng) - 1
        ):  # a target group's in-edges come from every earlier channel
            rows = g_states_cm[rng[j] : rng[j + 1]].view(rng[j + 1] - rng[j], n)
            g_w[rng[j] : rng[j + 1], : rng[j]].addmm_(
                rows, nodes_cm[: rng[j]].view(rng[j], n).t(), beta=0
            )
        sizes = [hi - lo for lo, hi in zip(rng, rng[1:])]
        g_norm = [g for pair in zip(g_gamma.split(sizes), g_beta.split(sizes)) for g in pair]
        return (None, None, g_stem, g_w.view(d, d, 1, 1), g_k, *g_norm)


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
    dag = native.StaticDag(w.detach().reshape(rng[-1], rng[-1]), rng, feature_dim)
    params = [p for nm in norms for p in (nm.weight, nm.bias)]
    return _StaticGraph.apply(dag, norms[0].eps, stem, w, conv_weight, *params)
