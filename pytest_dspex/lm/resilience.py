"""Retries with backoff that honour ``Retry-After``, and a circuit breaker per endpoint.

The breaker is a ``pybreaker.CircuitBreaker`` (its state machine, counters and listeners) driven
from asyncio without ``call_async`` (which needs tornado): ``before()`` is checked ahead of each
attempt, and ``success()`` / ``failure()`` feed the outcome back. All calls happen on
pytest-dspex's single background loop, so the state is never touched from two threads at once.
While half-open, exactly one trial request is let through; the others fail fast.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import pybreaker

from .._exceptions import CircuitOpenError

__all__ = ["Breaker", "RetryPolicy", "breaker_for", "parse_retry_after"]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_after_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return float(max(0.0, min(retry_after, self.retry_after_max)))
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return float(ceiling * random.random())  # "full jitter": spreads retries, shortens the tail


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Breaker:
    def __init__(self, name: str, fail_max: int = 5, reset_timeout: float = 30.0) -> None:
        self.name = name
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout, name=name)
        self._trial_in_flight = False
        self.failures = 0  # every failed attempt seen, for reports and tests
        self.opened_after: int | None = None  # failures seen when the breaker first opened

    @property
    def state(self) -> str:
        return str(self._cb.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self._cb.fail_counter)

    def before(self) -> None:
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return
        if state == pybreaker.STATE_OPEN:
            opened = self._cb._state_storage.opened_at
            if opened is not None and time.time() < opened.timestamp() + self._cb.reset_timeout:
                raise CircuitOpenError(self._message())
            self._cb.half_open()
        if self._trial_in_flight:
            raise CircuitOpenError(self._message())
        self._trial_in_flight = True

    def success(self) -> None:
        self._trial_in_flight = False
        if self._cb.current_state != pybreaker.STATE_CLOSED or self._cb.fail_counter:
            self._cb.call(_noop)

    def failure(self, exc: BaseException) -> None:
        self._trial_in_flight = False
        self.failures += 1
        try:
            self._cb.call(_raise, exc)
        except BaseException:
            pass
        if self.opened_after is None and self._cb.current_state == pybreaker.STATE_OPEN:
            self.opened_after = self.failures

    def _message(self) -> str:
        return (
            f"LM endpoint {self.name} is unavailable: circuit breaker open after "
            f"{self._cb.fail_max} consecutive failures; failing fast for {self._cb.reset_timeout:g}s"
        )


def _noop() -> None:
    return None


def _raise(exc: BaseException) -> None:
    raise exc


_breakers: dict[tuple[str, int, float], Breaker] = {}


def breaker_for(endpoint: str, fail_max: int = 5, reset_timeout: float = 30.0) -> Breaker:
    """One breaker per endpoint (and settings) in this process, shared by every LM using it."""
    key = (endpoint, fail_max, reset_timeout)
    b = _breakers.get(key)
    if b is None:
        b = _breakers[key] = Breaker(endpoint, fail_max, reset_timeout)
    return b
