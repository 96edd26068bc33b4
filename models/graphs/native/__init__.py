"""Native CPU kernels, compiled on first use with the system C compiler.

``node_ops.c`` (``library()``) fuses a node's InstanceNorm, ReLU and 3x3 depthwise
convolution (forward and backward) into one pass per plane, for the tiny models' training, and
makes a graph weight's CSR forms and their products per sample (``csr_from_dense``,
``csr_transpose``, ``csr_product``) and the top-k threshold (``kth_smallest``);
``block_eval.c`` (``eval_library()``, ``BlockEval``) runs a whole Block of a shrunk fast_eval
network in one call. Both are plain C with OpenMP, built once per source, flags and CPU into a
cache folder and loaded with ctypes; torch.compile's CPU backend works the same way (generated
C++ built with the system compiler). Where no compiler works, ``library()`` is
None and callers use the torch ops: same results, slower (bench/README.md).

Cache folder: ``$DNW_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/dnw-native``, else
``~/.cache/dnw-native``. The build is keyed on the CPU's flags because it uses
``-march=native``: a home folder shared by several machines gets one library per CPU kind.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from ctypes import c_float, c_int, c_int64, c_void_p
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "library",
    "build_error",
    "cache_dir",
    "max_side",
    "node_forward",
    "node_backward",
    "bn_node_forward",
    "bn_node_backward",
    "csr_from_dense",
    "csr_transpose",
    "csr_product",
    "kth_smallest",
    "StaticDag",
    "eval_library",
    "BlockEval",
    "SOURCE",
    "EVAL_SOURCE",
]

log = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_ops.c")
EVAL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "block_eval.c")
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],  # compilers or CPUs without -march=native
)
_LIBS: dict[str, Optional[ctypes.CDLL]] = {}  # C file -> its library (None: could not build)
_ERRORS: dict[str, str] = {}  # C file -> why it could not be built


def build_error() -> str:
    """Why the node kernels' build failed ('' if it did not, or was not tried)."""
    return _ERRORS.get(SOURCE, "")


def cache_dir() -> str:
    """Where built libraries are kept."""
    root = os.environ.get("DNW_NATIVE_CACHE")
    if root:
        return root
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "dnw-native")


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, building them on first use; None where they cannot be built.
    Whether they are used is ``models.graphs.fastpath``'s switch ``native``."""
    return _library(SOURCE, _load, "native CPU kernels unavailable (%s); using torch ops (slower)")


def _library(path: str, load, warning: str) -> Optional[ctypes.CDLL]:
    """The library of the C file ``path``, built and loaded once per process; None (and one
    ``warning``, formatted with the reason) where it cannot be built."""
    if path not in _LIBS:
        _LIBS[path] = None
        try:
            _LIBS[path] = load(_build(path))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _ERRORS[path] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning(warning, _ERRORS[path])
    return _LIBS[path]


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc):
        raise RuntimeError(f"no C compiler found ({cc or 'cc, gcc'}; set CC or install gcc)")
    return cc


