"""Graph-weight products per sample on the CPU: CSR forms of a (mostly zero) graph weight and
the products ``W x`` / ``W^T x`` that use them. Used by ``ops.graph_conv``.

By the native kernels (``native.csr_product``: one call per batch, each output plane summed in
vector registers) where they are built; else by MKL through torch, 16 samples a call. Measured
on the project's CPUs (bench/README.md): one MKL CSR product per sample cost about 20 us of call
overhead, and the block-diagonal form pays it once per 16 samples; the native product is 2-3x
faster than MKL's on the static model's blocks.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from models.graphs import fastpath, native

__all__ = [
    "SparseWeight",
    "sparse_weight",
    "keep_forms",
    "SPARSE_MAX_DENSITY",
    "BLOCK_SAMPLES",
    "BLOCK_MAX_NNZ",
]

# Above this fraction of nonzero edges the dense convolution is as fast or faster.
SPARSE_MAX_DENSITY = 0.15


def _csr(w2d: Tensor) -> Tensor:
    """CSR with int32 indices (MKL's own; int64 ones are converted on every product), in
    row-major order as ``to_sparse_csr`` gives it. By the native kernels in one pass over the
    weight where they are built; else from ``nonzero`` (the same tensor as ``to_sparse_csr`` in
    half the time for the graph blocks here: 0.30 vs 0.53 ms for [576, 192] at 5 %)."""
    if _native_csr(w2d):
        return _csr_tensor(*native.csr_from_dense(w2d), w2d.shape)
    idx = torch.nonzero(w2d)
    rows, cols = idx[:, 0], idx[:, 1]
    crow = torch.zeros(w2d.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(torch.bincount(rows, minlength=w2d.shape[0]), 0, out=crow[1:])
    return _csr_tensor(crow, cols.to(torch.int32), w2d[rows, cols], w2d.shape)


def _csr_tensor(crow: Tensor, col: Tensor, val: Tensor, shape) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and fine
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, tuple(shape))


def _csr_transposed(csr: Tensor) -> Tensor:
    """The CSR of the transpose of ``csr`` (made by ``_csr``), as ``_csr(w2d.t())`` gives it."""
    crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
    rows, cols = csr.shape
    return _csr_tensor(*native.csr_transpose(crow, col, val, cols), (cols, rows))


def _native_csr(w2d: Tensor) -> bool:
    """The native kernels make (and multiply by) this weight's CSR forms."""
    return (
        fastpath.native_csr_on()
        and w2d.dtype == torch.float32
        and (w2d.numel() == 0 or w2d.stride(1) == 1)
        and w2d.numel() < 2**31
    )


# Samples per CSR product. The [C, H*W] planes of k consecutive samples are one contiguous
# [k*C, H*W] matrix, so a block-diagonal CSR of k copies of W multiplies all k in one MKL call,
# each plane by the same row of W in the same order as k separate products (bitwise equal). A
# product per sample cost about 20 us of call overhead: the static model's five graph slices at
# batch 128 took 14.7 ms per forward that way and 8.4 ms with 16 samples a call (and about as
# much again in the input gradient). Larger blocks gained nothing more; the block form is capped
# at BLOCK_MAX_NNZ entries (8 MB), so large graphs keep one sample a call.
BLOCK_SAMPLES = 16
BLOCK_MAX_NNZ = 1 << 20


class _Product:
    """What both products share: W [rows, cols] reads the channels ``col_offset .. col_offset +
    cols`` of an input [B, col_stride, H, W] (default: all of an input [B, cols, H, W])."""

    def __init__(self, rows: int, cols: int, col_stride: int | None, col_offset: int) -> None:
        self.rows, self.cols = rows, cols
        self.col_stride = cols if col_stride is None else col_stride
        self.col_offset = col_offset
        if not 0 <= col_offset <= self.col_stride - cols:
            raise ValueError(f"columns {col_offset}+{cols} exceed the stride {self.col_stride}")

    def _output(self, x: Tensor, out: Tensor | None) -> Tensor:
        """Check ``x``'s channels; ``out`` or a new [B, rows, H, W] tensor."""
        b, c, h, w = x.shape
        if c != self.col_stride:
            raise ValueError(f"input has {c} channels, the product reads {self.col_stride}")
        return torch.empty(b, self.rows, h, w, dtype=x.dtype) if out is None else out


class _CsrProduct(_Product):
    """``W x`` per sample for a CSR matrix W [rows, cols]: one native call for the whole batch
    (``native.csr_product``) where the kernels are built, else k samples per MKL call.

    ``x`` is [B, cols, H, W], or with ``col_stride`` a wider [B, col_stride, H, W] buffer whose
    channels ``col_offset .. col_offset + cols`` are W's columns, read in place (the native
    kernel from each sample's first such channel; the block-diagonal form indexes into each
    sample's whole plane block).
    """

    def __init__(self, csr: Tensor, col_stride: int | None = None, col_offset: int = 0) -> None:
        super().__init__(*csr.shape, col_stride, col_offset)
        self.csr = csr
        self.nnz = csr.values().numel()
        plain = self.col_stride == self.cols and col_offset == 0
        self._blocks: dict[int, Tensor] = {1: csr} if plain else {}
        self._checked = False  # the CSR arrays passed native's checks (once, not every call)

    def _native(self, x: Tensor, out: Tensor, beta: float) -> bool:
        """``out = W x + beta * out`` by the native kernel; False where it does not apply."""
        if not (fastpath.native_csr_on() and x.dtype == self.csr.dtype == torch.float32):
            return False
        csr = (self.csr.crow_indices(), self.csr.col_indices(), self.csr.values())
        native.csr_product(*csr, x, self.col_offset, out, beta, checked=self._checked)
        self._checked = True
        return True

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
        out = self._output(x, out)
        if self._native(x, out, beta):
            return out
        b, c, h, w = x.shape
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


class SparseWeight:
    """A graph weight's CSR forms, made on first use and shared by every product with it: W and
    W^T (for input gradients), each readable from a wider buffer (``_CsrProduct``)."""

    def __init__(self, w: Tensor, csr: Tensor | None = None) -> None:
        """``csr``: W's CSR form (``_csr``) where it was made already."""
        self._w2d = w.detach().reshape(w.shape[0], w.shape[1])
        self._csr: dict[bool, Tensor] = {} if csr is None else {False: csr}
        self._products: dict[tuple, _CsrProduct] = {}

    def product(
        self, transposed: bool = False, col_stride: int | None = None, col_offset: int = 0
    ) -> _CsrProduct:
        """``W x`` (or ``W^T x``) per sample; see ``_CsrProduct`` for the strided reading."""
        key = (transposed, col_stride, col_offset)
        if key not in self._products:
            if transposed not in self._csr:
                if transposed and _native_csr(self._w2d):  # a counting sort of W's CSR
                    self._csr[True] = _csr_transposed(self._csr_of(False))
                else:
                    self._csr[transposed] = _csr(self._w2d.t() if transposed else self._w2d)
            self._products[key] = _CsrProduct(self._csr[transposed], col_stride, col_offset)
        return self._products[key]

    def _csr_of(self, transposed: bool) -> Tensor:
        if transposed not in self._csr:
            self.product(transposed)
        return self._csr[transposed]


_FORMS = "_sparse_forms"


def keep_forms(w: Tensor) -> Tensor:
    """Mark ``w`` as an effective weight that does not change while it lives (a graph layer's
    evaluation weight, kept by ``edges.Graph`` until its weight changes): the sparse forms made
    of it, or of any view of it, are then kept on it and die with it. Returns ``w``."""
    setattr(w, _FORMS, {})
    return w


def sparse_weight(w: Tensor, max_density: float | None = None) -> SparseWeight | None:
    """The CSR form of ``w`` if the sparse path pays for it (at most ``max_density`` of the
    entries nonzero; default SPARSE_MAX_DENSITY), else None. Without autograd, for a view of a
    weight marked by ``keep_forms``, the answer is made once and kept on that weight."""
    if not fastpath.sparse_on_weight(w):
        return None
    max_density = SPARSE_MAX_DENSITY if max_density is None else max_density
    base = w if w._base is None else w._base
    forms = getattr(base, _FORMS, None)
    if torch.is_grad_enabled() or forms is None:
        return _make_sparse_weight(w, max_density)
    # the base's version too: an in-place change of a kept weight must not reuse its forms
    key = (w.storage_offset(), tuple(w.shape), w.stride(), max_density, base._version)
    if key not in forms:
        forms[key] = _make_sparse_weight(w, max_density)
    return forms[key]


def _make_sparse_weight(w: Tensor, max_density: float) -> SparseWeight | None:
    w2d = w.detach().reshape(w.shape[0], -1)
    if _native_csr(w2d):  # the CSR form counts the entries too: made once, kept if sparse
        csr = _csr(w2d)
        if csr.values().numel() > max_density * w2d.numel():
            return None
        return SparseWeight(w, csr)
    if int(torch.count_nonzero(w2d)) > max_density * w2d.numel():
        return None
    return SparseWeight(w)
