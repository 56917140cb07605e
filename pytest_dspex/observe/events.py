"""Observability: typed events, subscribers, structured logging, optional OpenTelemetry spans.

Every LM call, every evaluated example and every optimizer step emits one event. Subscribe with::

    from pytest_dspex.observe import events
    unsubscribe = events.subscribe(lambda ev: print(ev))

Subscribers run on the thread that emitted the event (often pytest-dspex's background loop), so
they must be quick and thread-safe. When nobody listens and logging is off, emitting costs one
check. Each event is also logged on the ``pytest_dspex`` logger at DEBUG with its fields under
``extra={"dspex": {...}}``. OpenTelemetry spans: see ``pytest_dspex.observe.tracing``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Event",
    "ExampleEvent",
    "GateEvent",
    "LMCallEvent",
    "OptimizerEvent",
    "emit",
    "has_listeners",
    "span",
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


@dataclass(frozen=True, slots=True)
class GateEvent(Event):
    program: str
    passed: bool
    score: float
    threshold: float | None
    reason: str


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


_tracer: Any = None
_tracer_checked = False


def _get_tracer() -> Any:
    global _tracer, _tracer_checked
    if not _tracer_checked:
        _tracer_checked = True
        try:
            from opentelemetry import trace
        except ImportError:
            _tracer = None
        else:
            _tracer = trace.get_tracer("pytest_dspex")
    return _tracer


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """An OpenTelemetry span when ``opentelemetry-api`` is installed, else nothing."""
    tracer = _get_tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name) as s:
        for k, v in attributes.items():
            if v is not None:
                s.set_attribute(f"dspex.{k}", v)
        yield s
