"""Observability: typed events, subscribers, structured logging.

Every LM call, every evaluated example and every optimizer step emits one event. Subscribe with::

    import pytest_dspex as dspex
    unsubscribe = dspex.events.subscribe(lambda ev: print(ev))

Subscribers run on the thread that emitted the event (often pytest-dspex's background loop), so
they must be quick and thread-safe. When nobody listens and logging is off, emitting costs one
check. Each event is also logged on the ``pytest_dspex`` logger at DEBUG with its fields under
``extra={"dspex": {...}}``. OpenTelemetry spans: see ``pytest_dspex.observe.tracing``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Event",
    "ExampleEvent",
    "LMCallEvent",
    "OptimizerEvent",
    "emit",
    "has_listeners",
    "subscribe",
]

logger = logging.getLogger("pytest_dspex")


@dataclass(frozen=True, slots=True)
class Event:
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event"] = type(self).__name__
        return d


@dataclass(frozen=True, slots=True)
class LMCallEvent(Event):
    model: str
    endpoint: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cache_hit: bool
    retries: int
    breaker_state: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ExampleEvent(Event):
    index: int
    score: float
    error_kind: str | None
    latency_s: float
    program: str = ""


@dataclass(frozen=True, slots=True)
class OptimizerEvent(Event):
    step: str
    detail: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]
_subscribers: tuple[Subscriber, ...] = ()
_lock = threading.Lock()


def subscribe(callback: Subscriber) -> Callable[[], None]:
    """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
    global _subscribers
    with _lock:
        _subscribers = (*_subscribers, callback)

    def unsubscribe() -> None:
        global _subscribers
        with _lock:
            _subscribers = tuple(s for s in _subscribers if s is not callback)

    return unsubscribe


def has_listeners() -> bool:
    return bool(_subscribers) or logger.isEnabledFor(logging.DEBUG)


def emit(event: Event) -> None:
    for sub in _subscribers:
        try:
            sub(event)
        except Exception:  # a broken observer must not break an evaluation
            logger.exception("pytest-dspex event subscriber %r failed", sub)
    if logger.isEnabledFor(logging.DEBUG):
        data = event.to_dict()
        logger.debug("%s %s", data["event"], data, extra={"dspex": data})
