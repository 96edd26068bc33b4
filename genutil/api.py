"""Public API for notebooks, tests and tools; main.py uses it like any other caller.

model = build_model("apps/small_scale/static_dnw.yml", prune_rate=0.9)
meta = load_checkpoint(model, "checkpoints/<title>/best.pt")
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config, load_config
from genutil.errors import ConfigError
from genutil.registry import resolve

__all__ = [
    "build_model",
    "model_from_config",
    "load_checkpoint",
    "profile",
    "fast_eval",
    "export_model",
    "prepare_for_eval",
]


def model_from_config(cfg: Config) -> nn.Module:
    """The unwrapped model named by ``cfg.model``, built from ``cfg`` (on the CPU)."""
    cls = resolve(cfg.model, "model")
    try:
        return cls.from_config(cfg)
    except ValueError as e:  # a model rejects its arguments: a config problem
        raise ConfigError(f"{cfg.model} cannot be built: {e}") from None


def build_model(app_path: str, **overrides: Any) -> nn.Module:
    """Build the model exactly as ``main.py app:<app_path> --key value ...`` would."""
    return model_from_config(load_config(app_path, overrides))


def load_checkpoint(model: nn.Module, path: str) -> dict:
    """Load weights from one of our checkpoints or an original one (with or without the
    ``module.`` prefix), safely; return the rest of the file (epoch, optimizer, ...)."""
    ckpt = read_checkpoint(path)
    target = getattr(model, "module", model)
    load_model_state(target, model_state(ckpt), source=f"checkpoint {path}")
    return {k: v for k, v in ckpt.items() if k != "model"}


def profile(model: nn.Module, input_size: int | None = None) -> tuple[float, float]:
    """(params, MACs) of a MobileNetV1-like model as the authors count them (SPEC section 7).

    ``input_size=None`` is the original's ImageNet assumption (what the paper's table uses);
    see genutil.profiling.profile for the per-block details.
    """
    from genutil.profiling import profile as _profile  # noqa: PLC0415

    result = _profile(model, input_size=input_size)
    return result.params, result.macs


def fast_eval(model: nn.Module, backend: str = "dense", rule: str = "original") -> nn.Module:
    """A new, shrunk copy of a MobileNetV1Like or StaticNeuralGraph for evaluation (SPEC 7, 8).

    Dead nodes are removed and the Blocks' edges run with ``backend``: "dense" (1x1 convs),
    "sparse" (torch CSR products) or "dgl" (message passing; needs the DGL environment, else
    ConfigError). The result is in eval mode on the model's device; its outputs equal the full
    model's; ``.kept_channels()`` and ``.report()`` describe what was kept.
    """
    from models.graphs.fast import fast_eval as _fast_eval  # noqa: PLC0415

    try:
        return _fast_eval(model, backend=backend, rule=rule)
    except ValueError as e:
        raise ConfigError(f"{e}: drop --fast_eval") from None


def export_model(model: nn.Module, path: str, example: torch.Tensor) -> float:
    """Write a ``fast_eval`` model (dense or sparse backend) as TorchScript to ``path``; reload it
    and check it on ``example``; return the largest absolute difference. In a fresh Python,
    ``torch.jit.load(path)`` with only torch imported runs it."""
    from models.graphs.fast.export import export_model as _export  # noqa: PLC0415

    try:
        return _export(model, path, example)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def prepare_for_eval(
    model: nn.Module,
    *,
    fast: bool,
    backend: str = "dense",
    export: str = "",
    example: Optional[torch.Tensor] = None,
) -> tuple[nn.Module, list[str]]:
    """What ``--evaluate`` runs: the model itself, or with ``fast`` its shrunk copy (on the
    model's device), and lines to print. ``backend`` is ``graph_backend`` ("dgl" when
    ``--use_dgl``); ``export`` a path to write the shrunk model to (checked on ``example``, a
    batch such as ``torch.randn(2, in_channels, image_size, image_size)``)."""
    if not fast:
        if backend != "dense" or export:
            what = "--export" if export else f"graph_backend {backend}"
            raise ConfigError(f"{what} applies to the shrunk model: add --fast_eval")
        return model, []
    shrunk = fast_eval(model, backend=backend)
    lines = shrunk.report()
    if export:
        if example is None:
            raise ValueError("prepare_for_eval: export needs an example input")
        source = shrunk
        if backend == "dgl":  # DGL graphs do not serialize: the sparse twin has the same outputs
            source = fast_eval(model, backend="sparse")
            lines.append("export: the dgl backend cannot be saved; writing the sparse backend")
        device = next(iter(source.buffers())).device
        diff = export_model(source, export, example.to(device))
        lines.append(
            f"exported the shrunk model to {export} (TorchScript; reloaded, max |diff| "
            f"{diff:.1e}); load it with torch.jit.load"
        )
    return shrunk, lines
