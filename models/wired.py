"""DNW on any network: the 1x1 convolutions of a network you already have become graph layers.

The paper's MobileNetV1 result is DNW on the pointwise convolutions of a real network: every
channel is a node and every entry of a 1x1 weight [n_out, n_in, 1, 1] is an edge. ``wire``
does the same to any ``nn.Module``, in place:

    net = torchvision.models.mobilenet_v2(num_classes=10)
    wire(net, graph="dnw", prune_rate=0.8, exclude=["classifier.*"])

Every ``nn.Conv2d`` with a 1x1 kernel and ``groups == 1`` (filtered by module-name patterns)
is replaced by the edge-type module of ``edges.py`` (``dnw``: the top ``n - int(p * n)`` edges of
largest |w| in the forward, the gradient to every edge in the backward; ``random``: a fixed
random mask of the same count; every other edge type of ``GRAPH_TYPES`` likewise), keeping the
convolution's weight values, bias, stride, padding (and padding mode). Nothing else changes:
the state dict keeps its keys (edge types with a mask add a ``mask`` buffer next to the
weight), and the network's own forward runs as before.

The wired network then implements the contract (``models/contract.py``): its class becomes
``Wired<Class>``, a subclass of both its own class and ``WiredNetwork``, so training,
checkpoints, profiling (kept edges plus every other parameter; MACs of one forward), the
figures and ``fast_eval`` (each graph layer runs only its kept edges: ``sparse_layers.py``)
work on it unchanged. No node is removed: in a network the tools know nothing about, a channel
whose edges are all pruned may still be read elsewhere (by a residual addition, a
concatenation, a norm that adds its bias), so only the kept edges are dropped, never channels.

``ImportedModel`` is the same from an experiment file: ``model:`` names any importable
``module:Class`` or ``module:function``, ``model_kwargs:`` its arguments, ``wire: True`` the
wiring. An experiment file that names code runs that code: trust it like any Python file.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from models.contract import WiredNetwork
from models.counting import count_generic
from models.graphs.edges import GRAPH_TYPES, Graph, make_graph

__all__ = ["wire", "wirable_layers", "is_wired", "ImportedModel", "PruneRates"]

#: a prune rate for every layer, a {name or pattern: rate} mapping (first match in order; '*'
#: for the rest), or a function (layer name, the nn.Conv2d) -> rate
PruneRates = Union[float, Mapping[str, float], Callable[[str, nn.Conv2d], float]]

_CONTRACT_NAMES = ("graph_layers", "profile", "fast_plan", "input_shape", "from_state_dict")
_WIRED_CLASSES: dict[type, type] = {}


def _patterns(value: Union[None, str, Iterable[str]], name: str) -> Optional[list[str]]:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(p, str) and p for p in items):
        raise ValueError(f"{name} must be module-name patterns (strings), got {value!r}")
    return items


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_pointwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and not isinstance(module, Graph)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
    )


def wirable_layers(
    model: nn.Module,
    include: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every 1x1, groups == 1 ``nn.Conv2d`` of ``model`` that ``include``
    (None: all) names and ``exclude`` does not. Patterns are module names or ``fnmatch``
    patterns (``features.*.conv.2``)."""
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    return [
        (name, m)
        for name, m in model.named_modules()
        if _is_pointwise(m)
        and (inc is None or _matches(name, inc))
        and not (exc and _matches(name, exc))
    ]


def _rate_for(name: str, conv: nn.Conv2d, prune_rate: PruneRates) -> float:
    if callable(prune_rate):
        rate = prune_rate(name, conv)
    elif isinstance(prune_rate, Mapping):
        key = name if name in prune_rate else None
        if key is None:
            key = next((p for p in prune_rate if fnmatch.fnmatchcase(name, p)), None)
        if key is None:
            raise ValueError(
                f"prune_rate has no entry for layer {name!r}: add it, a pattern that matches it, "
                "or a '*' entry for every other layer"
            )
        rate = prune_rate[key]
    else:
        rate = prune_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"prune rate of layer {name!r} is {rate!r}: give a number in [0, 1)")
    return float(rate)


