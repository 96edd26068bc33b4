"""The tiny graph models' operations on a faster CPU path at the same math.

Measured on the project's 2-core CPUs (bench/README.md): a DNW step is the graph's 1x1
convolution, the nodes' norm / ReLU / depthwise convolution, and the memory traffic between
them.

- ``graph_conv``: a DNW graph keeps a few percent of its edges, but its straight-through update
  needs the gradient of every edge, used or not. So the weight gradient stays a dense product,
  while the forward ``W x`` and the input gradient ``W^T g`` touch only the kept edges: CSR
  products (products.py: the native kernels, else MKL through torch 16 samples a call), 3x
  faster than dense at 5 %.
- ``node_update``: a node's InstanceNorm, ReLU and depthwise convolution as one native kernel
  (models/graphs/native), one pass per plane forward and backward.
- ``bn_node_update``: a MobileNet Block's node in training, BatchNorm with the batch's
  statistics (and the running statistics' update), ReLU and the (strided) depthwise
  convolution, as one native kernel forward and backward.
- ``instance_norm``: ``group_norm`` with one channel per group is the same normalisation and is
  about 3x faster than ``instance_norm`` forward and backward.

Everything else (GPU, other dtypes, autocast, TorchScript, torch.compile) takes the plain torch
op; results equal the plain ops' up to the order of the float sums.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs import fastpath, native
from models.graphs.products import SparseWeight, sparse_weight

__all__ = ["bn_node_update", "graph_conv", "instance_norm", "node_update", "weight_slices"]


def _dense_weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """The dense 1x1 convolution's weight gradient (oneDNN): [O, I, 1, 1]."""
    w = grad.new_empty(grad.shape[1], x.shape[1], 1, 1)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        grad, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


class _SparseGraphConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, product, product_t) -> Tensor:  # noqa: D102
        x = x.contiguous()
        ctx.save_for_backward(x)
        ctx.product_t = product_t
        return product(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.product_t(grad)
        if ctx.needs_input_grad[1]:  # every edge, kept or not (the straight-through rule)
            grad_w = _dense_weight_grad(grad, x)
        return grad_x, grad_w, None, None


def graph_conv(x: Tensor, w: Tensor, sparse: SparseWeight | None | bool = True) -> Tensor:
    """``F.conv2d(x, w)`` for a graph weight ``w`` [n_out, n_in, 1, 1] that is mostly zeros.

    ``sparse``: a ``SparseWeight`` of ``w`` made earlier (shared by the time steps), True to
    decide here, False or None for the dense convolution.
    """
    if not fastpath.sparse_on(x):
        return F.conv2d(x, w)
    if sparse is True:
        sparse = sparse_weight(w)
    if not sparse:
        return F.conv2d(x, w)
    if not torch.is_grad_enabled() or not (x.requires_grad or w.requires_grad):
        return sparse.product()(x.contiguous())
    product_t = sparse.product(transposed=True) if x.requires_grad else None
    return _SparseGraphConv.apply(x, w, sparse.product(), product_t)


def instance_norm(x: Tensor, norm: nn.InstanceNorm2d, lo: int = 0) -> Tensor:
    """``norm`` (affine, no running statistics) on ``x``, whose channels are ``norm``'s
    channels ``lo .. lo + x.shape[1]``."""
    if norm.track_running_stats or not norm.affine:
        if lo or x.shape[1] != norm.num_features:
            raise ValueError("a channel range needs an affine InstanceNorm without running stats")
        return norm(x)
    c = x.shape[1]
    weight, bias = norm.weight[lo : lo + c], norm.bias[lo : lo + c]
    if not fastpath.sparse_on(x):
        return F.instance_norm(x, weight=weight, bias=bias, eps=norm.eps)
    return F.group_norm(x, c, weight, bias, norm.eps)


class _NodeUpdate(torch.autograd.Function):
    """``node_update`` by the native kernels (models/graphs/native/node_ops.c)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor, gamma, beta, eps: float) -> Tensor:  # noqa: D102
        x, k = x.contiguous(), k.contiguous()
        gamma = None if gamma is None else gamma.contiguous()
        beta = None if beta is None else beta.contiguous()
        y, mean, rstd = native.node_forward(x, k, gamma, beta, eps)
        ctx.save_for_backward(x, k, gamma, beta, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: D102
        x, k, gamma, beta, mean, rstd = ctx.saved_tensors
        gx, gk, ggamma, gbeta = native.node_backward(x, gy.contiguous(), k, gamma, beta, mean, rstd)
        return gx, gk, ggamma, gbeta, None


def node_update(
    x: Tensor, weight: Tensor, norm: Optional[nn.InstanceNorm2d] = None, lo: int = 0
) -> Tensor:
    """A node's per-channel op: ``norm`` (affine InstanceNorm, its channels ``lo .. lo + C``;
    None: no norm), ReLU, then the 3x3 depthwise convolution ``weight`` [C, 1, 3, 3] with
    padding 1, on ``x`` [B, C, H, W]. ``x`` itself is left unchanged.

    On the CPU the native kernels do all three in one pass per plane (forward and backward);
    elsewhere, and where they cannot be built, the torch ops.
    """
    c = x.shape[1]
    plain_norm = norm is None or (norm.affine and not norm.track_running_stats)
    if fastpath.native_on(x) and plain_norm and weight.dtype == torch.float32:
        gamma = None if norm is None else norm.weight[lo : lo + c]
        beta = None if norm is None else norm.bias[lo : lo + c]
        return _NodeUpdate.apply(x, weight, gamma, beta, norm.eps if norm is not None else 0.0)
    h = torch.relu(x) if norm is None else torch.relu_(instance_norm(x, norm, lo))
    return F.conv2d(h, weight, padding=1, groups=c)


class _BNNodeUpdate(torch.autograd.Function):
    """``bn_node_update`` by the native kernels (node_ops.c, ``bn_node_*``)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor, gamma, beta, eps: float, stride: int):  # noqa: D102
        y, mean, rstd, var = native.bn_node_forward(x, k, gamma, beta, eps, stride)
        ctx.save_for_backward(x, k, gamma, beta, mean, rstd)
        ctx.stride = stride
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy: Tensor, _gmean, _gvar):  # noqa: D102
        x, k, gamma, beta, mean, rstd = ctx.saved_tensors
        gx, gk, ggamma, gbeta = native.bn_node_backward(
            x, gy, k, gamma, beta, mean, rstd, ctx.stride
        )
        return gx, gk, ggamma, gbeta, None, None


