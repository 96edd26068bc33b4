"""Edge types: how a graph layer turns its dense edge weight into the weight the forward uses.

A graph layer is a bias-free 1x1 convolution whose weight [n_out, n_in, 1, 1] holds one real
number per edge (target node, source node). Each edge type decides which edges exist in the
forward pass and which receive a gradient (SPEC section 4). Class names and the buffer name
``mask`` are those of the original release, so its checkpoints load.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from models.graphs.fastpath import traced

__all__ = [
    "num_pruned",
    "kth_smallest",
    "topk_mask",
    "ChooseTopEdges",
    "Graph",
    "Complete",
    "DNW",
    "DNWNoUpdate",
    "RandomGraph",
    "FineTune",
    "TargetedDropout",
    "RegularTargetedDropout",
    "GRAPH_TYPES",
    "make_graph",
]


def num_pruned(prune_rate: float, numel: int) -> int:
    """Number of edges the top-k rule removes: ``int(p * n)`` in float64, truncated.

    The original computes it this way, so 0.57 * 100 gives 56, not 57 (SPEC section 8).
    """
    return int(float(prune_rate) * numel)


# On a GPU kth_smallest brackets from this size on (below it kthvalue is as fast), with a sample
# of about 5 sqrt(n) values (the fastest on the project's CPU from 0.6 M to 8.65 M entries,
# where the bracket was first used; the GPU figures of bench/README.md were taken with it).
BRACKET_MIN = 1 << 20
# NumPy's introselect, used on the CPU, is exact and was 3.4x faster than the bracket at 0.64 M
# entries (1.0 vs 3.4 ms) and 2.3x at 8.65 M (21 vs 47 ms) on the project's CPU, and 10x faster
# than torch.kthvalue (bench/README.md).
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def sample_stride(n: int) -> int:
    """Stride of kth_smallest's sample of ``n`` entries (about 5 sqrt(n) of them).

    The stride is coprime with ``n``, hence with every row length of a weight of ``n``
    entries: a stride that divides the row length samples the same few columns of every row
    (160 for an [800, 800] weight: columns 0, 160, ..., 640), and trained weights differ by
    column (only the DAG's region receives gradients), so the bracket used to miss.
    """
    s = max(1, n // int(5 * math.sqrt(n)))
    while math.gcd(s, n) != 1:
        s += 1
    return s


def _selects_with_numpy(flat: Tensor) -> bool:
    return flat.device.type == "cpu" and flat.dtype in _NUMPY_DTYPES and not traced()


def kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest value (1-based) of a 1-D tensor, exactly as ``torch.kthvalue``.

    On the CPU: NumPy's ``partition`` (introselect over a copy). Elsewhere, for large tensors,
    a strided sample brackets the answer, two vectorised comparisons count what lies below and
    inside the bracket, and the selection runs only inside it. The counts prove the bracket
    holds the answer; if it does not (an unlucky sample), the full selection runs, so the
    result never depends on the sample.
    """
    if _selects_with_numpy(flat):
        values = flat.detach().contiguous().numpy()
        return torch.as_tensor(np.partition(values, k - 1)[k - 1])
    inside = _bracket(flat, k)
    if inside is None:
        return torch.kthvalue(flat, k).values
    selection, k_inside = inside
    return torch.kthvalue(selection, k_inside).values


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


def topk_mask(scores: Tensor, num_keep: int) -> Tensor:
    """Boolean mask of exactly ``num_keep`` entries with the largest ``scores``.

    Selection (kthvalue, linear time) rather than a full sort. Ties at the cutoff are broken
    the way the original's sort behaved on CPU: among equal scores the lower flat indices are
    dropped first, so the higher ones are kept. Any tie rule is allowed by the SPEC; the count
    is not negotiable.
    """
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    if num_keep >= n:
        return torch.ones_like(flat, dtype=torch.bool).view_as(scores)
    if num_keep <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).view_as(scores)
    num_drop = n - num_keep
    threshold = kth_smallest(flat, num_drop)
    keep = flat > threshold
    missing = num_keep - int(torch.count_nonzero(keep))  # (a bool sum is 10x slower)
    if missing > 0:  # ties at the threshold: keep the highest-index tied entries
        tied = torch.nonzero(flat == threshold).flatten()
        keep[tied[-missing:]] = True
    return keep.view_as(scores)


