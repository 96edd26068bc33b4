"""The default fast-evaluation plan of the contract: the network with each graph layer frozen to
its kept edges (``WiredNetwork.fast_plan``).

Any network whose graph layers run as ``edges.Graph`` modules (those of ``models/wired.py`` too)
gets this for free: a copy in eval mode where every graph layer is a ``KeptEdges`` module that
holds only the kept edges and runs them

- ``sparse``: as one CSR product over the channels of the whole batch (``[n_out, n_in]`` kept
  edges times ``[n_in, N*H*W]``): the work is the kept edges, not the dense weight;
- ``dense``: as the dense 1x1 convolution of the effective weight (zeros included).

No node is removed (the networks of the paper do that in their own plans, where the structure
tells which channels are dead; see models/graphs/fast). Outputs equal the network's up to the
order of float sums.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KeptEdges", "SparseLayersPlan", "BACKENDS"]

BACKENDS = ("dense", "sparse")


class KeptEdges(nn.Module):
    """A graph layer's kept edges as a fixed 1x1 convolution (with the layer's bias, stride and
    padding): CSR with ``sparse``, the dense effective weight with ``dense``."""

    def __init__(self, layer: nn.Conv2d, weight: Tensor, backend: str) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} cannot run these layers: choose {BACKENDS}")
        self.sparse = backend == "sparse"
        self.stride = tuple(int(s) for s in layer.stride)
        # a 1x1 kernel: 'same' and 'valid' pad nothing; (top/bottom, left/right) otherwise
        padding = layer.padding if isinstance(layer.padding, tuple) else (0, 0)
        self.padding = tuple(int(p) for p in padding)
        self.padding_mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        w = weight.detach().float().reshape(weight.shape[0], weight.shape[1])  # [n_out, n_in]
        self.nnz = int(torch.count_nonzero(w))
        self.out_channels, self.in_channels = w.shape
        bias = layer.bias.detach().clone().float() if layer.bias is not None else None
        self.register_buffer("bias", bias)
        if self.sparse:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and fine
                warnings.simplefilter("ignore", UserWarning)
                self.register_buffer("weight", w.to_sparse_csr())
        else:
            self.register_buffer("weight", w[:, :, None, None].clone())

    def forward(self, x: Tensor) -> Tensor:
        if any(self.padding):
            ph, pw = self.padding
            x = F.pad(x, [pw, pw, ph, ph], mode=self.padding_mode)
        if not self.sparse:
            return F.conv2d(x, self.weight, self.bias, self.stride)
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        n, c, h, w = x.shape
        cols = x.permute(1, 0, 2, 3).reshape(c, n * h * w)  # [n_in, N*H*W]
        out = torch.mm(self.weight, cols).view(self.out_channels, n, h, w).permute(1, 0, 2, 3)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        kind = "sparse" if self.sparse else "dense"
        return (
            f"{self.in_channels} -> {self.out_channels}, {self.nnz} kept edges ({kind}), "
            f"stride={self.stride}, padding={self.padding}"
            + (f", padding_mode={self.padding_mode}" if any(self.padding) else "")
        )


class SparseLayersPlan:
    """``fast_plan()`` of a network without a plan of its own (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = model.graph_layers()
        if not self.layers:
            raise ValueError(
                f"{type(model).__name__} has no graph layer: there is nothing to shrink"
            )

    @torch.no_grad()
    def build(self, backend: str) -> nn.Module:
        """A copy in eval mode whose graph layers run only their kept edges."""
        fast = copy.deepcopy(self.model).eval()
        for layer in self.layers:
            parent_name, _, child = layer.name.rpartition(".")
            parent = fast.get_submodule(parent_name) if parent_name else fast
            module = parent.get_submodule(child)
            setattr(parent, child, KeptEdges(module, layer.effective_weight(), backend))
        return fast.requires_grad_(False)

    def report(self, backend: str) -> list[str]:
        """What the shrunk network runs, for the console."""
        kept = sum(int(torch.count_nonzero(layer.effective_weight())) for layer in self.layers)
        total = sum(layer.module.weight.numel() for layer in self.layers)
        return [
            f"fast_eval ({backend}): {len(self.layers)} graph layers run their {kept:,} kept "
            f"edges of {total:,} (this network removes no nodes)"
        ]