def _native_bn(x: Tensor, norm: nn.BatchNorm2d, weight: Tensor) -> bool:
    b, c, h, w = x.shape
    return (
        fastpath.native_on(x)
        and norm.training
        and norm.affine
        and norm.track_running_stats
        and norm.momentum is not None
        and norm.running_mean is not None
        and norm.weight.dtype == weight.dtype == torch.float32
        and b * h * w > 1  # torch's BatchNorm refuses a single value per channel
        and (b * c * h * w == 0 or x.stride()[1:] == (h * w, w, 1))
    )


def bn_node_update(x: Tensor, weight: Tensor, norm: nn.BatchNorm2d, stride: int = 1) -> Tensor:
    """A MobileNet Block's node op: ``norm`` (a BatchNorm2d, in training with the batch's
    statistics and the running statistics' update, in eval with its running statistics), ReLU,
    then the 3x3 depthwise convolution ``weight`` [C, 1, 3, 3] with padding 1 and ``stride``, on
    ``x`` [B, C, H, W], which is left unchanged.

    In training on the CPU the native kernels do all three in one pass per plane, forward and
    backward, and update the running statistics as BatchNorm does (momentum, unbiased variance,
    ``num_batches_tracked``); elsewhere the torch ops.
    """
    c = x.shape[1]
    if not _native_bn(x, norm, weight):
        h = F.relu(norm(x))
        return F.conv2d(h, weight, stride=stride, padding=1, groups=c)
    y, mean, var = _BNNodeUpdate.apply(x, weight, norm.weight, norm.bias, norm.eps, stride)
    with torch.no_grad():
        m = norm.momentum
        norm.num_batches_tracked.add_(1)
        norm.running_mean.mul_(1 - m).add_(mean, alpha=m)
        norm.running_var.mul_(1 - m).add_(var, alpha=m)
    return y


class _DisjointSlices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, regions: tuple) -> tuple:  # noqa: D102
        ctx.regions = regions
        ctx.shape = w.shape
        return tuple(w[r].clone() for r in regions)

    @staticmethod
    def backward(ctx, *grads: Tensor):  # noqa: D102
        full = grads[0].new_zeros(ctx.shape) if grads else None
        for region, grad in zip(ctx.regions, grads):
            if grad is not None:
                full[region] = grad
        return full, None


def weight_slices(w: Tensor, regions: list) -> tuple:
    """``tuple(w[r] for r in regions)`` for regions that do not overlap, with one full-size
    gradient for ``w`` in the backward instead of one zero-filled full-size gradient per
    slice (a medium-scale Block reads 3 to 7 slices of a weight of up to 8.6 M edges)."""
    regions = tuple(regions)
    if not (torch.is_grad_enabled() and w.requires_grad):
        return tuple(w[r] for r in regions)
    return _DisjointSlices.apply(w, regions)
