"""Settings that change the whole process, made once by the entry point (main.py), never by a
library call: a notebook that imports the project keeps its process as it was.

- ``torch.backends.cudnn.benchmark = True``: cuDNN picks the fastest convolution algorithms for
  the shapes it sees (as the original did; a run's shapes do not change).
- glibc keeps freed memory for the next step instead of returning it to the kernel (config key
  ``keep_freed_memory``; genutil/allocator.py says why).
- the fast paths' switches from the config keys ``fast_paths`` and ``native_kernels``
  (models/graphs/fastpath.py).
"""

from __future__ import annotations

import torch

from genutil.allocator import keep_freed_memory
from genutil.config import Config
from models.graphs import fastpath

__all__ = ["configure"]


def configure(cfg: Config) -> str:
    """Apply the settings above for ``cfg``; return one line that says them."""
    torch.backends.cudnn.benchmark = True
    kept = keep_freed_memory() if cfg.keep_freed_memory else False
    fastpath.configure(enabled=cfg.fast_paths, native=cfg.native_kernels)
    memory = "kept for reuse" if kept else "returned to the system"
    return f"process: cudnn.benchmark on, freed memory {memory}"