def _cpu_signature() -> str:
    """The CPU's model and flags, which -march=native depends on."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def eval_library() -> Optional[ctypes.CDLL]:
    """The fast_eval Block kernel (``block_eval.c``), built on first use; None where it cannot
    be built (the sparse backend then runs torch ops)."""
    return _library(
        EVAL_SOURCE, _load_eval, "native fast_eval kernel unavailable (%s); using torch ops"
    )


def _cached(flags: list[str], source: bytes, name: str = "node_ops") -> str:
    """The library's path for these flags: keyed on the source, the flags and the CPU (not the
    compiler, so a cached build loads where no compiler is installed)."""
    key = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{name}-{key}.so")


def _build(path: str) -> str:
    """Build the C file ``path`` (once per source, flags and CPU); the library's path. The
    headers beside it (``stencil.h``) are part of its source: a change to one rebuilds."""
    source = b""
    for part in [path] + sorted(glob.glob(os.path.join(os.path.dirname(path), "*.h"))):
        with open(part, "rb") as f:
            source += f.read()
    name = os.path.splitext(os.path.basename(path))[0]
    for flags in _FLAG_SETS:
        if os.path.exists(_cached(flags, source, name)):
            return _cached(flags, source, name)
    cc = _compiler()
    errors = []
    for flags in _FLAG_SETS:
        out = _cached(flags, source, name)
        os.makedirs(cache_dir(), exist_ok=True)
        # build beside the target and rename: a concurrent build (several DDP ranks) or a kill
        # midway never leaves a partial library under the final name
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
        os.close(fd)
        cmd = [cc, *flags, "-shared", "-fPIC", "-o", tmp, path, "-lm"]
        log.info("building native CPU kernels (once): %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(tmp, out)
                return out
            errors.append(((done.stderr or done.stdout).strip().splitlines() or ["failed"])[0])
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise RuntimeError(f"{cc} could not build {os.path.basename(path)}: {errors[-1]}")


def _load(path: str) -> ctypes.CDLL:
    # torch is imported above, so the library's libgomp.so.1 resolves to the copy torch
    # loaded: one OpenMP thread pool for both.
    lib = ctypes.CDLL(path)
    p = c_void_p
    i64 = c_int64
    lib.node_forward.argtypes = [p, p, i64, i64, p, i64] + [p] * 5 + [i64] * 4 + [c_float, c_int]
    lib.node_forward.restype = None
    lib.node_backward.argtypes = [p] * 8 + [i64, i64, p, i64] + [p] * 3 + [i64] * 4 + [c_int]
    lib.node_backward.restype = None
    lib.node_ops_max_side.restype = c_int
    lib.bn_node_forward.argtypes = [p, i64] + [p] * 7 + [i64] * 5 + [c_float, c_int]
    lib.bn_node_forward.restype = None
    lib.bn_node_backward.argtypes = [p, i64] + [p] * 10 + [i64] * 5 + [c_int]
    lib.bn_node_backward.restype = None
    lib.csr_count.argtypes = [p, i64, i64, i64, p, p, c_int]
    lib.csr_count.restype = i64
    lib.csr_fill.argtypes = [p, i64, i64, i64, p, p, p, p, c_int]
    lib.csr_fill.restype = None
    lib.csr_transpose.argtypes = [p, p, p, i64, i64, p, p, p]
    lib.csr_transpose.restype = None
    lib.csr_product.argtypes = [p, p, p, i64, p, i64, p, i64, i64, i64, c_float, c_int]
    lib.csr_product.restype = None
    lib.kth_smallest.argtypes = [p, i64, i64, c_int]
    lib.kth_smallest.restype = c_float
    lib.static_forward.argtypes = (
        [i64, p, i64] + [p] * 10 + [c_float] + [p] * 6 + [i64] * 3 + [c_int]
    )
    lib.static_forward.restype = None
    lib.static_backward.argtypes = [i64, p, i64] + [p] * 22 + [i64] * 3 + [c_int]
    lib.static_backward.restype = None
    return lib


def _load_eval(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)  # libgomp: torch's copy, as in _load
    lib.block_eval.argtypes = (
        [c_void_p] + [c_int64] * 9 + [c_void_p] * 7 + [c_int64] + [c_void_p] * 2 + [c_int]
    )
    lib.block_eval.restype = None
    lib.block_eval_max_side.restype = c_int
    return lib


def max_side() -> int:
    """Largest plane side the kernels take (0 where they are unavailable)."""
    lib = library()
    return lib.node_ops_max_side() if lib is not None else 0


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _place(like: Tensor, out: Optional[Tensor], c0: int, cm: Optional[Tensor], cm0: int):
    """Check (or make) the buffers a kernel writes its [B, C, H, W] result into: channels
    c0 .. c0 + C of ``out`` [B, CT, H, W], and of the channel-major ``cm`` [CT', B, H, W]. The
    kernels write through raw pointers, so a wrong shape must never reach them."""
    b, c, h, w = like.shape
    if out is None:
        out, c0 = torch.empty_like(like), 0
    _check_buffer(out, 1, c0, c, (b, h, w))
    if cm is not None:
        _check_buffer(cm, 0, cm0, c, (b, h, w))
    return out, c0, out.shape[1]


def _check_buffer(buf: Tensor, channel_dim: int, first: int, c: int, rest: tuple) -> None:
    """``buf``: contiguous float32, 4-D, ``rest`` beside its channel dimension, which has room
    for channels ``first .. first + c``."""
    shape = tuple(buf.shape)
    if not (
        buf.dtype == torch.float32
        and buf.is_contiguous()
        and buf.dim() == 4
        and shape[:channel_dim] + shape[channel_dim + 1 :] == rest
        and 0 <= first <= shape[channel_dim] - c
    ):
        raise ValueError(f"output buffer {shape} cannot hold channels {first}+{c}")


def node_forward(
    x: Tensor,
    k: Tensor,
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    eps: float,
    out: Optional[Tensor] = None,
    out_c0: int = 0,
    out_cm: Optional[Tensor] = None,
    out_cm0: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """y = depthwise3x3(relu(norm(x))) for contiguous float32 CPU tensors x [B, C, H, W], k
    [C, 1, 3, 3], gamma and beta [C] (None: no norm). y goes to channels ``out_c0 ..`` of
    ``out`` (default: a new [B, C, H, W] tensor) and, if given, of the channel-major
    ``out_cm``. Returns the buffer holding y, and each plane's mean and rstd ([B * C], for the
    backward; empty without a norm)."""
    b, c, h, w = x.shape
    out, out_c0, ct = _place(x, out, out_c0, out_cm, out_cm0)
    n = b * c if gamma is not None else 0
    mean, rstd = x.new_empty(n), x.new_empty(n)
    library().node_forward(
        _ptr(x), _ptr(out), out_c0, ct, _ptr(out_cm), out_cm0, _ptr(k), _ptr(gamma), _ptr(beta),
        _ptr(mean), _ptr(rstd), b, c, h, w, eps, torch.get_num_threads(),
    )  # fmt: skip
    return out, mean, rstd


def node_backward(
    x: Tensor,
    gy: Tensor,
    k: Tensor,
    gamma: Optional[Tensor],
    beta: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    out: Optional[Tensor] = None,
    out_c0: int = 0,
    out_cm: Optional[Tensor] = None,
    out_cm0: int = 0,
) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Gradients (x, k, gamma, beta) of node_forward for the output gradient gy (contiguous, the
    shape of x). The x gradient is placed as node_forward places y; the returned first item is
    the buffer holding it."""
    b, c, h, w = x.shape
    if gy.shape != x.shape or not gy.is_contiguous():
        raise ValueError(f"gy {tuple(gy.shape)} must be contiguous and shaped like x")
    out, out_c0, ct = _place(x, out, out_c0, out_cm, out_cm0)
    gk = k.new_empty(k.shape)
    norm = gamma is not None
    ggamma = gamma.new_empty(c) if norm else None
    gbeta = gamma.new_empty(c) if norm else None
    library().node_backward(
        _ptr(x), _ptr(gy), _ptr(k), _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(rstd), _ptr(out),
        out_c0, ct, _ptr(out_cm), out_cm0, _ptr(gk), _ptr(ggamma), _ptr(gbeta), b, c, h, w,
        torch.get_num_threads(),
    )  # fmt: skip
    return out, gk, ggamma, gbeta


