"""Two operations of the tiny graph models on a faster CPU path at the same math.

Measured on the project's 2-core CPU ([128, 800, 8, 8] activations, 5 % of [800, 800] edges;
bench/README.md): what costs time in a DNW step is the graph's 1x1 convolution, then the
depthwise convolution and the InstanceNorm.

- ``graph_conv``: a DNW graph keeps a few percent of its edges, but its straight-through update
  needs the gradient of every edge, used or not. So the weight gradient stays a dense product,
  while the forward ``W x`` and the input gradient ``W^T g`` touch only the kept edges: CSR
  products (MKL through torch) that take 16 samples' [C, H*W] planes a call through a
  block-diagonal form, so that each works on planes while they are in cache and the call
  overhead is paid once per 16 samples (3x faster than dense at 5 %, and 1.7x faster than one
  product per sample).
- ``instance_norm``: ``group_norm`` with one channel per group is the same normalisation and is
  about 3x faster than ``instance_norm`` forward and backward.

Everything else (GPU, other dtypes, autocast, TorchScript, torch.compile) takes the plain torch
op; results equal the plain ops' up to the order of the float sums.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs import native

__all__ = [
    "graph_conv",
    "sparse_weight",
    "instance_norm",
    "node_update",
    "SPARSE_MAX_DENSITY",
    "cpu_fast_paths",
    "compiling",
    "fast_cpu",
    "graph_product",
]

# Above this fraction of nonzero edges the dense convolution is as fast or faster.
SPARSE_MAX_DENSITY = 0.15
_ENABLED = True


def cpu_fast_paths(flag: bool | None = None) -> bool:
    """Read (or set) whether these ops may take their CPU fast paths (default on)."""
    global _ENABLED
    if flag is not None:
        _ENABLED = bool(flag)
    return _ENABLED


def fast_cpu(x: Tensor) -> bool:
    """Whether ``x`` may take the CPU fast paths (float32 CPU, 4-D, no autocast/jit/compile)."""
    return (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not _autocast_on_cpu()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not compiling()
    )


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 (the DGL environment's 2.2)
        return torch.is_autocast_cpu_enabled()


def compiling() -> bool:
    """Under torch.compile the plain ops are traced (a per-sample Python loop over CSR
    products is not something to compile); torch 2.2 has no ``torch.compiler.is_compiling``."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and getattr(compiler, "is_compiling", lambda: False)())


