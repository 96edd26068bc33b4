"""Exact top-k selection for the edge types: which ``n - int(p * n)`` edges a weight keeps.

The rule (docs/faithfulness.md, "The top-k rule") is the original's: ``int(p * n)`` computed in
float64 and truncated, the smallest that many ``|w|`` over the WHOLE tensor are dropped, ties at
the cutoff dropped from the lowest flat index up (any tie order is allowed; the count is not).
This module only makes that fast; ``edges.py`` says what the rule means.

- ``topk_mask``: the boolean mask, by a k-th smallest value and one comparison (linear time)
  rather than a full sort of every entry.
- ``kth_smallest``: that value, exactly ``torch.kthvalue``'s. On the CPU the native radix
  selection for float32 (three reads of the values, no copy), else NumPy's introselect (a copy
  and ``np.partition``); elsewhere, for large tensors, a sampled bracket around the answer
  whose counts prove it holds the answer, else the full selection.

Measured on the project's CPUs (bench/README.md): introselect 1.0 ms for 640k entries against
3.4 ms for the bracket and 10.7 ms for ``kthvalue``; 21 vs 47 ms at 8.65 M entries.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from models.graphs import fastpath, native

__all__ = ["num_pruned", "topk_mask", "kth_smallest", "sample_stride", "BRACKET_MIN"]


def num_pruned(prune_rate: float, numel: int) -> int:
    """Number of edges the top-k rule removes: ``int(p * n)`` in float64, truncated.

    The original computes it this way, so 0.57 * 100 gives 56, not 57.
    """
    return int(float(prune_rate) * numel)


def topk_mask(scores: Tensor, num_keep: int) -> Tensor:
    """Boolean mask of exactly ``num_keep`` entries with the largest ``scores``.

    Ties at the cutoff are broken the way the original's sort behaved on the CPU: among equal
    scores the lower flat indices are dropped first, so the higher ones are kept.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if num_keep >= n:
        return torch.ones_like(flat, dtype=torch.bool).view_as(scores)
    if num_keep <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).view_as(scores)
    threshold = kth_smallest(flat, n - num_keep)
    keep = flat > threshold
    missing = num_keep - int(torch.count_nonzero(keep))  # (a bool sum is 10x slower)
    if missing > 0:  # ties at the threshold: keep the highest-index tied entries
        tied = torch.nonzero(flat == threshold).flatten()
        keep[tied[-missing:]] = True
    return keep.view_as(scores)


# On a GPU kth_smallest brackets from this size on (below it kthvalue is as fast), with a sample
# of about 5 sqrt(n) values (the fastest on the project's CPU from 0.6 M to 8.65 M entries,
# where the bracket was first used; the GPU figures of bench/README.md were taken with it).
BRACKET_MIN = 1 << 20
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest value (1-based) of a 1-D tensor, exactly as ``torch.kthvalue``."""
    if fastpath.native_selection(flat):
        return native.kth_smallest(flat.detach().contiguous(), k)
    if fastpath.numpy_selection(flat):
        values = flat.detach().contiguous().numpy()
        return torch.as_tensor(np.partition(values, k - 1)[k - 1])
    inside = _bracket(flat, k)
    if inside is None:
        return torch.kthvalue(flat, k).values
    selection, k_inside = inside
    return torch.kthvalue(selection, k_inside).values


def sample_stride(n: int) -> int:
    """Stride of the bracket's sample of ``n`` entries (about 5 sqrt(n) of them).

    The stride is coprime with ``n``, hence with every row length of a weight of ``n`` entries:
    a stride that divides the row length samples the same few columns of every row (160 for an
    [800, 800] weight: columns 0, 160, ..., 640), and trained weights differ by column (only the
    DAG's region receives gradients), so the bracket used to miss.
    """
    s = max(1, n // int(5 * math.sqrt(n)))
    while math.gcd(s, n) != 1:
        s += 1
    return s


def _bracket(flat: Tensor, k: int) -> Optional[tuple[Tensor, int]]:
    """(the entries of a sampled bracket around the ``k``-th smallest value, its rank among
    them), or None where the tensor is small or the bracket misses."""
    n = flat.numel()
    if n < BRACKET_MIN:
        return None
    sample = flat[:: sample_stride(n)].sort().values  # about 5 sqrt(n) values, in order
    m = sample.numel()
    q = k / n
    pos = q * m
    margin = 6 * math.sqrt(m * q * (1 - q)) + 32  # 6 standard deviations of the sample rank
    lo, hi = int(pos - margin), int(pos + margin)
    # where the margin reaches past the sample's ends the bracket is open on that side
    below = flat < sample[lo] if lo > 0 else torch.zeros_like(flat, dtype=torch.bool)
    inside = ~below if hi >= m - 1 else (flat <= sample[hi]) & ~below
    n_below = int(torch.count_nonzero(below))
    n_inside = int(torch.count_nonzero(inside))
    if n_below < k <= n_below + n_inside:
        return flat[inside], k - n_below
    return None
