"""Token, call and cost accounting; scoped trackers so an evaluation counts only its own calls."""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import BudgetExceededError

__all__ = ["Budget", "Usage", "record", "track_usage"]


@dataclass(slots=True)
class Usage:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    retries: int = 0
    errors: int = 0
    hedges: int = 0
    #: calls an estimate (``LM(estimate=True)``) found no cached answer for: they would be made
    estimated: int = 0
    #: those calls' tokens at most: their prompts and each answer's token limit (an estimate's upper bound)
    estimated_limit: int = 0
    #: requests an estimate met before in the same run (counted in ``calls`` and ``cache_hits``): a run
    #: answers them from the cache the first asking fills; not in the cache now
    repeated: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.cache_hits += other.cache_hits
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.retries += other.retries
        self.errors += other.errors
        self.hedges += other.hedges
        self.estimated += other.estimated
        self.estimated_limit += other.estimated_limit
        self.repeated += other.repeated

    def to_dict(self) -> dict[str, float | int]:
        # by hand: dataclasses.asdict deep-copies field by field (~10 µs; this runs once per example)
        out: dict[str, float | int] = {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "retries": self.retries,
            "errors": self.errors,
            "hedges": self.hedges,
            "tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.estimated or self.repeated:  # only an estimate run has them
            out["estimated"] = self.estimated
            out["estimated_limit"] = self.estimated_limit
            out["repeated"] = self.repeated
        return out


_trackers: contextvars.ContextVar[tuple[Usage, ...]] = contextvars.ContextVar("dspex_usage", default=())


def cost_spent(cost: float, max_cost: float) -> str:
    """``$0.000063 of $0.000050``: a spent cost budget, to as many decimals as tell the two apart (four,
    or more for a budget below a cent: ``$0.0001 of $0.0001`` hid a 26% overshoot), and the overshoot
    (calls already in flight when the budget was reached are answered and charged)."""
    places = 4 if max_cost <= 0 else min(10, max(4, 1 - math.floor(math.log10(max_cost))))  # two digits of the budget
    over = f", {cost / max_cost - 1:.0%} over: the calls in flight when it was reached" if max_cost and cost > max_cost * 1.005 else ""
    return f"${cost:.{places}f} of ${max_cost:.{places}f}{over}"


@contextlib.contextmanager
def track_usage() -> Iterator[Usage]:
    """Count the LM usage of everything run inside this block (including nested tasks)."""
    usage = Usage()
    token = _trackers.set((*_trackers.get(), usage))
    try:
        yield usage
    finally:
        _trackers.reset(token)


def record(delta: Usage) -> None:
    for tracker in _trackers.get():
        tracker.add(delta)


class Budget:
    """A spending limit shared by LMs: past it, no new (uncached) LM call is made."""

    def __init__(self, max_cost: float | None = None, max_calls: int | None = None) -> None:
        self.max_cost = max_cost
        self.max_calls = max_calls
        self.cost = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def reserve(self) -> None:
        """Count one call about to be made, or raise if the budget is spent.

        Calls are counted when they start (so concurrent calls cannot overshoot the call limit);
        cost is added when the answer arrives, so in-flight calls may overshoot the cost limit
        by at most the concurrency's worth of calls.
        """
        with self._lock:
            self._check()
            self.calls += 1

    async def areserve(self) -> None:
        """``reserve`` from the request path (a run-wide budget asks the run's coordinator: ``link``)."""
        self.reserve()

    def _check(self) -> None:
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise BudgetExceededError(
                f"LM call budget spent ({self.calls} of {self.max_calls} calls); no further calls are made"
            )
        if self.max_cost is not None and self.cost >= self.max_cost:
            raise BudgetExceededError(
                f"LM cost budget spent ({cost_spent(self.cost, self.max_cost)}); no further calls are made"
            )

    def charge(self, cost: float) -> None:
        with self._lock:
            self.cost += cost
