"""Public API for notebooks, tests and tools; main.py uses it like any other caller.

    model = build_model("apps/small_scale/static_dnw.yml", prune_rate=0.9)
    meta = load_checkpoint(model, "checkpoints/<title>/best.pt")
    params, macs = profile(model)
    small = fast_eval(model.eval(), backend="sparse")
    net = wire(torchvision.models.mobilenet_v2(num_classes=10), graph="dnw", prune_rate=0.8)

Errors are Python errors that name the argument at fault (ValueError, TypeError), or, for a file
the user gave, a ``CheckpointError`` naming the file; the command line turns them into its own
wording.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from genutil.checkpoint import load_model_state, model_state, read_checkpoint
from genutil.config import Config, config_from_dict, load_config
from genutil.errors import CheckpointError, ConfigError
from genutil.registry import resolve
from models.contract import WiredNetwork, graph_layers, unwrap
from models.wired import wirable_layers, wire  # DNW on any network (models/wired.py)

__all__ = [
    "wire",
    "build_model",
    "model_from_config",
    "load_checkpoint",
    "profile",
    "fast_eval",
    "shrink",
    "Shrunk",
    "resolve_backend",
    "export_model",
    "unwrap",
    "wirable_layers",
]


def model_from_config(cfg: Config) -> nn.Module:
    """The unwrapped model named by ``cfg.model``, built from ``cfg`` (on the CPU)."""
    cls = resolve(cfg.model, "model")
    try:
        return cls.from_config(cfg)
    except ValueError as e:  # a model rejects its arguments: a config problem
        said = str(e)
        raise ConfigError(
            said if cfg.model in said else f"{cfg.model} cannot be built: {e}"
        ) from None


def build_model(app_path: str, **overrides: Any) -> nn.Module:
    """Build the model exactly as ``main.py app:<app_path> --key value ...`` would."""
    return model_from_config(load_config(app_path, overrides))


def load_checkpoint(model: nn.Module, path: str, *, allow_config_change: bool = False) -> dict:
    """Load weights from one of our checkpoints or an original one (with or without the
    ``module.`` prefix), safely; return the rest of the file (epoch, optimizer, ...).

    Our checkpoints store the config they were trained with: a model whose class, edge types or
    prune rates differ from what that config builds is refused (CheckpointError naming the
    checkpoint's values), since its outputs would not be the checkpoint's;
    ``allow_config_change=True`` loads the weights anyway (fine-tuning into another wiring).
    """
    ckpt = read_checkpoint(path)
    net = unwrap(model)
    if not allow_config_change and isinstance(ckpt.get("config"), dict):
        _check_wiring(net, config_from_dict(ckpt["config"]), path)
    load_model_state(net, model_state(ckpt), source=f"checkpoint {path}")
    return {k: v for k, v in ckpt.items() if k != "model"}


def _wiring(net: nn.Module) -> list[tuple[str, str, float]]:
    return [(g.name, type(g.module).__name__, g.module.prune_rate) for g in graph_layers(net)]


def _check_wiring(net: nn.Module, cfg: Config, path: str) -> None:
    """``net`` against the model the checkpoint's config builds (class, edge types, rates)."""
    try:
        with torch.random.fork_rng(devices=[]):  # a random wiring's draw leaves no trace
            reference = model_from_config(cfg)
    except (ConfigError, ImportError):  # its model cannot be built here: shapes will tell
        return
    if type(reference) is not type(net):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(reference).__name__} ({cfg.model}), this model is "
            f"a {type(net).__name__}: build the model the checkpoint was trained with"
        )
    for mine, theirs in zip(_wiring(net), _wiring(reference)):
        if mine != theirs:
            raise CheckpointError(
                f"checkpoint {path} was trained with graph {cfg.graph!r} and prune_rate "
                f"{cfg.prune_rate}, which give its layer '{theirs[0]}' {theirs[1]} edges at prune "
                f"rate {theirs[2]:g}; this model's are {mine[1]} at {mine[2]:g}: build the model "
                f"with the checkpoint's settings (build_model(app, graph={cfg.graph!r}, "
                f"prune_rate={cfg.prune_rate})) or pass allow_config_change=True"
            )