def _batch_stride(x: Tensor) -> int:
    """x [B, C, H, W] float32 whose planes are contiguous and consecutive per sample (a channel
    slice of a contiguous tensor will do): its batch stride."""
    b, c, h, w = x.shape
    if not (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and max(h, w) <= max_side()
        and (b * c * h * w == 0 or x.stride()[1:] == (h * w, w, 1))
        and (b <= 1 or x.stride()[0] >= c * h * w)
    ):
        raise ValueError(f"x {tuple(x.shape)} with strides {x.stride()}: planes must be dense")
    return x.stride()[0]


def bn_node_forward(
    x: Tensor, k: Tensor, gamma: Tensor, beta: Tensor, eps: float, stride: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y = depthwise3x3(relu(batch_norm(x)), stride) with the batch's statistics (training
    BatchNorm) for x [B, C, H, W] (planes dense, see ``_batch_stride``), k [C, 1, 3, 3], gamma
    and beta [C]. Returns y [B, C, H', W'], each channel's mean and rstd (for the backward) and
    its unbiased variance (for the running statistics)."""
    b, c, h, w = x.shape
    sxb = _batch_stride(x)
    k, gamma, beta = k.contiguous(), gamma.contiguous(), beta.contiguous()
    if k.numel() != 9 * c or gamma.numel() != c or beta.numel() != c or stride < 1:
        raise ValueError("bn_node_forward: k, gamma, beta do not match x's channels")
    y = x.new_empty([b, c, (h - 1) // stride + 1, (w - 1) // stride + 1])
    mean, rstd, var = x.new_empty(c), x.new_empty(c), x.new_empty(c)
    library().bn_node_forward(
        _ptr(x), sxb, _ptr(y), _ptr(k), _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(rstd),
        _ptr(var), b, c, h, w, stride, eps, torch.get_num_threads(),
    )  # fmt: skip
    return y, mean, rstd, var


def bn_node_backward(
    x: Tensor,
    gy: Tensor,
    k: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    rstd: Tensor,
    stride: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (x, k, gamma, beta) of ``bn_node_forward`` for the output gradient gy; the x
    gradient is a new contiguous [B, C, H, W] tensor."""
    b, c, h, w = x.shape
    sxb = _batch_stride(x)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    gy = gy.contiguous()
    if tuple(gy.shape) != (b, c, ho, wo) or gy.dtype != torch.float32:
        raise ValueError(f"gy {tuple(gy.shape)} does not match the output of x {tuple(x.shape)}")
    k, gamma, beta = k.contiguous(), gamma.contiguous(), beta.contiguous()
    gx = x.new_empty([b, c, h, w])
    gk, ggamma, gbeta = k.new_empty(k.shape), gamma.new_empty(c), gamma.new_empty(c)
    library().bn_node_backward(
        _ptr(x), sxb, _ptr(gy), _ptr(k), _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(rstd),
        _ptr(gx), _ptr(gk), _ptr(ggamma), _ptr(gbeta), b, c, h, w, stride,
        torch.get_num_threads(),
    )  # fmt: skip
    return gx, gk, ggamma, gbeta