def _graph_layer(conv: nn.Conv2d, graph: str, rate: float, rho: Any, td_abs: bool) -> Graph:
    """The edge-type module standing in for ``conv``: same weight values, bias and geometry."""
    layer = make_graph(graph, rate, conv.in_channels, conv.out_channels, rho=rho, td_abs=td_abs)
    layer.stride = conv.stride
    layer.padding = conv.padding
    layer.dilation = conv.dilation
    layer.padding_mode = conv.padding_mode
    layer._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
    layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
    layer.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        layer.bias = nn.Parameter(conv.bias.detach().clone(), conv.bias.requires_grad)
    layer.train(conv.training)
    return layer


class _Wired(WiredNetwork):
    """What ``wire`` mixes into a network's class: the contract, for a network it knows nothing
    about (its input shape is recorded at wiring time; everything else is generic)."""

    def input_shape(self) -> tuple[int, int, int]:
        return self.__dict__.get("_wired_input", (3, 224, 224))

    def profile(self, input_size: Optional[int] = None):
        return count_generic(self, input_size)

    def wiring(self) -> dict:
        """How the network was wired: graph, prune rates per layer, include, exclude."""
        return dict(self.__dict__.get("_wired_settings", {}))

    def __reduce_ex__(self, protocol):
        # the class is made at run time: pickle (torch.save of the whole model, deepcopy) names
        # the network's own class instead, and the wiring is mixed in again when it is read
        return (_rewired, (type(self).__bases__[1],), self.__dict__.copy())


def _rewired(base: type) -> nn.Module:
    cls = _wired_class(base)
    return cls.__new__(cls)


def _wired_class(cls: type) -> type:
    """``Wired<cls>``: the network's class with the contract mixed in (one per class)."""
    if issubclass(cls, WiredNetwork):
        return cls
    if cls not in _WIRED_CLASSES:
        clash = [n for n in _CONTRACT_NAMES if any(n in vars(c) for c in cls.__mro__[:-2])]
        if clash:
            raise ValueError(
                f"{cls.__name__} defines {', '.join(clash)}, which the wired network's contract "
                "(models/contract.py) needs: rename it in your class, or subclass WiredNetwork"
            )
        _WIRED_CLASSES[cls] = type(
            f"Wired{cls.__name__}",
            (_Wired, cls),
            {"__module__": cls.__module__, "__doc__": cls.__doc__},
        )
    return _WIRED_CLASSES[cls]


def is_wired(model: nn.Module) -> bool:
    """Whether ``model`` went through ``wire`` (or is a network of the project)."""
    return isinstance(model, WiredNetwork)


def _first_input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return 3


