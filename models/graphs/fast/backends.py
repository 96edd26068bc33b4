"""Graph execution backends: one module per Block, built from a ``BlockPlan`` (plan.py).

Every backend takes the kept input nodes' feature maps [N, C_in, H, W] (any memory layout) and
returns the kept output nodes' maps [N, C_out, H', W']; ``BACKENDS[name](plan)`` builds one.

* ``dense``: the shrunk 1x1 convolutions, pushed layer by layer as the original fast path does
  (each source layer feeds all later targets through one conv, zeros included).
* ``sparse``: native torch sparse. The Block's source maps live channels-first in one buffer
  [num_sources, N*H*W]; each target layer is ONE product ``csr [n_i, S_<i] @ buffer[:S_<i]``
  that only touches its in-edges (CPU: MKL, CUDA: cuSPARSE). On the CPU, where the native
  kernels build (``fastpath`` switch ``native``), an eval forward runs each Block as one call
  of ``models/graphs/native/block_eval.c`` instead: the same CSR rows, norms and filters, node
  by node in one pass (``SparseBlock.native_form``).
* ``dgl``: the same pull order as DGL message passing on the kept nodes: per target layer a
  bipartite graph (its sources -> its nodes), ``u_mul_e`` then ``sum`` at the target. DGL is
  imported when such a Block is built, never at module import.

Node ops (norm, ReLU, 3x3 depthwise) write channels-last maps: on CPU the depthwise conv is
several times faster in that layout than in NCHW. Dense and sparse modules are TorchScript-able
(for export); the DGL one is not.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs import fastpath
from models.graphs.fast.plan import BlockPlan, NodeOps

__all__ = [
    "BackendUnavailable",
    "NodeOp",
    "DenseBlock",
    "SparseBlock",
    "DGLBlock",
    "BACKENDS",
    "make_block",
    "SparseEdges",
    "DGLEdges",
    "dgl_available",
]


class BackendUnavailable(RuntimeError):
    """A backend this environment cannot run (DGL missing, or on a torch it does not support)."""


class NodeOp(nn.Module):
    """norm -> ReLU -> 3x3 depthwise conv of one layer's kept nodes; output channels-last."""

    def __init__(self, ops: NodeOps) -> None:
        super().__init__()
        self.size = ops.size
        self.stride = ops.stride
        self.instance = ops.norm == "instance"
        self.eps = ops.eps
        self.register_buffer("scale", ops.scale.detach().clone().float())  # [n]
        self.register_buffer("shift", ops.shift.detach().clone().float())  # [n]
        self.register_buffer("weight", ops.weight.detach().clone().float())  # [n, 1, 3, 3]

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, n, H, W] in any layout -> [N, n, H', W'] channels-last."""
        n, h, w = self.size, x.shape[2], x.shape[3]
        if n == 0:  # a layer whose nodes are all dead: nothing to compute
            return x.new_zeros(
                [x.shape[0], 0, (h - 1) // self.stride + 1, (w - 1) // self.stride + 1]
            )
        if self.instance:  # per-sample statistics: InstanceNorm, then the affine part
            y = F.instance_norm(x.contiguous(), eps=self.eps)
            y = torch.addcmul(self.shift.view(1, n, 1, 1), y, self.scale.view(1, n, 1, 1))
            y = torch.relu_(y.contiguous(memory_format=torch.channels_last))
        elif x.requires_grad:  # out= below has no autograd; fast_eval models need none
            y = torch.addcmul(self.shift.view(1, n, 1, 1), x, self.scale.view(1, n, 1, 1))
            y = torch.relu(y).contiguous(memory_format=torch.channels_last)
        elif x.permute(1, 0, 2, 3).is_contiguous():  # channels-first maps of a pull Block
            p = x.shape[0] * h * w
            # a 2-D transpose [n, P] -> [P, n] (torch's blocked copy), then the folded
            # BatchNorm and ReLU in place on that private buffer
            t = torch.empty([p, n], dtype=x.dtype, device=x.device)
            t.copy_(x.permute(1, 0, 2, 3).reshape(n, p).t())
            torch.relu_(torch.addcmul(self.shift, t, self.scale, out=t))
            y = t.view(x.shape[0], h, w, n).permute(0, 3, 1, 2)
        else:  # eval BatchNorm folded to scale/shift, written straight into channels-last
            y = torch.empty_like(x, memory_format=torch.channels_last)
            torch.addcmul(self.shift.view(1, n, 1, 1), x, self.scale.view(1, n, 1, 1), out=y)
            y = torch.relu_(y)
        return F.conv2d(y, self.weight, None, self.stride, 1, 1, n)


class DenseEdges(nn.Module):
    """One source layer's edges to every later target as a dense 1x1 conv [T_after, n, 1, 1]."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().float()[:, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.shape[0] == 0 or self.weight.shape[1] == 0:
            return x.new_zeros([x.shape[0], self.weight.shape[0], x.shape[2], x.shape[3]])
        return F.conv2d(x, self.weight)


