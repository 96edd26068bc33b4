"""Public API for notebooks, tests and tools; main.py uses it like any other caller.

    model = build_model("apps/small_scale/static_dnw.yml", prune_rate=0.9)
    meta = load_checkpoint(model, "checkpoints/<title>/best.pt")
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config, load_config
from genutil.errors import ConfigError
from genutil.registry import resolve

__all__ = ["build_model", "model_from_config", "load_checkpoint", "profile"]


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
