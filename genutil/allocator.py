"""Keep the C allocator from giving memory back to the kernel between steps (glibc only).

glibc's malloc serves a request above its mmap threshold (128 KiB, raised on the fly up to the
largest block freed so far) with a fresh ``mmap`` and returns it with ``munmap`` when it is
freed; below the threshold it trims the top of the heap once 128 KiB are free there. Every
activation of our models is larger than that, so each step maps fresh pages and takes one page
fault per 4 KiB on first touch: 19,000 faults per training step and 42,000 per evaluation
forward of the static tiny model on this project's 2-core VM, where a fault costs about a
microsecond and the same 3x3 depthwise convolution took 1 ms or 4-8 ms depending on whether its
buffers were fresh (bench/README.md). Raising the mmap threshold to glibc's maximum and the trim
threshold to 1 GiB keeps freed blocks in the heap for the next step: no faults in the steady
state, at the price of the process keeping its peak memory.

Blocks above 32 MiB (glibc's largest mmap threshold) are still mapped per request.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory", "is_glibc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc (the only C library this module tunes)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set glibc's thresholds as above for this process; False where the C library is not
    glibc (nothing is changed then). Safe to call more than once."""
    if not is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