def _csr(w2d: Tensor) -> Tensor:
    """CSR with int32 indices (MKL's own; int64 ones are converted on every product). Built from
    ``nonzero`` (row-major order, as CSR wants): the same tensor as ``to_sparse_csr`` in half
    the time for the graph blocks here (0.30 vs 0.53 ms for [576, 192] at 5 %)."""
    idx = torch.nonzero(w2d)
    rows, cols = idx[:, 0], idx[:, 1]
    crow = torch.zeros(w2d.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(torch.bincount(rows, minlength=w2d.shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and fine
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols.to(torch.int32), w2d[rows, cols], w2d.shape)


# Samples per CSR product. The [C, H*W] planes of k consecutive samples are one contiguous
# [k*C, H*W] matrix, so a block-diagonal CSR of k copies of W multiplies all k in one MKL call,
# each plane by the same row of W in the same order as k separate products (bitwise equal). A
# product per sample cost about 20 us of call overhead: the static model's five graph slices at
# batch 128 took 14.7 ms per forward that way and 8.4 ms with 16 samples a call (and about as
# much again in the input gradient). Larger blocks gained nothing more; the block form is capped
# at BLOCK_MAX_NNZ entries (8 MB), so large graphs keep one sample a call.
BLOCK_SAMPLES = 16
BLOCK_MAX_NNZ = 1 << 20


class _CsrProduct:
    """``W x`` per sample for a CSR matrix W [rows, cols], k samples per MKL call.

    ``x`` is [B, cols, H, W], or with ``col_stride`` a wider [B, col_stride, H, W] buffer whose
    channels ``col_offset .. col_offset + cols`` are W's columns: the block-diagonal form
    indexes into each sample's whole plane block, so the product reads those channels in place.
    """

    def __init__(self, csr: Tensor, col_stride: int | None = None, col_offset: int = 0) -> None:
        self.csr = csr
        self.rows, self.cols = csr.shape
        self.nnz = csr.values().numel()
        self.col_stride = self.cols if col_stride is None else col_stride
        self.col_offset = col_offset
        if not 0 <= col_offset <= self.col_stride - self.cols:
            raise ValueError(
                f"columns {col_offset}+{self.cols} exceed the stride {self.col_stride}"
            )
        plain = self.col_stride == self.cols and col_offset == 0
        self._blocks: dict[int, Tensor] = {1: csr} if plain else {}

    def samples_per_call(self, batch: int) -> int:
        return max(1, min(BLOCK_SAMPLES, BLOCK_MAX_NNZ // max(self.nnz, 1), batch))

    def block(self, k: int) -> Tensor:
        """The block-diagonal CSR [k*rows, k*col_stride] holding k copies of W."""
        if k not in self._blocks:
            crow, col = self.csr.crow_indices(), self.csr.col_indices()
            copy = torch.arange(k, dtype=crow.dtype)
            crow_k = torch.cat(
                (
                    (crow[:-1] + (copy * self.nnz)[:, None]).reshape(-1),
                    crow.new_tensor([k * self.nnz]),
                )
            )
            col_k = (col + self.col_offset + (copy * self.col_stride)[:, None]).reshape(-1)
            self._blocks[k] = torch.sparse_csr_tensor(
                crow_k, col_k, self.csr.values().repeat(k), (k * self.rows, k * self.col_stride)
            )
        return self._blocks[k]

    def __call__(self, x: Tensor, out: Tensor | None = None, beta: float = 0.0) -> Tensor:
        """[B, col_stride, H, W] (contiguous) -> [B, rows, H, W]; into ``out`` (contiguous)
        as ``out = W x + beta * out`` where given."""
        b, c, h, w = x.shape
        if c != self.col_stride:
            raise ValueError(f"input has {c} channels, the product reads {self.col_stride}")
        if out is None:
            out = torch.empty(b, self.rows, h, w, dtype=x.dtype)
        k = self.samples_per_call(b)
        whole = b - b % k
        # one [k*C, H*W] view per call: unbind makes them in one go where the chunks are equal
        x_planes = x[:whole].reshape(whole // k, k * c, h * w).unbind(0)
        o_planes = out[:whole].view(whole // k, k * self.rows, h * w).unbind(0)
        for o, plane in zip(o_planes, x_planes):
            torch.addmm(o, self.block(k), plane, beta=beta, out=o)
        if whole < b:
            o = out[whole:].view(-1, h * w)
            rest = self.block(b - whole)
            torch.addmm(o, rest, x[whole:].reshape(-1, h * w), beta=beta, out=o)
        return out


class _DenseProduct:
    """``_CsrProduct``'s interface for a block too dense for CSR: W [rows, cols] (or W^T) times
    channels ``col_offset .. col_offset + cols`` of [B, col_stride, H, W], per sample, by one
    batched GEMM (MKL) that reads the strided channels in place and writes ``out`` in place."""

    def __init__(
        self, w2d: Tensor, transposed: bool = False, col_stride: int | None = None, col_offset=0
    ) -> None:
        self.w = (w2d.t() if transposed else w2d).detach().contiguous()
        self.rows, self.cols = self.w.shape
        self.col_stride = self.cols if col_stride is None else col_stride
        self.col_offset = col_offset
        if not 0 <= col_offset <= self.col_stride - self.cols:
            raise ValueError(
                f"columns {col_offset}+{self.cols} exceed the stride {self.col_stride}"
            )

    def __call__(self, x: Tensor, out: Tensor | None = None, beta: float = 0.0) -> Tensor:
        b, c, h, w = x.shape
        if c != self.col_stride:
            raise ValueError(f"input has {c} channels, the product reads {self.col_stride}")
        if out is None:
            out = torch.empty(b, self.rows, h, w, dtype=x.dtype)
        cols = x.reshape(b, c, h * w)[:, self.col_offset : self.col_offset + self.cols]
        out.view(b, self.rows, h * w).baddbmm_(self.w.expand(b, -1, -1), cols, beta=beta)
        return out


def graph_product(
    w2d: Tensor,
    transposed: bool = False,
    col_stride: int | None = None,
    col_offset: int = 0,
    max_density: float | None = None,
):
    """``W x`` (or ``W^T x``) per sample for a block ``w2d`` [rows, cols] of a graph weight, as
    CSR products where the block is sparse enough (``sparse_weight``), else as a batched GEMM;
    the input's channels ``col_offset ..`` of ``col_stride`` are the block's columns."""
    sw = sparse_weight(w2d, max_density)
    if sw is not None:
        return sw.product(transposed, col_stride, col_offset)
    return _DenseProduct(w2d, transposed, col_stride, col_offset)


def _dense_weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """The dense 1x1 convolution's weight gradient (oneDNN): [O, I, 1, 1]."""
    w = grad.new_empty(grad.shape[1], x.shape[1], 1, 1)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        grad, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


class _SparseGraphConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, product: _CsrProduct, product_t) -> Tensor:  # noqa: D102
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


class SparseWeight:
    """A graph weight's CSR forms, made on first use and shared by every product with it: W and
    W^T (for input gradients), each readable from a wider buffer (``_CsrProduct``)."""

    def __init__(self, w: Tensor) -> None:
        self._w2d = w.detach().reshape(w.shape[0], w.shape[1])
        self._csr: dict[bool, Tensor] = {}
        self._products: dict[tuple, _CsrProduct] = {}

    def product(
        self, transposed: bool = False, col_stride: int | None = None, col_offset: int = 0
    ) -> _CsrProduct:
        """``W x`` (or ``W^T x``) per sample; see ``_CsrProduct`` for the strided reading."""
        key = (transposed, col_stride, col_offset)
        if key not in self._products:
            if transposed not in self._csr:
                self._csr[transposed] = _csr(self._w2d.t() if transposed else self._w2d)
            self._products[key] = _CsrProduct(self._csr[transposed], col_stride, col_offset)
        return self._products[key]


# Without autograd (evaluation) the effective weight is cached by its Graph until it changes
# (Graph.get_weight), so its sparse forms can be kept as long as that tensor lives: id(base
# tensor) -> (weak reference to it, its version, {(offset, shape, strides): SparseWeight|None}).
# An entry goes when its tensor is freed.
_NO_GRAD_CACHE: dict = {}


def sparse_weight(w: Tensor, max_density: float | None = None) -> SparseWeight | None:
    """The CSR form of ``w`` if the sparse path pays for it (at most ``max_density`` of the
    entries nonzero; default SPARSE_MAX_DENSITY), else None. Without autograd the answer is kept
    for as long as ``w`` (or the tensor it views) lives unchanged."""
    if not _ENABLED or w.device.type != "cpu" or w.dtype != torch.float32 or compiling():
        return None
    max_density = SPARSE_MAX_DENSITY if max_density is None else max_density
    if torch.is_grad_enabled():
        return _make_sparse_weight(w, max_density)
    base = w if w._base is None else w._base
    entry = _NO_GRAD_CACHE.get(id(base))
    if entry is None or entry[0]() is not base or entry[1] != base._version:
        key = id(base)
        ref = weakref.ref(base, lambda _, key=key: _NO_GRAD_CACHE.pop(key, None))
        entry = _NO_GRAD_CACHE[key] = (ref, base._version, {})
    forms = entry[2]
    key = (w.storage_offset(), tuple(w.shape), w.stride(), max_density)
    if key not in forms:
        forms[key] = _make_sparse_weight(w, max_density)
    return forms[key]


def _make_sparse_weight(w: Tensor, max_density: float) -> SparseWeight | None:
    w2d = w.detach().reshape(w.shape[0], -1)
    if int(torch.count_nonzero(w2d)) > max_density * w2d.numel():
        return None
    return SparseWeight(w)


def graph_conv(x: Tensor, w: Tensor, sparse: SparseWeight | None | bool = True) -> Tensor:
    """``F.conv2d(x, w)`` for a graph weight ``w`` [n_out, n_in, 1, 1] that is mostly zeros.

    ``sparse``: a ``SparseWeight`` of ``w`` made earlier (shared by the time steps), True to
    decide here, False or None for the dense convolution.
    """
    if not fast_cpu(x):
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
    if not fast_cpu(x):
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
    if (
        fast_cpu(x)
        and plain_norm
        and weight.dtype == torch.float32
        and max(x.shape[2:]) <= native.max_side()
    ):
        gamma = None if norm is None else norm.weight[lo : lo + c]
        beta = None if norm is None else norm.bias[lo : lo + c]
        return _NodeUpdate.apply(x, weight, gamma, beta, norm.eps if norm is not None else 0.0)
    h = torch.relu(x) if norm is None else torch.relu_(instance_norm(x, norm, lo))
    return F.conv2d(h, weight, padding=1, groups=c)


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
