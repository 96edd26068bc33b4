"""Resolve the experiment file's ``module.path:Name`` strings to what builds the model / data.

``data:`` names a class under ``data.``. ``model:`` names a network of the project (a class under
``models.``), or ANY importable class or function that returns an ``nn.Module`` (a user's module
on ``PYTHONPATH``, ``torchvision.models:mobilenet_v2``), built with ``model_kwargs`` and wired
with ``wire: True`` (``models/wired.py``). An experiment file that names code makes the
framework import and run that code: trust an experiment file as you would any Python file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from genutil.errors import ConfigError

__all__ = ["resolve"]

_PACKAGES = {"model": "models", "data": "data"}


def resolve(spec: str, kind: str) -> Any:
    """What ``spec`` ('module.path:Name') names for ``kind`` model|data: a class with
    ``from_config(cfg)``; for a model outside ``models.``, an ``ImportedModel`` (which has one
    too) unless it names a ``WiredNetwork`` class with its own."""
    package = _PACKAGES[kind]
    if kind == "model" and ":" in spec and spec.partition(":")[0].split(".")[0] != package:
        return _imported_model(spec)
    if ":" not in spec:
        raise ConfigError(
            f"{kind}: {spec!r} is not 'module.path:ClassName': write it that way, "
            f"e.g. {package}.<module>:<Class>"
        )
    module_name, _, class_name = spec.partition(":")
    if module_name != package and not module_name.startswith(package + "."):
        raise ConfigError(
            f"{kind}: {spec!r} is outside the {package}/ package: name a module under {package}."
        )
    module = _import_module(module_name, kind)
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        names = [
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and v.__module__ == module.__name__
        ]
        near = difflib.get_close_matches(class_name, names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (it has: {', '.join(names)})"
        raise ConfigError(
            f"{kind}: {module_name} has no class {class_name}{hint}: fix the {kind}: entry"
        )
    return cls


def _import_module(module_name: str, kind: str) -> Any:
    """The module, or a one-line ConfigError: not found (naming PYTHONPATH), or what it raised
    while importing (a user's module is code like any other)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(
                f"{kind}: module {module_name} was not found: check the {kind}: entry, and that "
                "its folder is on PYTHONPATH (or installed)"
            ) from None
        raise ConfigError(f"{kind}: importing {module_name} failed: {e}") from None
    except SyntaxError as e:
        raise ConfigError(
            f"{kind}: importing {module_name} failed: SyntaxError at {e.filename}:{e.lineno}: "
            f"{e.msg}"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(
            f"{kind}: importing {module_name} failed: {type(e).__name__}: {e}"
        ) from None


def _imported_model(spec: str) -> Any:
    """A model outside ``models.``: the object ``module.path:name`` names (``name`` may be
    dotted: ``Outer.Inner``), as something with ``from_config``."""
    from models.contract import WiredNetwork  # noqa: PLC0415  (imports torch: on demand)
    from models.wired import ImportedModel  # noqa: PLC0415

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"model: {spec!r} is not 'module.path:Name': write it that way, e.g. "
            "torchvision.models:mobilenet_v2 or mypackage.nets:MyNet"
        )
    target: Any = _import_module(module_name, "model")
    for part in attr.split("."):
        if not hasattr(target, part):
            public = sorted(
                n
                for n, v in vars(target).items()
                if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
            )
            near = difflib.get_close_matches(part, public, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"model: {module_name} has no {attr!r}{hint}: fix the model: entry")
        target = getattr(target, part)
    builds_itself = callable(getattr(target, "from_config", None))
    if inspect.isclass(target) and issubclass(target, WiredNetwork) and builds_itself:
        return target  # a network written to the contract, with its own from_config
    if not callable(target):
        raise ConfigError(
            f"model: {spec} is a {type(target).__name__}, not a network class or a function "
            "that returns one: fix the model: entry"
        )
    return ImportedModel(spec, target)