def wire(
    model: nn.Module,
    graph: str = "dnw",
    prune_rate: PruneRates = 0.5,
    include: Union[None, str, Iterable[str]] = None,
    exclude: Union[None, str, Iterable[str]] = None,
    *,
    rho: Union[float, str] = 0.5,
    td_abs: bool = False,
    input_size: Optional[int] = None,
    in_channels: Optional[int] = None,
) -> nn.Module:
    """Make every 1x1, groups == 1 convolution of ``model`` a graph layer of edge type
    ``graph`` (module docstring); return ``model``, wired in place.

    ``prune_rate``: the fraction of each layer's edges removed, for all layers, per layer name
    or pattern (a mapping), or from a function of (name, conv). ``include``/``exclude``: module
    names or ``fnmatch`` patterns. ``rho``/``td_abs``: targeted dropout's (``td``, ``reg_td``).
    ``input_size``/``in_channels``: the input the profile counts MACs at (default 224 and the
    first layer's input channels). Raises ValueError for an unknown edge type, a bad rate, or a
    network without a 1x1 convolution to wire.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wire() takes an nn.Module, got {type(model).__name__}")
    if graph not in GRAPH_TYPES:
        raise ValueError(
            f"graph {graph!r} is not an edge type: choose one of {sorted(GRAPH_TYPES)}"
        )
    if isinstance(model, WiredNetwork) and not isinstance(model, _Wired):
        raise ValueError(
            f"{type(model).__name__} is a network of the project, wired already: set its graph "
            "and prune_rate in its experiment file"
        )
    targets = wirable_layers(model, include, exclude)
    if not targets:
        found = len(wirable_layers(model))
        why = (
            f"its {found} are all left out by include/exclude: loosen them"
            if found
            else "name a network that has one (or wire its layers yourself with models.graphs."
            "edges.make_graph)"
        )
        raise ValueError(
            f"{type(model).__name__} has no 1x1 convolution with groups=1 to wire: {why}"
        )
    rates = {name: _rate_for(name, conv, prune_rate) for name, conv in targets}
    if isinstance(model, _Wired):
        settings = model.wiring()
    else:
        settings = {"layers": {}}
        channels = in_channels or _first_input_channels(model)
        model.__dict__["_wired_input"] = (channels, input_size or 224, input_size or 224)
        model.__class__ = _wired_class(type(model))
    if input_size or in_channels:
        c, h, w = model.input_shape()
        model.__dict__["_wired_input"] = (in_channels or c, input_size or h, input_size or w)
    replacement = {
        id(conv): _graph_layer(conv, graph, rates[name], rho, td_abs) for name, conv in targets
    }
    # every place a convolution is held (a module shared by two parents is replaced in both)
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                parent._modules[child_name] = replacement[id(child)]
    settings["layers"].update({name: {"graph": graph, "prune_rate": rates[name]} for name in rates})
    model.__dict__["_wired_settings"] = settings
    return model


# ---------------------------------------------------------------------------------------------
# Any importable network from an experiment file


class ImportedModel:
    """The ``model:`` entry of an experiment file that names a network outside the project's
    own (any importable class or function returning an ``nn.Module``), as the run layer needs
    it: ``from_config(cfg)`` builds it with ``model_kwargs``, wires it when ``wire`` is set, and
    checks it maps an ``in_channels x image_size x image_size`` input to ``output_size`` logits.
    """

    setting = None
    inert_keys: dict = {}

    def __init__(self, spec: str, target: Callable[..., nn.Module]) -> None:
        self.spec = spec
        self.target = target
        self.__name__ = spec

    def config_keys(self, cfg) -> set[str]:
        """The config keys this model reads."""
        keys = {"model_kwargs", "wire"}
        if cfg.wire:
            keys |= {"graph", "prune_rate", "wire_include", "wire_exclude", "wire_prune_rates"}
        return keys

    def build(self, kwargs: Mapping[str, Any]) -> nn.Module:
        """``target(**kwargs)``; ValueError (one line) for arguments it does not take."""
        try:
            inspect.signature(self.target).bind(**kwargs)
        except TypeError as e:
            raise ValueError(f"model_kwargs {dict(kwargs)} do not fit {self.spec}: {e}") from None
        except ValueError:  # no signature to check (a builtin): let the call tell
            pass
        try:
            model = self.target(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{self.spec}(**model_kwargs) failed: {type(e).__name__}: {e}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{self.spec} returned a {type(model).__name__}, not an nn.Module: name a network "
                "class or a function that returns one"
            )
        return model

    def from_config(self, cfg) -> nn.Module:
        """The network of ``cfg``: built, wired if ``cfg.wire``, checked on one input."""
        model = self.build(cfg.model_kwargs)
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if cfg.wire:
            rates: PruneRates = cfg.prune_rate
            if cfg.wire_prune_rates:
                rates = {**cfg.wire_prune_rates, "*": cfg.prune_rate}
            wire(
                model,
                cfg.graph,
                rates,
                include=cfg.wire_include or None,
                exclude=cfg.wire_exclude or None,
                rho=cfg.rho,
                td_abs=cfg.td_abs,
            )
        elif not isinstance(model, WiredNetwork):  # unwired (the dense baseline): the contract
            model.__class__ = _wired_class(type(model))
            model.__dict__["_wired_settings"] = {"layers": {}}
        if isinstance(model, _Wired):
            model.__dict__["_wired_input"] = shape
        self._check_shapes(model, shape, cfg.output_size)
        return model

    def _check_shapes(self, model: nn.Module, shape: tuple, output_size: int) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                out = model(torch.zeros(2, *shape))
        except Exception as e:  # noqa: BLE001 - the user's forward: say why in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(
                f"{self.spec} cannot run a {'x'.join(map(str, shape))} input "
                f"({type(e).__name__}: {first}): set in_channels / image_size, or model_kwargs, "
                "to what the network takes"
            ) from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, output_size):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.spec} gives outputs {got} for a batch of 2, not (2, {output_size}): set "
                f"its number of classes in model_kwargs (e.g. num_classes: {output_size}) or "
                "output_size"
            )
