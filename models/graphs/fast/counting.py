"""Multiply-adds a forward pass actually executes, for comparison with the paper's count.

How (one forward of ``module`` on ``example``, divided by the batch size):

* ``torch.utils.flop_counter.FlopCounterMode`` sees every aten op: convolutions (the stem, the
  depthwise convs, the dense backend's 1x1 convs with their zeros) and matrix products (the
  classifier). It reports FLOPs = 2 x multiply-adds; we halve them.
* Its formula for ``mm``/``addmm`` reads only shapes, so a CSR product would count as the dense
  one. We replace those two formulas by ones that, for a sparse first operand, count
  ``nnz x columns`` (the sparse backend: non-zeros x N*H*W per product).
* DGL runs its kernels outside torch's dispatcher, so FlopCounterMode sees nothing of them: a
  forward hook on each ``DGLEdges`` adds ``edges x columns`` of its input. The same for the
  sparse backend's native Block kernel: a hook on each ``SparseBlock`` adds what
  ``SparseBlock.native_macs`` reports (edges and 9 taps per node, per output pixel), 0 when
  the Block ran torch ops.

Not counted, by any backend or by the paper: BatchNorm/InstanceNorm, ReLU, additions of the
push order, copies, and the global average pool (the paper counts the pool as s^2 per channel;
that is 4 096 of the 4.3M multiply-adds of the CIFAR x0.225 model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from models.graphs.fast.backends import DGLEdges, SparseBlock

__all__ = ["executed_macs"]

_aten = torch.ops.aten


def _mm_flops(a: Tensor, b: Tensor) -> int:
    if a.layout != torch.strided:  # CSR / COO: only the stored entries are multiplied
        return 2 * int(a._nnz()) * int(b.shape[1])
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


def _mm(a, b, *args, **kwargs) -> int:  # raw formula: gets the tensors, not their shapes
    return _mm_flops(a, b)


def _addmm(bias, a, b, *args, **kwargs) -> int:
    return _mm_flops(a, b)


_mm._get_raw = True  # type: ignore[attr-defined]
_addmm._get_raw = True  # type: ignore[attr-defined]


@torch.no_grad()
def executed_macs(module: nn.Module, example: Tensor) -> int:
    """Multiply-adds per image that ``module(example)`` executes (see the module docstring)."""
    outside = [0]

    def hook(m: nn.Module, inputs: tuple, output: Tensor) -> None:
        outside[0] += m.nnz * int(inputs[0].shape[1])

    def native(m: SparseBlock, inputs: tuple, output: Tensor) -> None:
        outside[0] += m.native_macs(inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, DGLEdges)]
    handles += [
        m.register_forward_hook(native) for m in module.modules() if isinstance(m, SparseBlock)
    ]
    try:
        counter = FlopCounterMode(
            display=False, custom_mapping={_aten.mm: _mm, _aten.addmm: _addmm}
        )
        with counter:
            module(example)
    finally:
        for h in handles:
            h.remove()
    return (counter.get_total_flops() // 2 + outside[0]) // example.shape[0]