class _PushStep(nn.Module):
    """A layer's node ops and its edges to every later target."""

    def __init__(self, op: NodeOp, edges: DenseEdges) -> None:
        super().__init__()
        self.op, self.edges, self.size = op, edges, op.size


class DenseBlock(nn.Module):
    """Push order (the original's fast path): a state of every not-yet-read target."""

    def __init__(self, plan: BlockPlan) -> None:
        super().__init__()
        w, s_off, t_off = plan.dense(torch.float32), plan.source_offsets(), plan.target_offsets()
        # layer j feeds the targets from layer j + 1 on: rows t_off[j]..
        self.steps = nn.ModuleList(
            [
                _PushStep(NodeOp(op), DenseEdges(w[t_off[j] :, s_off[j] : s_off[j + 1]]))
                for j, op in enumerate(plan.layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        state = x
        first = True
        for step in self.steps:
            if first:
                state = step.edges(step.op(x))
                first = False
            else:
                n = step.size
                state = state[:, n:] + step.edges(step.op(state[:, :n]))
        return state


def _layer_edges(plan: BlockPlan, i: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """(rows, cols, weights, n_rows, n_cols) of the edges into target layer i (i = len(layers):
    the outputs); cols index the sources of layers < i."""
    t_off, s_off = plan.target_offsets(), plan.source_offsets()
    lo, hi = t_off[i - 1], t_off[i]
    a, b = (int(torch.searchsorted(plan.dst, v)) for v in (lo, hi))  # dst is sorted
    return plan.dst[a:b] - lo, plan.src[a:b], plan.weight[a:b].float(), hi - lo, s_off[i]


class SparseEdges(nn.Module):
    """Edges into one target layer as CSR [n_rows, n_cols]: forward [n_cols, P] -> [n_rows, P].

    ``nnz`` is kept as a plain int so that instrumentation can count ``nnz * P`` MACs.
    """

    def __init__(self, rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int):
        super().__init__()
        self.nnz = int(vals.numel())
        self.n_rows, self.n_cols = n_rows, n_cols
        # edges come sorted by (row, col) (BlockPlan), so the CSR arrays are direct
        crow = torch.zeros(n_rows + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and fine
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer(
                "matrix",
                torch.sparse_csr_tensor(
                    crow, cols.clone(), vals.clone(), (n_rows, n_cols), check_invariants=True
                ),
            )

    def forward(self, h: Tensor) -> Tensor:
        if self.nnz == 0:
            return h.new_zeros([self.n_rows, h.shape[1]])
        return torch.mm(self.matrix, h)


class _PullStep(nn.Module):
    """Target layer nodes [lo, hi) of the source buffer: in-edges, then their node ops."""

    def __init__(self, edges: nn.Module, op: NodeOp, lo: int) -> None:
        super().__init__()
        self.edges, self.op, self.lo, self.hi = edges, op, lo, lo + op.size


class _PullBlock(nn.Module):
    """Pull order over a channels-first source buffer; subclasses give the edge operator."""

    def __init__(self, plan: BlockPlan, edges: list[nn.Module]) -> None:
        super().__init__()
        offsets = plan.source_offsets()
        self.first = NodeOp(plan.layers[0])
        self.steps = nn.ModuleList(
            [
                _PullStep(e, NodeOp(op), offsets[i + 1])
                for i, (e, op) in enumerate(zip(edges, plan.layers[1:]))
            ]
        )
        self.out_edges = edges[-1]  # into the outputs, from every layer
        self.num_sources = offsets[-1]
        self.num_outputs = plan.num_outputs

    def forward(self, x: Tensor) -> Tensor:
        return self._pull(x)

    def _pull(self, x: Tensor) -> Tensor:
        a = self.first(x)
        n, h, w = a.shape[0], a.shape[2], a.shape[3]
        buf = torch.empty([self.num_sources, n * h * w], dtype=a.dtype, device=a.device)
        # [C, N*H*W] channels-first; copy_ through a permuted view transposes in one pass
        buf[: a.shape[1]].copy_(_rows_to_columns(a))
        for step in self.steps:
            if step.hi > step.lo:
                raw = step.edges(buf[: step.lo]).view(step.hi - step.lo, n, h, w)
                buf[step.lo : step.hi].copy_(_rows_to_columns(step.op(raw.permute(1, 0, 2, 3))))
        out = self.out_edges(buf)  # [n_out, N*H*W]
        return out.view(self.num_outputs, n, h, w).permute(1, 0, 2, 3)


def _rows_to_columns(a: Tensor) -> Tensor:
    """Channels-last maps [N, C, H, W] as the transposed view [C, N*H*W] of [N*H*W, C]; copying
    it into a contiguous [C, N*H*W] takes torch's blocked 2-D transpose."""
    c = a.shape[1]
    return a.permute(0, 2, 3, 1).reshape(-1, c).t()


class SparseBlock(_PullBlock):
    """Pull order with native torch CSR products; on the CPU without autograd, one native call
    per Block where the kernels build (same CSR rows, see ``native_form``)."""

    def __init__(self, plan: BlockPlan) -> None:
        super().__init__(
            plan, [SparseEdges(*_layer_edges(plan, i)) for i in range(1, len(plan.layers) + 1)]
        )
        self._native = None  # the native form, made at the first forward that takes it

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: the torch ops
            return self._pull(x)
        return self._eager(x)

    @torch.jit.unused
    def _eager(self, x: Tensor) -> Tensor:
        native = self.native_form(x)
        if native is not None:
            return native(x)
        return self._pull(x)

    @torch.jit.unused
    def native_form(self, x: Tensor):
        """The Block as one ``native.BlockEval`` for input ``x``, or None where the torch ops
        run instead: autograd recording, not float32 on the CPU, the ``native`` switch off, no
        compiler, or a node op the kernel lacks (InstanceNorm, a stride after the first layer).
        Made from the module's buffers at the first use and kept; ``.to()`` and
        ``load_state_dict`` drop it (it is remade from the new buffers)."""
        if (torch.is_grad_enabled() and x.requires_grad) or not fastpath.native_on(x):
            return None
        if self._native is None:
            self._native = self._make_native()
        return self._native or None

    @torch.jit.unused
    def _make_native(self):
        from models.graphs import native  # noqa: PLC0415

        ops = [self.first] + [step.op for step in self.steps]
        if native.eval_library() is None or any(
            op.instance or (op.stride != 1 and op is not self.first) for op in ops
        ):
            return False  # remembered: this Block always runs the torch ops
        edges = [step.edges for step in self.steps] + [self.out_edges]
        crows, cols, vals, start = [torch.zeros(1, dtype=torch.long)], [], [], 0
        for e in edges:
            m = e.matrix
            crows.append(m.crow_indices()[1:] + start)
            cols.append(m.col_indices())
            vals.append(m.values())
            start += e.nnz
        return native.BlockEval(
            self.first.stride,
            [op.size for op in ops],
            torch.cat([op.scale for op in ops]),
            torch.cat([op.shift for op in ops]),
            torch.cat([op.weight for op in ops]),
            torch.cat(crows),
            torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long),
            torch.cat(vals) if vals else torch.zeros(0),
            self.num_outputs,
        )

    @torch.jit.unused
    def native_macs(self, x: Tensor, out: Tensor) -> int:
        """Multiply-adds of a forward from ``x`` to ``out`` that ran natively (invisible to
        torch's FlopCounterMode): each edge and each node's 9 taps once per output pixel; 0
        where the torch ops ran."""
        native = self.native_form(x)
        if native is None:
            return 0
        per_pixel = int(native.val.numel()) + 9 * native.num_sources
        return per_pixel * out.shape[0] * out.shape[2] * out.shape[3]

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: new buffers
        self._native = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._native = None
        super()._load_from_state_dict(*args, **kwargs)


def dgl_available() -> bool:
    """True when ``import dgl`` works in this environment."""
    os.environ.setdefault("DGLBACKEND", "pytorch")  # else DGL prints that it assumes pytorch
    try:
        import dgl  # noqa: F401, PLC0415
    except Exception:  # dgl raises various errors on an unsupported torch
        return False
    return True


class DGLEdges(nn.Module):
    """Edges into one target layer as a DGL bipartite graph; message = source map x weight,
    reduce = sum at the target. Graph copies are cached per device."""

    def __init__(self, rows: Tensor, cols: Tensor, vals: Tensor, n_rows: int, n_cols: int):
        super().__init__()
        self.nnz, self.n_rows, self.n_cols = int(vals.numel()), n_rows, n_cols
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())
        self.register_buffer("vals", vals.clone()[:, None])  # [E, 1] broadcast over the map
        self._graphs: dict = {}

    def _graph(self, device: torch.device):
        import dgl  # noqa: PLC0415

        key = str(device)
        if key not in self._graphs:
            self._graphs[key] = dgl.create_block(
                (self.cols.to(device), self.rows.to(device)),
                num_src_nodes=self.n_cols,
                num_dst_nodes=self.n_rows,
                device=device,
            )
        return self._graphs[key]

    def forward(self, h: Tensor) -> Tensor:
        import dgl.function as fn  # noqa: PLC0415

        if self.nnz == 0:
            return h.new_zeros([self.n_rows, h.shape[1]])
        g = self._graph(h.device)
        with g.local_scope():
            g.srcdata["h"] = h
            g.edata["w"] = self.vals.to(h.dtype)
            g.update_all(fn.u_mul_e("h", "w", "m"), fn.sum("m", "out"))
            return g.dstdata["out"]


class DGLBlock(_PullBlock):
    """Pull order with DGL message passing (needs the DGL environment)."""

    def __init__(self, plan: BlockPlan) -> None:
        if not dgl_available():
            raise BackendUnavailable(
                f"the dgl backend needs DGL, which imports only with torch <= 2.2.1 "
                f"(this is torch {torch.__version__})"
            )
        super().__init__(
            plan, [DGLEdges(*_layer_edges(plan, i)) for i in range(1, len(plan.layers) + 1)]
        )


BACKENDS: dict[str, Callable[[BlockPlan], nn.Module]] = {
    "dense": DenseBlock,
    "sparse": SparseBlock,
    "dgl": DGLBlock,
}


def make_block(plan: BlockPlan, backend: str) -> nn.Module:
    """The Block module of ``backend`` for ``plan``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend](plan)
