"""Every fast path of the project, switched in one place.

A model's forward is the paper's equations in plain torch ops, with one visible branch to a
forward arranged for speed (``if fastpath.on(x): ...``). That forward, and the ops it calls,
take the paths below where they apply; each gives the reference forward's math, up to the order
of float sums (the tests compare them, gradients included). All are on by default.

- ``enabled``: the models' fast forwards (every device); off: the reference forwards only.
- ``sparse`` (CPU, float32): graph products over the kept edges only (CSR; by MKL 16 samples a
  call where ``native`` is off), and InstanceNorm as a GroupNorm of one channel per group.
- ``native`` (CPU, float32): C/OpenMP node kernels, a node's norm, ReLU and depthwise conv in
  one pass per plane (``models/graphs/native``); the sparse path's CSR forms and products, one
  call per batch; the top-k threshold by radix selection; in evaluation without autograd, each
  Block of the sparse ``fast_eval`` backend as one call (``native/block_eval.c``).
- ``fused_static`` (CPU, float32, needs ``native``): the static model's whole graph as one
  autograd Function over those kernels (``static_fused.py``).
- ``numpy_topk`` (CPU): the top-k threshold by NumPy's introselect (``selection.py``) where the
  native radix selection (``native``, float32) does not apply.
- ``eval_cache`` (every device): in eval mode without autograd, a graph's effective weight and
  its sparse forms are kept until the weight changes.

TorchScript and torch.compile trace the reference forwards (``traced()``); autocast turns the
float32 CPU paths off. ``configure(...)`` sets switches for the process (the entry point does it
from the config keys ``fast_paths`` and ``native_kernels``); ``use(...)`` sets them inside a
``with`` block; ``active(device)`` says which paths run and why the others do not.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Union

import torch
from torch import Tensor

__all__ = [
    "Switches",
    "switches",
    "configure",
    "use",
    "active",
    "summary",
    "on",
    "sparse_on",
    "sparse_on_weight",
    "native_on",
    "native_csr_on",
    "fused_static_on",
    "native_selection",
    "numpy_selection",
    "eval_cache_on",
    "traced",
    "compiling",
]


@dataclass(frozen=True)
class Switches:
    """The fast paths' switches (see the module docstring)."""

    enabled: bool = True
    sparse: bool = True
    native: bool = True
    fused_static: bool = True
    numpy_topk: bool = True
    eval_cache: bool = True


_STATE = Switches()


def switches() -> Switches:
    """The switches in force."""
    return _STATE


def configure(**changes: bool) -> Switches:
    """Set switches for the rest of the process (``configure(native=False)``); return them."""
    global _STATE
    unknown = set(changes) - {f.name for f in dataclasses.fields(Switches)}
    if unknown:
        raise ValueError(f"unknown fast-path switch(es) {sorted(unknown)}")
    _STATE = dataclasses.replace(_STATE, **{k: bool(v) for k, v in changes.items()})
    return _STATE


@contextlib.contextmanager
def use(**changes: bool) -> Iterator[Switches]:
    """Set switches inside a ``with`` block: ``with fastpath.use(enabled=False): ...``."""
    global _STATE
    before = _STATE
    try:
        yield configure(**changes)
    finally:
        _STATE = before


def traced() -> bool:
    """Whether TorchScript or torch.compile is recording the ops (they trace the reference)."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or compiling()


def compiling() -> bool:
    """torch.compile is tracing (torch 2.2 has no ``torch.compiler.is_compiling``)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and getattr(compiler, "is_compiling", lambda: False)())


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 (the DGL environment's 2.2)
        return torch.is_autocast_cpu_enabled()


def on(x: Tensor) -> bool:
    """Whether a model takes its fast forward for input ``x``."""
    return _STATE.enabled and not traced()


def _cpu_float32(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not _autocast_on_cpu()
        and not traced()
    )


def sparse_on(x: Tensor) -> bool:
    """Graph products over kept edges (and the GroupNorm form of InstanceNorm) for ``x``."""
    return _STATE.enabled and _STATE.sparse and _cpu_float32(x)


def sparse_on_weight(w: Tensor) -> bool:
    """Sparse forms may be made of the graph weight ``w`` (float32 on the CPU, not traced)."""
    return (
        _STATE.enabled
        and _STATE.sparse
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and not compiling()
    )


def native_on(x: Tensor) -> bool:
    """The native node kernels for ``x`` (built on first use; False where none builds)."""
    if not (_STATE.enabled and _STATE.native and _cpu_float32(x)):
        return False
    from models.graphs import native  # noqa: PLC0415  (builds the library on first use)

    return max(x.shape[2:]) <= native.max_side()


def native_csr_on() -> bool:
    """The graph products' CSR forms and products by the native kernels (float32 weights on
    the CPU, where ``sparse_on`` chose CSR products)."""
    if not (_STATE.enabled and _STATE.native):
        return False
    from models.graphs import native  # noqa: PLC0415  (builds the library on first use)

    return native.library() is not None


def fused_static_on(x: Tensor) -> bool:
    """The static model's graph as one Function (it runs on the native kernels)."""
    return _STATE.fused_static and native_on(x)


def native_selection(flat: Tensor) -> bool:
    """The top-k threshold of ``flat`` by the native radix selection (float32 on the CPU)."""
    return (
        _STATE.enabled
        and _STATE.native
        and flat.device.type == "cpu"
        and flat.dtype == torch.float32
        and flat.numel() < 2**31
        and not traced()
        and native_csr_on()
    )


def numpy_selection(flat: Tensor) -> bool:
    """The top-k threshold of ``flat`` by NumPy's introselect."""
    return (
        _STATE.enabled
        and _STATE.numpy_topk
        and flat.device.type == "cpu"
        and flat.dtype in (torch.float32, torch.float64, torch.float16)
        and not traced()
    )


def eval_cache_on() -> bool:
    """Effective weights (and their sparse forms) may be kept between eval forwards."""
    return _STATE.enabled and _STATE.eval_cache


def active(device: Union[str, torch.device] = "cpu") -> dict[str, str]:
    """{switch: "on" or "off (why)"} for float32 work on ``device``, as a run would take them."""
    device = torch.device(device)
    s, cpu = _STATE, torch.device(device).type == "cpu"
    out: dict[str, str] = {"enabled": "on" if s.enabled else "off (switched off)"}

    def state(name: str, flag: bool, cpu_only: bool, reason: str = "") -> None:
        if not s.enabled:
            out[name] = "off (all fast paths off)"
        elif not flag:
            out[name] = "off (switched off)"
        elif cpu_only and not cpu:
            out[name] = f"off (CPU only; running on {device.type})"
        elif reason:
            out[name] = f"off ({reason})"
        else:
            out[name] = "on"

    state("sparse", s.sparse, True)
    native_reason = ""
    if s.enabled and s.native and cpu:
        from models.graphs import native  # noqa: PLC0415

        if native.library() is None:
            native_reason = f"not built: {native.build_error() or 'unavailable'}"
    state("native", s.native, True, native_reason)
    state("fused_static", s.fused_static and s.native, True, native_reason)
    state("numpy_topk", s.numpy_topk, True)
    state("eval_cache", s.eval_cache, False)
    return out


def summary(device: Union[str, torch.device] = "cpu") -> str:
    """``active(device)`` as one line: ``fast paths: sparse on, native on, ...``."""
    paths = active(device)
    if paths.pop("enabled") != "on":
        return "fast paths: all off (reference forwards)"
    return "fast paths: " + ", ".join(f"{k} {v}" for k, v in paths.items())
