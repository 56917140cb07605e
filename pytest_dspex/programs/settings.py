"""Global defaults (``configure``), scoped overrides (``context``) and session defaults.

Where a setting comes from, first match wins:

1. ``with context(lm=teacher):`` — the block and the tasks it starts;
2. ``configure(lm=LM(...))`` — process-wide, set by the user;
3. ``session_defaults(lm=..., json_fallback=False)`` — what a pytest session provides (its LM for
   programs that have none, like ``dspy.configure``); undone when the session ends, so a session
   never changes settings behind the user's back. Values may be zero-argument callables wrapped in
   ``lazy(...)``, resolved on first use (the session LM is built only when a program needs it);
4. the built-in defaults.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..lm.client import LM
    from .adapters import Adapter

__all__ = ["configure", "context", "current_adapter", "current_lm", "embedded_lm", "lazy", "session_defaults"]

_DEFAULTS: dict[str, Any] = {"lm": None, "adapter": None, "json_fallback": True, "call_overrides": None}
_global: dict[str, Any] = {}
_sessions: list[dict[str, Any]] = []
_scoped: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("dspex_settings", default=None)


class lazy:
    """A session default computed on first use: ``session_defaults(lm=lazy(lambda: session.lm))``."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def _check(values: dict[str, Any], where: str) -> None:
    unknown = {k: values[k] for k in sorted(set(values) - set(_DEFAULTS))}
    if unknown:
        from .._support.dspy_idioms import HINTS

        parts = [f"{k!r} (pytest-dspex: {HINTS['configure'][k]})" if k in HINTS["configure"] else repr(k) for k in unknown]
        raise TypeError(f"{where}() got unknown setting{'s' if len(parts) > 1 else ''} {', '.join(parts)}; it takes {', '.join(sorted(_DEFAULTS))}")


def configure(**values: Any) -> None:
    """Set process-wide defaults: ``configure(lm=LM(...), adapter="chat")``."""
    _check(values, "configure")
    _global.update(values)


@contextlib.contextmanager
def context(**values: Any) -> Iterator[None]:
    """Override settings inside a block (and the tasks it starts): ``with context(lm=teacher):``."""
    _check(values, "context")
    merged = dict(_scoped.get() or {})
    merged.update(values)
    token = _scoped.set(merged)
    try:
        yield
    finally:
        _scoped.reset(token)


def session_defaults(**values: Any) -> Callable[[], None]:
    """Install defaults below the user's own ``configure``; returns the function that removes them."""
    _check(values, "session_defaults")
    layer = dict(values)
    _sessions.append(layer)

    def remove() -> None:
        if any(entry is layer for entry in _sessions):
            _sessions[:] = [entry for entry in _sessions if entry is not layer]

    return remove


def get(name: str) -> Any:
    scoped = _scoped.get()
    if scoped is not None and name in scoped:
        return scoped[name]
    if name in _global:
        return _global[name]
    for layer in reversed(_sessions):
        if name in layer:
            value = layer[name]
            return value.factory() if isinstance(value, lazy) else value
    return _DEFAULTS[name]


def current_lm() -> LM | None:
    return get("lm")  # type: ignore[no-any-return]


def current_adapter() -> Adapter | str | None:
    return get("adapter")  # type: ignore[no-any-return]


@contextlib.contextmanager
def embedded_lm(**lm_options: Any) -> Iterator[LM]:
    """The embedded model for a block of Python code, outside pytest::

        import pytest_dspex as dspex

        with dspex.embedded_lm() as lm:
            compiled = dspex.load_golden(triage, "tests/__dspex__/test_triage/triage.json")
            print(compiled(message="I was charged twice").team)

    Starts the llama.cpp server (as a test run does), yields an ``LM`` for it and makes that LM the
    default of every program without an LM of its own (below a ``configure(lm=...)`` of yours) for
    the block; the server stops when the block ends, or with this process. ``lm_options`` go to
    ``LM`` (``max_tokens``, ``cache``, ``concurrency``...); the response cache is the one pytest-dspex
    uses by default, under the same identity as the plugin's embedded model, so answers cached by a
    test run are reused.
    """
    import os
    import uuid

    from ..lm import LM
    from ..lm.local import embedded as local

    run_id = f"api-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    url = local.ensure_server(run_id, os.getpid())
    try:
        options: dict[str, Any] = {"cache_identity": f"embedded:{local.LOCAL_MODEL_NAME}", "hedge_after": None, **lm_options}
        lm = LM(local.LOCAL_MODEL_NAME, base_url=url, **options)
        # a small base model never answers in JSON: the fallback would only double the calls
        remove = session_defaults(lm=lm, json_fallback=False)
        try:
            yield lm
        finally:
            remove()
            lm.close()
    finally:
        local.stop_server(run_id)
