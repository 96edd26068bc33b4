"""Write a shrunk network as a self-contained TorchScript file.

The file holds the code and the tensors (CSR matrices included), so in a fresh interpreter
``torch.jit.load(path)`` with only torch imported runs it; nothing of this project is needed.
TorchScript rather than torch.export: the loader is the same on torch 2.2 and 2.14, it keeps the
batch size dynamic, and it stores sparse CSR buffers.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["export_model"]


def export_model(module: nn.Module, path: str, example: Tensor, atol: float = 1e-5) -> float:
    """Script ``module`` (a ``fast_eval`` result with the dense or sparse backend), save it to
    ``path`` atomically, reload the file and check it on ``example``; return the largest
    absolute difference. Raises ValueError for a module TorchScript cannot hold (dgl backend).
    """
    if getattr(module, "backend", None) == "dgl":
        raise ValueError(
            "export: DGL graphs cannot be saved in TorchScript; export the model "
            "fast_eval'd with graph_backend dense or sparse (same outputs)"
        )
    module = module.eval()
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        scripted = torch.jit.script(module)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".pt")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an export is for sharing
        try:
            torch.jit.save(scripted, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        loaded = torch.jit.load(path, map_location=example.device)
    with torch.no_grad():
        diff = (loaded(example) - module(example)).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(f"export: the reloaded {path} differs from the model by {diff:.3g}")
    return diff
