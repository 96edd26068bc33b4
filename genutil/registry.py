"""Resolve the experiment file's ``module.path:ClassName`` strings to classes.

Only modules under ``models.`` (for ``model:``) and ``data.`` (for ``data:``) are importable
this way, so an experiment file cannot make the framework import arbitrary code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

from genutil.errors import ConfigError

__all__ = ["resolve"]

_PACKAGES = {"model": "models", "data": "data"}


def resolve(spec: str, kind: str) -> type:
    """Return the class named by ``spec`` ('module.path:ClassName') for ``kind`` model|data."""
    package = _PACKAGES[kind]
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
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(
                f"{kind}: module {module_name} does not exist: check the "
                f"{kind}: entry of the experiment file"
            ) from None
        raise
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