class ChooseTopEdges(torch.autograd.Function):
    """Forward: keep the given edges, zero the rest. Backward: identity (straight-through).

    This is the DNW update rule (paper section 3): every edge, used or not, receives the
    gradient of the loss w.r.t. the masked weight, so an unused edge can grow into the top k.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, keep: Tensor) -> Tensor:  # noqa: D102
        return weight * keep.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # noqa: D102
        return grad_output, None


class Graph(nn.Conv2d):
    """Base graph layer: a bias-free 1x1 conv whose effective weight comes from ``get_weight``.

    In eval mode under ``no_grad`` the effective weight cannot change between forwards unless
    the weight does, so it is computed once and cached (keyed on the tensors' versions).
    """

    deterministic_in_eval = True

    def __init__(self, prune_rate: float, dim_in: int, dim_out: int) -> None:
        super().__init__(dim_in, dim_out, kernel_size=1, bias=False)
        self.prune_rate = prune_rate
        self._cache: Optional[tuple] = None

    @property
    def num_kept(self) -> int:
        """Edges the top-k budget keeps: ``n - int(p * n)``."""
        return self.weight.numel() - num_pruned(self.prune_rate, self.weight.numel())

    def compute_weight(self) -> Tensor:
        """The effective weight [n_out, n_in, 1, 1]; subclasses override."""
        return self.weight

    def _cache_key(self) -> tuple:
        mask = self._buffers.get("mask")
        return (
            self.weight.data_ptr(),
            self.weight._version,
            None if mask is None else (mask.data_ptr(), mask._version),
        )

    def get_weight(self) -> Tensor:
        """Effective weight; cached between eval forwards (recomputed after any change)."""
        if self.training or torch.is_grad_enabled() or not self.deterministic_in_eval:
            self._cache = None
            return self.compute_weight()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.compute_weight().detach())
        return self._cache[1]

    def train(self, mode: bool = True) -> "Graph":
        self._cache = None
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.get_weight())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prune_rate={self.prune_rate}"


class Complete(Graph):
    """Every edge, plain weights (prune rate ignored)."""


class DNW(Graph):
    """Top-k edges by |w| in the forward, straight-through gradient to all edges."""

    def compute_weight(self) -> Tensor:
        keep = topk_mask(self.weight.abs(), self.num_kept)
        return ChooseTopEdges.apply(self.weight, keep)


class DNWNoUpdate(Graph):
    """Top-k in the forward, gradient only to the kept edges (ablation: no update rule).

    The original registers an all-ones ``mask`` buffer and multiplies by it; it is kept for
    checkpoint compatibility and still applied.
    """

    def __init__(self, prune_rate: float, dim_in: int, dim_out: int) -> None:
        super().__init__(prune_rate, dim_in, dim_out)
        # The original draws random numbers here and then overwrites them with ones; draw them
        # too, so that with the same seed every later layer starts from the original's weights.
        torch.rand(dim_out, dim_in, 1, 1)
        self.register_buffer("mask", torch.ones(dim_out, dim_in, 1, 1))

    def compute_weight(self) -> Tensor:
        w = self.weight * self.mask
        keep = topk_mask(w.abs(), self.num_kept)
        return w * keep.to(w.dtype)  # plain product: no gradient reaches pruned edges


class RandomGraph(Graph):
    """A fixed random wiring: a 0/1 ``mask`` buffer drawn once at construction.

    Uniform scores are drawn for every edge; edges not in ``allowed`` (the DAG constraint of
    the static setting) get score 0; the ``n - int(p * n)`` largest scores are kept. A mask
    loaded from a checkpoint is used as stored.
    """

    def __init__(
        self, prune_rate: float, dim_in: int, dim_out: int, allowed: Optional[Tensor] = None
    ) -> None:
        super().__init__(prune_rate, dim_in, dim_out)
        scores = torch.rand(dim_out, dim_in, 1, 1)
        if allowed is not None:
            scores = scores * allowed.reshape(dim_out, dim_in, 1, 1).to(scores.dtype)
        mask = topk_mask(scores, self.num_kept) & (scores > 0)
        self.register_buffer("mask", mask.to(torch.float32))

    def compute_weight(self) -> Tensor:
        return self.mask * self.weight


class FineTune(Graph):
    """A wiring frozen from the weights: the top-k of |w| the first time the graph is used.

    With ``use_graph`` the weights of a trained run are loaded first, so the mask is that run's
    wiring. The ``mask`` buffer is None until then (as in the original); a checkpoint that
    holds a mask restores it.
    """

    def __init__(self, prune_rate: float, dim_in: int, dim_out: int) -> None:
        super().__init__(prune_rate, dim_in, dim_out)
        self.register_buffer("mask", None)

    def init_mask(self) -> None:
        """Freeze the wiring from the current weights (no-op if already frozen)."""
        if self.mask is None:
            keep = topk_mask(self.weight.detach().abs(), self.num_kept)
            self.mask = (keep & (self.weight.detach() != 0)).to(self.weight.dtype)

    def compute_weight(self) -> Tensor:
        self.init_mask()
        return self.mask * self.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "mask"
        if self.mask is None and key in state_dict:
            self.mask = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _TargetedDropoutBase(Graph):
    """Targeted dropout (Gomez et al. 2019): low-|w| candidates are dropped with prob ``rho``
    in training and always at evaluation. The original multiplied the mask with |w| and so
    trained on absolute values; we keep the sign unless ``abs_weights`` asks for the original.
    """

    deterministic_in_eval = True

    def __init__(
        self,
        prune_rate: float,
        dim_in: int,
        dim_out: int,
        rho: float = 0.5,
        abs_weights: bool = False,
    ) -> None:
        super().__init__(prune_rate, dim_in, dim_out)
        self.rho = rho
        self.abs_weights = abs_weights

    def candidates(self) -> Tensor:  # bool, same shape as weight
        raise NotImplementedError

    def compute_weight(self) -> Tensor:
        drop = self.candidates()
        if self.training:
            drop = drop & (torch.rand(drop.shape, device=drop.device) < self.rho)
        w = self.weight.abs() if self.abs_weights else self.weight
        return w * (~drop).to(w.dtype)


class TargetedDropout(_TargetedDropoutBase):
    """Candidates: the ``int(p * n)`` smallest |w| over the whole tensor."""

    def candidates(self) -> Tensor:
        return ~topk_mask(self.weight.abs(), self.num_kept)


class RegularTargetedDropout(_TargetedDropoutBase):
    """Candidates: the ``int(n_in * p)`` smallest |w| of every output row."""

    def candidates(self) -> Tensor:
        w = self.weight.detach().abs().reshape(self.weight.shape[0], -1)  # [n_out, n_in]
        k = int(w.shape[1] * self.prune_rate)
        drop = torch.zeros_like(w, dtype=torch.bool)
        if k > 0:
            idx = torch.topk(w, k, dim=1, largest=False).indices
            drop.scatter_(1, idx, True)
        return drop.view_as(self.weight)


GRAPH_TYPES: dict[str, Callable[..., Graph]] = {
    "complete": Complete,
    "dnw": DNW,
    "dnw_no_update": DNWNoUpdate,
    "random": RandomGraph,
    "fine_tune": FineTune,
    "td": TargetedDropout,
    "reg_td": RegularTargetedDropout,
}


def make_graph(
    graph: str,
    prune_rate: float,
    dim_in: int,
    dim_out: int,
    *,
    allowed: Optional[Tensor] = None,
    rho: float = 0.5,
    td_abs: bool = False,
) -> Graph:
    """Build the graph layer of type ``graph`` for a [dim_out, dim_in] edge weight.

    ``allowed`` ([dim_out, dim_in] bool) is the DAG constraint, used by ``random`` to draw only
    edges that the forward can use.
    """
    if graph not in GRAPH_TYPES:
        raise ValueError(f"unknown graph type {graph!r}; known: {sorted(GRAPH_TYPES)}")
    if graph == "random":
        return RandomGraph(prune_rate, dim_in, dim_out, allowed=allowed)
    if graph in ("td", "reg_td"):
        return GRAPH_TYPES[graph](prune_rate, dim_in, dim_out, rho=rho, abs_weights=td_abs)
    return GRAPH_TYPES[graph](prune_rate, dim_in, dim_out)
