"""The optimizers ``--dspex-optimizer NAME`` (ini ``dspex_optimizer``, marker ``optimizer=``) can name.

    optimizer = make_optimizer(metric, CompileSettings(optimizer="bootstrap"), progress=print)
    result = optimizer.compile(student, trainset=train, valset=dev)

A new optimizer is one module (a class with ``from_settings``, ``compile`` and ``describe``:
``optimize.protocol``) and one line in ``OPTIMIZERS``. Entries name ``module:Class`` and are imported
only when used, so reading the names (the option's check) costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .default import DEFAULT_OPTIMIZER

if TYPE_CHECKING:  # annotations only: the plugin's option check imports this module in every process
    from .protocol import Optimizer, OptimizerClass, OptimizerSettings

__all__ = ["DEFAULT_OPTIMIZER", "OPTIMIZERS", "make_optimizer", "optimizer_class", "unknown_optimizer"]

#: name -> ``module:Class`` (the module relative to this package)
OPTIMIZERS: dict[str, str] = {
    "random-search": "search:BootstrapFewShotWithRandomSearch",  # candidates raced on the selection set
    "bootstrap": "single:Bootstrap",  # DSPy's BootstrapFewShot: one program, demos from passing teacher runs
    "labeled": "single:Labeled",  # DSPy's LabeledFewShot: k demos from the trainset, no teacher calls
}


def unknown_optimizer(name: object) -> str | None:
    """Why ``name`` is not an optimizer (the known names listed), or None when it is one."""
    if isinstance(name, str) and name in OPTIMIZERS:
        return None
    return f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}"


def optimizer_class(name: str) -> OptimizerClass:
    """The class registered as ``name`` (``ConfigError`` listing the known names when there is none)."""
    problem = unknown_optimizer(name)
    if problem is not None:
        raise ConfigError(problem)
    module, _, attr = OPTIMIZERS[name].partition(":")
    found: Any = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
    return found  # type: ignore[no-any-return]


def make_optimizer(
    metric: Callable[..., Any],
    settings: OptimizerSettings,
    *,
    progress: Callable[[str], None] | None = None,
    leave_one_out: bool = False,
) -> Optimizer:
    """The optimizer ``settings.optimizer`` names, built from ``settings``."""
    return optimizer_class(settings.optimizer).from_settings(metric, settings, progress=progress, leave_one_out=leave_one_out)
