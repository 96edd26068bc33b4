"""Whether the tiny models' operations may take their CPU fast paths.

The fast paths (models/graphs/ops.py, products.py, static_fused.py, the native kernels) run
float32 on the CPU outside autocast, TorchScript and torch.compile, which trace the plain torch
ops instead. ``cpu_fast_paths(False)`` switches them all off (the plain ops give the same
results up to the order of float sums).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cpu_fast_paths", "fast_cpu", "compiling", "traced"]

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
        and not traced()
    )


def traced() -> bool:
    """Whether TorchScript or torch.compile is recording the ops (they trace the plain ones)."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or compiling()


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
