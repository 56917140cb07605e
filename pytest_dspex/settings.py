"""Global defaults (``configure``) and scoped overrides (``context``) for LM and adapter."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters import Adapter
    from .lm.client import LM

__all__ = ["configure", "context", "current_adapter", "current_lm"]

_global: dict[str, Any] = {"lm": None, "adapter": None, "json_fallback": True, "call_overrides": None}
_scoped: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("dspex_settings", default=None)


def configure(**values: Any) -> None:
    """Set process-wide defaults: ``configure(lm=LM(...), adapter="chat")``."""
    unknown = set(values) - set(_global)
    if unknown:
        raise TypeError(f"configure() got unknown settings: {', '.join(sorted(unknown))}")
    _global.update(values)


@contextlib.contextmanager
def context(**values: Any) -> Iterator[None]:
    """Override settings inside a block (and the tasks it starts): ``with context(lm=teacher):``."""
    unknown = set(values) - set(_global)
    if unknown:
        raise TypeError(f"context() got unknown settings: {', '.join(sorted(unknown))}")
    merged = dict(_scoped.get() or {})
    merged.update(values)
    token = _scoped.set(merged)
    try:
        yield
    finally:
        _scoped.reset(token)


def get(name: str) -> Any:
    scoped = _scoped.get()
    if scoped is not None and name in scoped:
        return scoped[name]
    return _global[name]


def current_lm() -> LM | None:
    return get("lm")  # type: ignore[no-any-return]


def current_adapter() -> Adapter | str | None:
    return get("adapter")  # type: ignore[no-any-return]