def csr_from_dense(w2d: Tensor, row_cols: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR arrays (int32 row offsets [rows + 1], int32 columns and float32 values [nnz], in
    row-major order) of the nonzero entries of a float32 CPU matrix whose rows are contiguous
    (a block of a larger matrix will do): what ``torch.nonzero`` would give, in one pass.
    ``row_cols`` (int64 [rows]): row r's entries are taken from its first ``row_cols[r]``
    columns only."""
    rows, cols = w2d.shape
    if not (
        w2d.dtype == torch.float32
        and w2d.device.type == "cpu"
        and (rows * cols == 0 or w2d.stride(1) == 1)
        and w2d.numel() < 2**31
    ):
        raise ValueError(f"csr_from_dense: a float32 CPU matrix with contiguous rows, not {w2d}")
    if row_cols is not None:
        row_cols = row_cols.to(torch.int64).contiguous()
        if row_cols.shape != (rows,) or (
            rows and not 0 <= int(row_cols.min()) <= int(row_cols.max()) <= cols
        ):
            raise ValueError(f"csr_from_dense: row_cols must be [{rows}] in 0 .. {cols}")
    ld = w2d.stride(0) if rows * cols else cols
    crow = torch.empty(rows + 1, dtype=torch.int32)
    lib, nt = library(), torch.get_num_threads()
    nnz = lib.csr_count(_ptr(w2d), rows, cols, ld, _ptr(row_cols), _ptr(crow), nt)
    col = torch.empty(nnz, dtype=torch.int32)
    val = torch.empty(nnz, dtype=torch.float32)
    lib.csr_fill(_ptr(w2d), rows, cols, ld, _ptr(row_cols), _ptr(crow), _ptr(col), _ptr(val), nt)
    return crow, col, val


def csr_transpose(
    crow: Tensor, col: Tensor, val: Tensor, cols: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR arrays of the transpose of the CSR matrix (``crow``, ``col``, ``val``; int32,
    int32, float32, contiguous) with ``cols`` columns."""
    rows, nnz = crow.numel() - 1, col.numel()
    _check_csr(crow, col, val, cols)
    crow_t = torch.empty(cols + 1, dtype=torch.int32)
    col_t = torch.empty(nnz, dtype=torch.int32)
    val_t = torch.empty(nnz, dtype=torch.float32)
    library().csr_transpose(
        _ptr(crow), _ptr(col), _ptr(val), rows, cols, _ptr(crow_t), _ptr(col_t), _ptr(val_t)
    )
    return crow_t, col_t, val_t


def _check_csr(crow: Tensor, col: Tensor, val: Tensor, cols: int) -> None:
    """The kernels read CSR arrays through raw pointers: types, sizes and ranges must hold."""
    ok = (
        crow.dtype == col.dtype == torch.int32
        and val.dtype == torch.float32
        and all(t.is_contiguous() and t.device.type == "cpu" for t in (crow, col, val))
        and crow.numel() >= 1
        and col.numel() == val.numel() == int(crow[-1])
        and int(crow[0]) == 0
    )
    if ok and col.numel():
        ok = int(col.min()) >= 0 and int(col.max()) < cols
    if not ok:
        raise ValueError("CSR arrays of the wrong type, size or range")


def csr_product(
    crow: Tensor,
    col: Tensor,
    val: Tensor,
    x: Tensor,
    col_offset: int,
    out: Tensor,
    beta: float = 0.0,
    checked: bool = False,
) -> Tensor:
    """``out[b] = W x[b, col_offset : col_offset + cols] + beta * out[b]`` for every sample b, W
    the CSR matrix [rows, cols]: x [B, C, H, W] and out [B, rows, H, W] float32 CPU, each
    sample's planes consecutive (contiguous tensors, or channel slices of them). ``checked``:
    the CSR arrays were checked by ``_check_csr`` (a product made once and called often)."""
    rows = crow.numel() - 1
    b, c, h, w = x.shape
    if not checked:
        _check_csr(crow, col, val, c - col_offset)
    p = h * w
    dense_planes = lambda t, ch: (
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.dim() == 4
        and t.shape[1] == ch
        and (t.numel() == 0 or t.stride()[1:] == (p, w, 1))
        and (t.shape[0] <= 1 or t.stride(0) >= ch * p)
    )
    if not (
        dense_planes(x, c)
        and dense_planes(out, rows)
        and tuple(out.shape) == (b, rows, h, w)
        and 0 <= col_offset <= c
    ):
        raise ValueError(f"csr_product: x {tuple(x.shape)}, out {tuple(out.shape)} do not fit")
    if b * rows * p == 0:
        return out
    library().csr_product(
        _ptr(crow), _ptr(col), _ptr(val), rows, x.data_ptr() + 4 * col_offset * p,
        x.stride(0), _ptr(out), out.stride(0), b, p, beta, torch.get_num_threads(),
    )  # fmt: skip
    return out


def kth_smallest(flat: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest value (1-based) of a contiguous 1-D float32 CPU tensor, exactly as
    ``torch.kthvalue`` gives it (a 0-d tensor), by radix selection."""
    n = flat.numel()
    if not (
        flat.dtype == torch.float32
        and flat.device.type == "cpu"
        and flat.dim() == 1
        and flat.is_contiguous()
        and 1 <= k <= n
    ):
        raise ValueError(f"kth_smallest: rank {k} of a contiguous float32 CPU vector of {n}")
    value = library().kth_smallest(_ptr(flat), n, k, torch.get_num_threads())
    return torch.tensor(value, dtype=torch.float32)


class StaticDag:
    """The static tiny model's whole DAG by the native kernels, one sample at a time
    (``static_forward`` / ``static_backward`` in node_ops.c; static_fused.py says the math).

    ``w2d``: the effective edge weight [D, D] (float32, rows contiguous); ``rng``: the node
    groups' channel boundaries (D = rng[-1]); ``f``: the read-out nodes, the last f. Its CSR
    forms are made here: the pulls (rows: channels rng[1] .. D, each over the channels below
    its group), the read-out's edges (rows: the last f nodes, columns: channels rng[-2] ..), and
    their transposes for the backward."""

    def __init__(self, w2d: Tensor, rng, f: int) -> None:
        self.rng = torch.tensor(rng, dtype=torch.int64)
        self.L, self.D, self.f = len(rng) - 1, int(rng[-1]), int(f)
        c1, last = int(rng[1]) if self.L else 0, int(rng[-2]) if self.L else 0
        if not (
            self.L >= 1
            and int(rng[0]) == 0
            and bool((self.rng.diff() > 0).all())
            and 0 < self.f <= self.D - last
            and tuple(w2d.shape) == (self.D, self.D)
        ):
            raise ValueError(
                f"StaticDag: groups {list(rng)}, {f} read-out nodes and a weight "
                f"{tuple(w2d.shape)} do not fit"
            )
        group_start = torch.repeat_interleave(self.rng[1:-1], self.rng.diff()[1:])
        self.pull = csr_from_dense(w2d[c1:], row_cols=group_start)
        self.out = csr_from_dense(w2d[self.D - self.f :, last:])
        self.push_t = csr_transpose(*self.pull, self.D)  # rows: channels 0 .., columns: c1 ..
        self.out_t = csr_transpose(*self.out, self.D - last)  # rows: channels rng[-2] ..

    def forward(
        self, stem: Tensor, k: Tensor, gamma: Tensor, beta: Tensor, eps: float, cm: bool = True
    ):
        """stem [B, rng[1], H, W] -> (states [B, D, H, W], mean, rstd [B, D], nodes_cm [D, B,
        H, W] (None unless ``cm``), out [B, f, H, W]): every node's state, the channel-major
        copy of the node outputs, and the read-out."""
        b, c0, h, w = stem.shape
        if not (
            stem.dtype == torch.float32
            and stem.device.type == "cpu"
            and stem.is_contiguous()
            and c0 == int(self.rng[1])
            and max(h, w) <= max_side()
            and k.numel() == 9 * self.D
            and gamma.numel() == beta.numel() == self.D
        ):
            raise ValueError(f"StaticDag: cannot take a stem {tuple(stem.shape)}")
        k, gamma, beta = k.contiguous(), gamma.contiguous(), beta.contiguous()
        nt = torch.get_num_threads()
        states = stem.new_empty(b, self.D, h, w)
        # with a sample per thread, its node outputs stay in the thread's own buffer
        nodes = stem.new_empty(b, self.D, h, w) if b < nt else None
        nodes_cm = stem.new_empty(self.D, b, h, w) if cm else None
        mean, rstd = stem.new_empty(b, self.D), stem.new_empty(b, self.D)
        out = stem.new_empty(b, self.f, h, w)
        library().static_forward(
            self.L, _ptr(self.rng), self.f, _ptr(stem), *map(_ptr, self.pull),
            *map(_ptr, self.out), _ptr(k), _ptr(gamma), _ptr(beta), eps, _ptr(states),
            _ptr(mean), _ptr(rstd), _ptr(nodes), _ptr(nodes_cm), _ptr(out), b, h, w, nt,
        )  # fmt: skip
        return states, mean, rstd, nodes_cm, out

    def backward(self, g_out, states, mean, rstd, k, gamma, beta):
        """The gradients of the stem [B, rng[1], H, W], of every node's state (channel-major,
        [D, B, H, W]) and of k, gamma, beta, for the read-out's gradient g_out [B, f, H, W] and
        what ``forward`` returned."""
        b, d, h, w = states.shape
        g_out = g_out.contiguous()
        if not (
            tuple(g_out.shape) == (b, self.f, h, w)
            and g_out.dtype == states.dtype == torch.float32
            and d == self.D
            and states.is_contiguous()
            and mean.numel() == rstd.numel() == b * d
            and max(h, w) <= max_side()
        ):
            raise ValueError(f"StaticDag: a read-out gradient {tuple(g_out.shape)} does not fit")
        k, gamma, beta = k.contiguous(), gamma.contiguous(), beta.contiguous()
        nt = torch.get_num_threads()
        # with a sample per thread, its state gradients stay in the thread's own buffer
        gs = states.new_empty(b, self.D, h, w) if b < nt else None
        g_stem = states.new_empty(b, int(self.rng[1]), h, w)
        gs_cm = states.new_empty(self.D, b, h, w)
        pk, pg, pb = (
            states.new_empty(b, self.D, 9),
            states.new_empty(b, self.D),
            states.new_empty(b, self.D),
        )
        gk, gg, gb = k.new_empty(k.shape), gamma.new_empty(self.D), gamma.new_empty(self.D)
        library().static_backward(
            self.L, _ptr(self.rng), self.f, _ptr(g_out), *map(_ptr, self.push_t),
            *map(_ptr, self.out_t), _ptr(states), _ptr(mean), _ptr(rstd), _ptr(k), _ptr(gamma),
            _ptr(beta), _ptr(gs), _ptr(g_stem), _ptr(gs_cm), _ptr(pk), _ptr(pg), _ptr(pb),
            _ptr(gk), _ptr(gg), _ptr(gb), b, h, w, nt,
        )  # fmt: skip
        return g_stem, gs_cm, gk, gg, gb


class BlockEval:
    """One fast_eval Block in pull order as one native call (``block_eval.c``).

    ``sizes``: kept nodes per source layer (the Block's inputs first); ``scale``, ``shift`` [S]
    the folded BatchNorms and ``kernel`` [S, 1, 3, 3] the depthwise filters of every source node
    in order; the CSR arrays (``crow`` [T + 1], ``col`` [E], ``val`` [E]) the in-edges of every
    target (layers 1.. in order, then the ``n_out`` outputs), columns indexing the sources;
    ``stride`` the first layer's. Checked once here, since the kernel reads raw pointers; a call
    checks its input. ``BlockEval(...)(x)``: x [N, sizes[0], H, W] float32 on the CPU in any
    layout -> the outputs [N, n_out, H', W'] (contiguous). Holds tensors only (no pointers), so
    it copies and pickles with its module."""

    def __init__(
        self,
        stride: int,
        sizes: list[int],
        scale: Tensor,
        shift: Tensor,
        kernel: Tensor,
        crow: Tensor,
        col: Tensor,
        val: Tensor,
        n_out: int,
    ) -> None:
        lib = eval_library()
        if lib is None:
            raise RuntimeError("the native fast_eval kernel is not built")
        self.max_side = int(lib.block_eval_max_side())
        s = sum(sizes)
        self.stride, self.n_out, self.num_sources = int(stride), int(n_out), s
        self.num_layers, self.c0 = len(sizes), int(sizes[0]) if sizes else 0
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        f32 = [t.detach().float().contiguous().flatten() for t in (scale, shift, kernel, val)]
        self.scale, self.shift, self.kernel, self.val = f32
        self.crow = crow.detach().to(torch.int64).contiguous()
        self.col = col.detach().to(torch.int64).contiguous()
        rows = s - (sizes[0] if sizes else 0) + self.n_out
        ok = (
            len(sizes) >= 1
            and min(sizes) >= 0
            and self.stride >= 1
            and self.n_out >= 0
            and self.scale.numel() == self.shift.numel() == s
            and self.kernel.numel() == 9 * s
            and self.crow.numel() == rows + 1
            and int(self.crow[0]) == 0
            and bool((self.crow[1:] >= self.crow[:-1]).all())
            and self.col.numel() == self.val.numel() == int(self.crow[-1])
            and (self.col.numel() == 0 or (int(self.col.min()) >= 0 and int(self.col.max()) < s))
        )
        if ok:  # a target of layer l reads only the layers before it (the pull order)
            starts = torch.tensor([0] + sizes).cumsum(0)
            limit = torch.cat(
                [torch.full((sizes[i],), int(starts[i])) for i in range(1, len(sizes))]
                + [torch.full((self.n_out,), s)]
            ).to(torch.int64)
            per_entry = torch.repeat_interleave(limit, self.crow[1:] - self.crow[:-1])
            ok = bool((self.col < per_entry).all())
        if not ok:
            raise ValueError("BlockEval: arguments of the wrong shape, type or range")

    def __call__(self, x: Tensor) -> Tensor:
        n, c0, h, w = x.shape
        if not (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and c0 == self.c0
            and max(h, w) <= self.max_side
        ):
            raise ValueError(f"BlockEval: cannot take an input {tuple(x.shape)} {x.dtype}")
        ho, wo = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        buf = x.new_empty([n, self.num_sources, ho * wo])
        out = x.new_empty([n, self.n_out, ho, wo])
        sn, sc, sh, sw = x.stride()
        eval_library().block_eval(
            _ptr(x), sn, sc, sh, sw, n, h, w, self.stride, self.num_layers, _ptr(self.sizes),
            _ptr(self.scale), _ptr(self.shift), _ptr(self.kernel), _ptr(self.crow),
            _ptr(self.col), _ptr(self.val), self.n_out, _ptr(buf), _ptr(out),
            torch.get_num_threads(),
        )  # fmt: skip
        return out
