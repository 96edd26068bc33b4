"""Write a shrunk network as a self-contained file, with what a user needs to feed it.

Two formats, chosen by the file name:

- ``.pt2``: a ``torch.export`` program (``torch.export.load(path).module()`` runs it, batch size
  free). torch.export cannot hold sparse CSR products (``aten.mm`` on a sparse operand has no
  export kernel), so a ``.pt2`` holds the dense fast-eval form: the shrunk network with its
  kept edges as 1x1 convolutions.
- ``.pt``: TorchScript (``torch.jit.load``), which holds the sparse form too; torch 2.14 marks
  TorchScript deprecated, so prefer ``.pt2`` for new work.

Both carry ``metadata.json`` inside the file (input shape, normalisation, classes, the source
config and checkpoint, the paper's parameter count): ``torch.export.load(path,
extra_files={"metadata.json": ""})`` or ``torch.jit.load(path, _extra_files=...)`` fills it in.
Nothing of this project is needed to load either.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["export_model", "METADATA"]

METADATA = "metadata.json"


def export_model(
    module: nn.Module,
    path: str,
    example: Tensor,
    metadata: Optional[dict] = None,
    atol: float = 1e-5,
) -> float:
    """Save ``module`` (a shrunk network: a ``fast_eval`` result) to ``path`` atomically, in the
    format its extension names, with ``metadata``; reload the file and check it on ``example``;
    return the largest absolute difference. ValueError for a module the format cannot hold."""
    if getattr(module, "backend", None) == "dgl":
        raise ValueError(
            "export: DGL graphs cannot be saved; export the model fast_eval'd with the dense or "
            "sparse backend (same outputs)"
        )
    module = module.eval()
    extra = {METADATA: json.dumps(metadata or {}, indent=1, default=str)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".pt2" if path.endswith(".pt2") else ".pt"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an export is for sharing
    try:
        with warnings.catch_warnings():  # TorchScript's deprecation, sparse CSR's beta notice
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
            if suffix == ".pt2":
                _save_program(module, tmp, example, extra)
            else:
                torch.jit.save(torch.jit.script(module), tmp, _extra_files=extra)
            os.replace(tmp, path)
            loaded = _load(path, example.device)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with torch.no_grad():
        diff = (loaded(example) - module(example)).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(f"export: the reloaded {path} differs from the model by {diff:.3g}")
    return diff


def _save_program(module: nn.Module, path: str, example: Tensor, extra: dict) -> None:
    if any(b.layout != torch.strided for b in module.buffers()):
        raise ValueError(
            "export: torch.export cannot hold sparse CSR products; export the dense fast-eval "
            "form to a .pt2 (or the sparse one to a .pt, TorchScript)"
        )
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path, extra_files=extra)


def _load(path: str, device: torch.device):
    if path.endswith(".pt2"):
        return torch.export.load(path).module().to(device)
    return torch.jit.load(path, map_location=device)