def _network(model: nn.Module) -> WiredNetwork:
    net = unwrap(model)
    if not isinstance(net, WiredNetwork):
        raise TypeError(
            f"model is a {type(net).__name__}, which does not implement "
            "models.contract.WiredNetwork: subclass it (docs/architecture.md)"
        )
    return net


def profile(model: nn.Module, input_size: Optional[int] = None) -> tuple[int, int]:
    """(parameters, multiply-adds) as the paper counts them: effective parameters (kept edges,
    not dense weights). ``input_size=None`` is each network's default: the model's own input
    side, except MobileNetV1Like, whose default is the original's 224 x 224 ImageNet assumption
    (what the paper's tables use). Details: ``genutil.profiling.profile``."""
    result = _network(model).profile(input_size)
    return result.params, result.macs


@dataclass
class Shrunk:
    """A shrunk network (``module``, in eval mode) and lines that say what it kept."""

    module: nn.Module
    lines: list[str]


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: the fastest exact backend for ``device``. Measured on the medium DNW x0.225
    model (bench/README.md): on the CPU sparse 1545 img/s at batch 256 against dense 682 (and
    the full model 918); on an H100 dense 101,579 against sparse 76,836 (cuSPARSE loses to cuDNN
    at these sizes). Other names are returned as they are."""
    if backend != "auto":
        return backend
    return "sparse" if torch.device(device).type == "cpu" else "dense"


def shrink(model: nn.Module, backend: str = "auto", rule: str = "original") -> Shrunk:
    """``fast_eval`` with its report (one line per part of the network)."""
    net = _network(model)
    device = next(net.parameters()).device
    backend = resolve_backend(backend, device)
    source = net if device.type == "cpu" else copy.deepcopy(net).cpu()
    was_training = source.training
    if was_training:  # (eval() also drops the graphs' cached weights: only when needed)
        source.eval()  # BatchNorm running statistics and the evaluation edge sets
    try:
        with torch.no_grad():
            plan = source.fast_plan(rule)
            module = plan.build(backend)
            lines = plan.report(backend)
    finally:
        if was_training:
            source.train()
    return Shrunk(module.to(device).eval(), lines)


def fast_eval(model: nn.Module, backend: str = "auto", rule: str = "original") -> nn.Module:
    """A NEW shrunk copy of ``model`` for evaluation, in eval mode on the model's device; the
    model is unchanged and the outputs are equal (up to the order of float sums).

    What shrinking means is the network's own plan (``fast_plan()``): MobileNetV1Like and
    StaticNeuralGraph remove dead nodes; any other network runs its graph layers' kept edges
    only. ``backend``: "auto" (the fastest exact one for the model's device: ``resolve_backend``),
    "dense" (1x1 convolutions), "sparse" (CSR products) or "dgl" (message passing; the DGL
    environment only). ``rule``: which nodes MobileNetV1Like counts as dead
    ("original" or "transitive"). ValueError for a network or backend that cannot do this.
    """
    return shrink(model, backend, rule).module


def export_model(
    model: nn.Module, path: str, example: torch.Tensor, metadata: Optional[dict] = None
) -> float:
    """Write a ``fast_eval`` model to ``path``: ``.pt2`` a torch.export program (dense backend;
    ``torch.export.load(path).module()``), ``.pt`` TorchScript (dense or sparse;
    ``torch.jit.load``), with ``metadata`` inside as ``metadata.json``. Reload it and check it on
    ``example``; return the largest absolute difference. Nothing of this project is needed to
    load it. ValueError for a module the format cannot hold."""
    from models.graphs.fast.export import export_model as _export  # noqa: PLC0415

    return _export(model, path, example, metadata)
