"""A package's names imported on first use (PEP 562), so importing the package costs only what is used.

    _LAZY = {"LM": ".client", "events": ".observe.events"}     # name -> the module (relative) it is in
    __getattr__ = lazy_attributes(__name__, _LAZY, modules={"events"})  # events: the module itself

The pytest plugin is loaded in every pytest run of a project that installs pytest-dspex: its option
check must not pay for the LM client or the optimizers.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Container, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str], modules: Container[str] = ()) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``name`` from the module ``where[name]`` (the module
    itself for the names in ``modules``), kept in the package once found."""

    def __getattr__(name: str) -> Any:
        module_name = where.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        value = module if name in modules else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
