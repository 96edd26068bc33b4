"""Edge types: how a graph layer turns its edge weights into the weights the forward uses.

The idea of the paper (docs/faithfulness.md, "The idea"): every channel is a node and every
entry of a 1x1 convolution's weight [n_out, n_in, 1, 1] is an edge (target node, source node)
with a real weight. DNW learns which edges exist while it learns their weights:

- forward: only the ``n - int(p * n)`` edges of largest ``|w|`` are used (``DNW``);
- backward: the gradient reaches EVERY edge, used or not (``ChooseTopEdges``, straight-through),
  so an unused edge whose gradient says it would help grows in ``|w|`` until it enters the top k.

The other edge types are the paper's baselines and ablations. ``GRAPH_TYPES`` is the registry
that the config's ``graph`` key chooses from. Class names and the buffer name ``mask`` are the
original release's, so its checkpoints load. How the top k are found fast: ``selection.py``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from torch import Tensor

from models.graphs import fastpath
from models.graphs.products import keep_forms
from models.graphs.selection import num_pruned, topk_mask

__all__ = [
    "ChooseTopEdges",
    "Graph",
    "DNW",
    "Complete",
    "DNWNoUpdate",
    "RandomGraph",
    "FineTune",
    "TargetedDropout",
    "RegularTargetedDropout",
    "GRAPH_TYPES",
    "make_graph",
    "edge_type_from_mask",
]


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
    """Base graph layer: a 1x1 conv whose effective weight comes from ``get_weight`` (bias-free,
    stride 1, unless ``models/wired.py`` gives it those of the convolution it replaces).

    In eval mode without autograd the effective weight cannot change between forwards unless
    the weight (or mask) does, so it is kept (fastpath switch ``eval_cache``) until the weight
    or mask tensor is replaced or changed in place, the layer is loaded, moved or switched to
    training.
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
        # the tensors themselves (held by the key, so no other tensor can take their address),
        # their storage and their version counters (bumped by every in-place change)
        key: list = []
        for t in (self.weight, self._buffers.get("mask")):
            key += [None] if t is None else [t, t.data_ptr(), t._version]
        return tuple(key)

    def get_weight(self) -> Tensor:
        """Effective weight; kept between eval forwards without autograd until it changes."""
        if (
            self.training
            or torch.is_grad_enabled()
            or not self.deterministic_in_eval
            or not fastpath.eval_cache_on()
        ):
            self._cache = None
            return self.compute_weight()
        key = self._cache_key()
        cached = self._cache
        if (
            cached is None
            or len(cached[0]) != len(key)
            or any(a is not b if isinstance(a, Tensor) else a != b for a, b in zip(cached[0], key))
        ):
            # its sparse forms (products.py) are kept on it for as long as it is kept here
            self._cache = cached = (key, keep_forms(self.compute_weight().detach()))
        return cached[1]

    def train(self, mode: bool = True) -> "Graph":
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        # the layer's own bias, stride and padding (none in the project's networks; a wired
        # 1x1 convolution keeps its own: models/wired.py)
        return self._conv_forward(x, self.get_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prune_rate={self.prune_rate}"


class DNW(Graph):
    """Top-k edges by |w| in the forward, straight-through gradient to all edges."""

    def compute_weight(self) -> Tensor:
        keep = topk_mask(self.weight.abs(), self.num_kept)
        return ChooseTopEdges.apply(self.weight, keep)


class Complete(Graph):
    """Every edge, plain weights (prune rate ignored)."""


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
    rho: float | str = 0.5,
    td_abs: bool = False,
) -> Graph:
    """Build the graph layer of type ``graph`` for a [dim_out, dim_in] edge weight.

    ``allowed`` ([dim_out, dim_in] bool) is the DAG constraint, used by ``random`` to draw only
    edges that the forward can use. ``rho`` (targeted dropout) may be ``"gamma"``, the original's
    word for "this graph's own prune rate".
    """
    if graph not in GRAPH_TYPES:
        raise ValueError(f"unknown graph type {graph!r}; known: {sorted(GRAPH_TYPES)}")
    if graph == "random":
        return RandomGraph(prune_rate, dim_in, dim_out, allowed=allowed)
    if graph in ("td", "reg_td"):
        rho = prune_rate if rho == "gamma" else float(rho)
        return GRAPH_TYPES[graph](prune_rate, dim_in, dim_out, rho=rho, abs_weights=td_abs)
    return GRAPH_TYPES[graph](prune_rate, dim_in, dim_out)


def edge_type_from_mask(mask: Optional[Tensor]) -> str:
    """The edge type of a graph in an original checkpoint (which carries no config), from its
    ``mask`` buffer: none for ``dnw``, all ones for ``dnw_no_update`` (the original's dead
    buffer), else ``random``."""
    if mask is None:
        return "dnw"
    return "dnw_no_update" if bool((mask == 1).all()) else "random"
