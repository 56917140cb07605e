"""Retries, back-pressure and the circuit breaker: how one logical LM call rides through faults.

A *logical call* is one request the program asked for (after the cache and in-flight sharing);
an *attempt* is one HTTP request made for it. The retry loop (:func:`send_with_retries`) makes
attempts until one succeeds, the error is not worth retrying, or the retries are spent; only the
logical call's final outcome is reported to the breaker.

Retries
    5xx, 408, timeouts, refused/reset connections and garbled bodies are retried up to
    ``RetryPolicy.retries`` times with full-jitter exponential backoff (a random wait up to
    ``backoff_base × 2^retry``, 0.1 s base, capped at ``backoff_max`` = 20 s). A 429 is back-pressure,
    not a failure: the wait is the server's ``Retry-After`` (or the backoff when it sends none),
    and 429s draw on their own allowance (``throttle_retries`` = 10), not on ``retries``: a call
    gives up after 10 retries on 429, whatever ``--dspex-retries`` says.

Back-pressure (:class:`AdaptiveLimiter`, AIMD on the in-flight limit)
    Every answered attempt is an observation. While 429s keep coming — at least half of the last
    ``window`` answers (``window = max(8, 2 × limit)``) — the limit is halved (multiplicative
    decrease, never below 1; the window then starts afresh, so one burst halves it once). Every
    ``limit`` answers that are not 429 add one slot back (additive increase), up to the configured
    concurrency. A scattering of 429s among good answers does not lower the limit: that is a
    server's bad minute, handled by the retry; a server that is over its capacity answers mostly
    429 and the limit comes down to what it can take.

    Below the limit, refusals find an endpoint's cap on requests in flight (:class:`Wire`, :class:`CapFinder`):
    each 429 is resolved with how many requests were on the wire with it and answered; when most recent
    refusals agree on C, the limit becomes C, and the cut is undone if the 429s come as often below it.

    With a Redis URL the halving is every process's (``redis_limits``): one process's halving halves
    the others' limits once (a remote worker or shard seeing no 429 of its own yet).

    A 429 with ``Retry-After`` also *holds* the endpoint: no new request leaves for it until then
    (``AdaptiveLimiter.hold``; a request already holding a slot waits in it): the limiter's whole
    traffic waits, not only the refused call. With xdist the hold is the run's (``link``: told to
    every worker through the coordinator), and with a Redis URL every process's (``redis_limits``).

Circuit breaker (:class:`Breaker`, a ``pybreaker.CircuitBreaker`` driven per logical call)::

                     admit(): new calls pass
                 ┌────────────────────────────┐
                 ▼                            │ trial call succeeded, or the
    ┌────────────────────────┐                │ endpoint answered (4xx / 429 /
    │ CLOSED                 │                │ garbled body: pybreaker ``exclude``)
    │ count consecutive      │       ┌────────┴──────────────────┐
    │ failed logical calls   │       │ HALF-OPEN                 │
    └──────────┬─────────────┘       │ exactly one trial call;   │
               │ fail_max failed     │ every other new call      │
               │ logical calls       │ fails fast                │
               ▼                     └────────┬──────────▲───────┘
    ┌────────────────────────┐  trial failed  │          │ reset_timeout elapsed,
    │ OPEN                   │◄───────────────┘          │ on the next admit()
    │ new calls fail fast    ├───────────────────────────┘
    │ (CircuitOpenError)     │
    └────────────────────────┘

* A failure is a logical call that failed after its retries with an *endpoint* error: refused
  or broken connection, timeout, HTTP 5xx/408. A call that ended with a 4xx, a 429 or a garbled
  body is excluded (the endpoint answered: pybreaker counts it as a success). Budget, replay and
  cancellation outcomes are not reported at all.
* An endpoint that *refuses everything* opens the breaker too: ``fail_max`` logical calls in a row
  ending with 401, 403, 404, 405 or 410 (a wrong URL, key or model: no request will fare better),
  or ``10 × fail_max`` in a row ending with any other 4xx but 408/429 (a 400 may be one request's
  own problem — a rejected ``grammar`` field is asked again without it). An answer in between
  starts the count again. Measured: a compile against a base URL answering 404 made 75,960
  requests; now the first ``fail_max`` 404s (plus what was already in flight) are all it sends.
* An endpoint that answers *nothing but 429* opens it too, *rate limited*: at least ``fail_max``
  requests in a row answered 429 (no answer in between) over at least ``throttle_patience``
  seconds (60 s). 429s are back-pressure, excluded from pybreaker's count (to pybreaker an answer
  is a success) and retried after ``Retry-After`` under a hold, so a spent quota — 429 forever —
  used to keep a run waiting without end (326 refusals in 10 minutes, one in flight). A rate limit
  that clears (a per-minute window, a burst) answers again within the patience: a single answer
  starts the count again. The fast-failing calls carry ``kind`` ``rate_limited``; a trial call
  answered 429 re-opens it at once.
* Under xdist the count is the run's, not the worker's: each failed logical call is told to the
  run's coordinator (``Breaker.on_failure``), which opens every worker's breaker at the run's
  ``fail_max``-th failure in a row; the first answer after that count started (any worker's)
  starts it again (``on_alive``, said once per worker while the run's count is rising, so a
  healthy run sends nothing). Measured with 8 workers and a dead endpoint: each worker used to
  need ``fail_max`` failures of its own before the first opening reached the others.
* Each opening starts a new *generation*. A call admitted before the breaker opened keeps going:
  its in-flight attempt completes and its answer is returned to its caller (a response that
  arrived is never discarded); it only makes no *new* attempt (no further retry) while the
  breaker is not closed, and its outcome is not reported (it belongs to the old generation).
* Only ``admit()`` fails fast, i.e. only new calls. The trial call in half-open runs its
  retries like any call; its outcome closes or re-opens the breaker; while it runs, other new
  calls fail fast. A cancelled trial frees the trial slot without a verdict.
* A ``Breaker`` belongs to an LM family (an ``LM`` and its ``copy()``s); a new ``LM`` gets a
  new breaker. There is no process-wide registry.

pybreaker keeps the counters and the state; the asyncio side is ours: pybreaker's ``call()`` is
only used to report an outcome while the breaker is closed or for the trial (so it never raises
for being open), and the open→half-open move is made by ``admit()`` on a monotonic clock. All of
it runs on pytest-dspex's one background loop, so no two threads touch a breaker at once.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from .._support import lending as _lending
from ..errors import (
    CircuitOpenError,
    LMError,
    LMHTTPError,
    LMResponseError,
    LMTimeoutError,
    LMUnavailableError,
)


@contextmanager
def _without(*names: str) -> Iterator[None]:
    """Hide modules not imported yet from the imports made in the block (they raise ImportError).

    pybreaker imports ``redis`` (and tries ``tornado``) at import time for storages we never use:
    ~50 ms of CPU on every start-up and xdist worker. A module already imported is left alone, and
    ``import redis`` works as usual after the block.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with _without("redis", "tornado"):
    import pybreaker

__all__ = [
    "AdaptiveLimiter",
    "Breaker",
    "RetryPolicy",
    "Ticket",
    "is_endpoint_failure",
    "parse_retry_after",
    "send_with_retries",
]

T = TypeVar("T")
logger = logging.getLogger("pytest_dspex.lm")


# -- retries -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 20.0
    retry_after_max: float = 60.0
    throttle_retries: int = 10  # 429s: their own allowance, they are not failures

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


#: statuses that say the endpoint, the key or the model is wrong: every request will get the same
_REFUSING_STATUSES = frozenset({401, 403, 404, 405, 410})


def _refusal(exc: BaseException) -> bool:
    """A non-retryable 4xx (not 408 or 429): the endpoint answered, refusing the request."""
    return isinstance(exc, LMHTTPError) and 400 <= exc.status < 500 and exc.status not in (408, 429)


def _is_throttle(exc: BaseException) -> bool:
    return isinstance(exc, LMHTTPError) and exc.status == 429


def is_endpoint_failure(exc: BaseException) -> bool:
    """Does ``exc`` say the endpoint is down or broken (as opposed to answering with an error)?"""
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, LMUnavailableError | LMTimeoutError):
        return True
    return isinstance(exc, LMHTTPError) and (exc.status >= 500 or exc.status == 408)


def _endpoint_answered(exc: BaseException) -> bool:
    """pybreaker ``exclude``: errors that prove the endpoint is up (it answered)."""
    return isinstance(exc, LMHTTPError | LMResponseError) and not is_endpoint_failure(exc)


# -- back-pressure -----------------------------------------------------------------------------
#: what became of a request on the wire (``Wire.back``)
ACCEPTED, REFUSED, UNKNOWN = 1, 2, 0


class Wire:
    """How many requests the endpoint took at once, from this process's requests on the wire.

    Each request is numbered as it goes on the wire (``send``) and told back with what became of it
    (``back``): *accepted* (any answer but a 429: the endpoint took it), *refused* (429) or unknown (a
    timeout, a lost connection, a cancelled hedge). Once every request sent before a refused one is
    back, the refusal is resolved: ``on_refusal(accepted, on_wire)`` gets how many of the requests on
    the wire when it went out were accepted, and how many were on the wire (itself included). Against
    an endpoint refusing above a cap, ``accepted`` is the cap; against 429s that say nothing of in
    flight (a rate limit, a bad minute), about every other request on the wire. ``peak``: the most
    accepted requests that were on the wire together. The endpoint counts a request from its arrival
    to its answer, within the time this process counts it: neither figure is below what the endpoint
    counted. Two dictionary operations a request.
    """

    __slots__ = ("_accepted_before", "_at", "_head", "_marks", "_outcome", "accepted_back", "on_refusal", "peak", "returned", "sent")

    def __init__(self) -> None:
        self.sent = 0  # requests put on the wire (the next one's number)
        self.returned = 0
        self.accepted_back = 0
        self.peak = 0
        self.on_refusal: Callable[[int, int], None] | None = None
        self._at: dict[int, tuple[int, int]] = {}  # number -> (returned, accepted returned) when it went out
        self._outcome: dict[int, int] = {}  # back, not yet resolved (a request sent before it is out)
        self._head = 0  # the oldest number not resolved
        self._accepted_before = 0  # accepted among the numbers below ``_head``
        self._marks: collections.deque[tuple[int, int, int, Callable[[int, int], None]]] = collections.deque()

    def mark(self, then: Callable[[int, int], None]) -> None:
        """``then(accepted, on_wire)`` once every request on the wire now is back: how many of them were accepted."""
        if self._head == self.sent:  # nothing on the wire
            then(0, 0)
            return
        self._marks.append((self.sent, self.returned, self.accepted_back, then))

    def send(self) -> int:
        number = self.sent
        self.sent += 1
        self._at[number] = (self.returned, self.accepted_back)
        return number

    def back(self, number: int, outcome: int) -> None:
        self.returned += 1
        if outcome == ACCEPTED:
            self.accepted_back += 1
        self._outcome[number] = outcome
        while self._head in self._outcome:
            head = self._head
            outcome = self._outcome.pop(head)
            returned, accepted_back = self._at.pop(head)
            accepted = self._accepted_before - accepted_back  # accepted, sent before it, not back when it went out
            if outcome == ACCEPTED:
                self.peak = max(self.peak, accepted + 1)
                self._accepted_before += 1
            elif outcome == REFUSED and self.on_refusal is not None:
                self.on_refusal(accepted, head - returned + 1)
            self._head += 1
            while self._marks and self._marks[0][0] <= self._head:
                sent, returned, accepted_back, then = self._marks.popleft()
                then(self._accepted_before - accepted_back, sent - returned)


def outcome_of(exc: BaseException | None) -> int:
    """``Wire.back``'s outcome of a request that ended with ``exc`` (None: answered)."""
    if exc is None:
        return ACCEPTED
    if isinstance(exc, LMHTTPError):
        return REFUSED if exc.status == 429 else ACCEPTED
    return ACCEPTED if isinstance(exc, LMResponseError) else UNKNOWN


class CapFinder:
    """An endpoint's cap on requests in flight, found from its refusals (``Wire``), and tried.

    An endpoint refusing above a cap of C in flight refuses a request while it holds C: each refusal
    resolves with C requests accepted on the wire with it (a little more at times: this process sees
    an answer after the endpoint let it go). 429s that say nothing of in flight (a rate limit, a bad
    minute) resolve with anything from none to every other request on the wire. So: when at least
    ``AGREE`` of the last ``RECENT`` refusals had between v and v + max(1, v // 8) accepted with them
    (v the least such) and v is below the limit, the limit (and what it may grow to) is set to v.

    The cut is then *tried*: over the next ``max(32, 2 × the old limit)`` answers once no more than the
    new limit is out, the share refused must fall to less than half the share before it (from the start, or the last cut kept); against a
    cap it falls to about none. If it does not, the 429s were not about in flight: the limit goes back
    to what it was, and refusals cut it no more in this run (``scattered``; the halving while 429s are
    half the answers still holds).
    """

    RECENT = 5
    AGREE = 4

    def __init__(self) -> None:
        self.recent: collections.deque[int] = collections.deque(maxlen=self.RECENT)
        self.scattered = False
        self.kept = 0  # cuts tried and kept
        self._trial: tuple[int, int, Any, float, int] | None = None  # what a cut replaced; the share before; answers to try
        self._answers = 0  # since the run's start or the last cut kept
        self._refused = 0

    def refusal(self, accepted: int, limit: int) -> int | None:
        """A resolved refusal: the cap to set (below ``limit``), or None."""
        self.recent.append(accepted)
        if self.scattered or self._trial is not None or len(self.recent) < self.AGREE:
            return None
        for v in sorted(set(self.recent)):
            if v >= limit:
                return None
            if sum(v <= a <= v + max(1, v // 8) for a in self.recent) >= self.AGREE:
                return max(1, v)
        return None

    def trying(self, limit: int, maximum: int, probed: Any) -> None:
        """A cut is made: try it (``answered`` says whether it stays)."""
        share = self._refused / self._answers if self._answers else 1.0
        self._trial = (limit, maximum, probed, share, max(32, 2 * limit))
        self._answers = self._refused = 0

    def cut_to_cap(self, aimd: Any, accepted: int) -> int | None:
        """A resolved refusal to ``aimd``, an AIMD state (a process's ``AdaptiveLimiter``, or the run's
        ``coordinator._Endpoint``: ``limit``, ``maximum``, ``probed``, ``capped``, ``calm``, ``credit``,
        ``recent``): when refusals agree on a cap below its limit, try it there (``trying``), and
        return the cap; else None, and ``aimd`` is left as it was."""
        cap = self.refusal(accepted, aimd.limit)
        if cap is None:
            return None
        self.trying(aimd.limit, aimd.maximum, aimd.probed)
        aimd.probed = aimd.maximum = aimd.limit = cap
        aimd.capped += 1
        aimd.calm = cap
        aimd.credit = 0
        aimd.recent.clear()
        return cap

    @property
    def trying_now(self) -> bool:
        return self._trial is not None

    def answered(self, ok: int, refused: int, *, drained: bool = True) -> tuple[int, int, Any] | None:
        """Answers came (``refused`` of them 429): what to restore when a tried cut did not help. While a
        cut is tried, answers count only once no more than the new limit is out (``drained``)."""
        if self._trial is not None and not drained:
            return None
        self._answers += ok + refused
        self._refused += refused
        if self._trial is None or self._answers < self._trial[4]:
            return None
        limit, maximum, probed, before, _ = self._trial
        self._trial = None
        if self._refused * 2 < before * self._answers:
            self.kept += 1
            self._answers = self._refused = 0
            return None
        self.scattered = True
        return limit, maximum, probed


class AdaptiveLimiter:
    """A FIFO limit on requests in flight that backs off while 429s keep coming (AIMD).

    ``start`` (below ``maximum``): the limit starts there and grows by one per ``limit`` good
    answers while they come with at least half the limit in flight, up to ``maximum`` — probing
    what the endpoint accepts. A 429 while above ``start`` is the endpoint's answer: the limit and
    ``maximum`` become 90% of what is still in flight, below the limit (never below ``start``;
    headroom for the endpoint's count lagging ours), for good (``probed``): it grows no more
    (another 429 above ``start``, after ``limit`` answers, lowers it again the same way).
    """

    def __init__(self, maximum: int, start: int | None = None) -> None:
        self.maximum = maximum
        self.start = min(start, maximum) if start else maximum
        self.limit = self.start
        self.probed: int | None = None  # the ceiling a 429 above ``start`` found
        self.calm = 0  # answers to wait before another 429 above ``start`` lowers it again
        self.in_flight = 0
        self.decreases = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.recent: collections.deque[bool] = collections.deque(maxlen=max(8, 2 * maximum))
        self.credit = 0
        self.held_until = 0.0  # monotonic: no request leaves before then (a ``Retry-After``)
        self.holds = 0  # how many times a hold started or was extended
        #: told each hold this process starts (``link``: the run's other processes hold too)
        self.on_hold: Callable[[float], None] | None = None
        #: told each time 429s halve the limit here (``redis_limits``: the run's other processes halve too)
        self.on_decrease: Callable[[int], None] | None = None
        self.decreased_at = 0.0  # monotonic: the last halving (its own or another process's)
        #: this process's requests on the wire, and what the endpoint took at once (``Wire``)
        self.wire = Wire()
        self.wire.on_refusal = self.refused_at
        self.caps = CapFinder()
        self.capped = 0  # the cuts to a cap found by ``caps`` in force (made, less those undone)
        self.answered = 0  # answers observed (``observe``), and of them 429s
        self.throttled = 0
        self.peak = 0  # the most requests in flight at once

    def stats(self) -> dict[str, Any]:
        """What this limit did, in the shape of the run's coordinator's (``coordinator.describe``)."""
        return {"limit": self.limit, "maximum": self.maximum, "start": self.start, "probed": self.probed or 0,
                "decreases": self.decreases, "throttled": self.throttled, "capped": self.capped,
                "scattered": self.caps.scattered, "answered": self.answered, "trips": 0, "trials": 0,
                "peak_lent": self.peak, "holds": self.holds, "failing": 0}  # fmt: skip

    def refused_at(self, accepted: int, on_wire: int = 0) -> None:
        """A refusal resolved by ``wire``: ``accepted`` requests were on the wire with it, answered."""
        cap = self.caps.cut_to_cap(self, accepted)
        if cap is not None:
            logger.info("LM endpoint refuses requests above %d in flight: the in-flight limit is now %d", cap, cap)

    def hold(self, seconds: float, *, tell: bool = True) -> bool:
        """Send no new request for ``seconds`` (a ``Retry-After``); False if already held that long."""
        until = time.monotonic() + seconds
        if until <= self.held_until + 0.01:
            return False
        self.held_until = until
        self.holds += 1
        if tell and self.on_hold is not None:
            self.on_hold(seconds)
        return True

    async def wait_hold(self) -> None:
        """Until the endpoint's hold ends (at once when there is none: one comparison)."""
        while (left := self.held_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    @property
    def window(self) -> int:
        return max(8, 2 * self.limit)

    def _halve(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.decreases += 1
        self.decreased_at = time.monotonic()
        self.recent.clear()
        self.credit = 0

    def cut(self, *, unless_within: float = 1.0) -> bool:
        """Another process of the run halved its limit for 429s: halve here too, once — unless this
        limiter halved within ``unless_within`` seconds (the same burst of 429s, already answered)."""
        if time.monotonic() - self.decreased_at < unless_within:
            return False
        self._halve()
        logger.info("LM endpoint answers 429 to another process of the run: in-flight limit lowered to %d", self.limit)
        return True

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            if self.in_flight > self.peak:
                self.peak = self.in_flight
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                fut.set_result(None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            if self.held_until:
                await self.wait_hold()
            number = self.wire.send()  # on the wire: counted with what became of it (``Wire``)
            try:
                yield
            except BaseException as exc:
                self.wire.back(number, outcome_of(exc))
                raise
            self.wire.back(number, ACCEPTED)
        finally:
            self.release()

    def observe(self, *, throttled: bool) -> None:
        """One answered attempt: a 429 (``throttled``) or anything else."""
        self.answered += 1
        self.throttled += throttled
        undo = self.caps.answered(0 if throttled else 1, 1 if throttled else 0, drained=self.in_flight <= self.limit)
        if undo is not None:  # a cap tried did not lessen the 429s: they were not about in flight
            self.limit, self.maximum, self.probed = undo
            self.capped -= 1  # (``capped``: the cuts in force)
            self.credit = 0
            self._wake()
            logger.info("LM endpoint answers 429 as often below %d in flight: the in-flight limit is %d again", self.limit, self.limit)
            return
        self.recent.append(throttled)
        self.calm = max(0, self.calm - 1)
        if throttled and self.limit > self.start:
            if not self.calm:  # one cut per ``limit`` answers: a burst of 429s is one overshoot
                self.probed = self.maximum = self.limit = max(self.start, min(self.limit - 1, self.in_flight) * 9 // 10)
                self.calm = self.limit
                self.credit = 0
                logger.info("LM endpoint answers 429 above %d in flight: the in-flight limit stays at %d", self.start, self.limit)
            return
        if throttled:
            window = self.window
            recent = list(self.recent)[-window:]
            if sum(recent) * 2 >= window:
                self._halve()
                logger.info("LM endpoint keeps answering 429: in-flight limit lowered to %d", self.limit)
                if self.on_decrease is not None:
                    self.on_decrease(self.limit)
        elif self.limit < self.maximum and (self.limit <= self.start or 2 * self.in_flight >= self.limit):
            self.credit += 1
            if self.credit >= self.limit:
                self.credit = 0
                self.limit += 1
                self._wake()


# -- the breaker -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ticket:
    """What ``Breaker.admit()`` hands a logical call: its generation and whether it is the trial."""

    generation: int
    trial: bool


class Breaker:
    """A per-LM-family circuit breaker counting failed logical calls (see the module docstring)."""

    def __init__(self, name: str, fail_max: int = 5, reset_timeout: float = 30.0, throttle_patience: float = 60.0) -> None:
        self.name = name
        self.reset_timeout = reset_timeout
        self.throttle_patience = throttle_patience
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            name=name,
            exclude=[_endpoint_answered],
            listeners=[_Watch(self)],
            throw_new_error_on_trip=False,
        )
        self._generation = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._sleepers: set[asyncio.Future[None]] = set()
        self.failures = 0  # failed logical calls reported (endpoint failures)
        self.trips = 0  # how many times it opened
        self.opened_after: int | None = None  # failures reported when it first opened
        self.last_error: str | None = None
        self.refusals = 0  # logical calls in a row the endpoint refused with a 4xx (see the module docstring)
        self._refused: str | None = None  # why it is open, when the endpoint refuses everything
        self.throttled_in_row = 0  # requests in a row answered 429, none answered in between
        self._throttled_since = 0.0  # monotonic: the first of them
        #: the ``kind`` of the error a call failing fast gets: ``rate_limited`` when 429s opened it
        self.open_kind = "lm_unavailable"
        #: told each opening of this breaker (its message): the run's limits (``link``) share it
        self.on_open: Callable[[str], None] | None = None
        self._run_message: str | None = None  # opened because another worker's breaker opened
        self._opening_for_run = False
        #: told when this breaker lets its half-open trial call through, and when it closes again
        #: (``link``: one trial for the run, whose success closes every worker's breaker)
        self.on_trial: Callable[[], None] | None = None
        self.on_closed: Callable[[], None] | None = None
        self._closing_for_run = False
        #: told each failed logical call this breaker counts (its error): the run's limits (``link``)
        #: count them run-wide, so the run's ``fail_max``-th failure opens every worker's breaker
        self.on_failure: Callable[[str], None] | None = None
        #: told the first answer after the run's count was said to be rising (``run_failing``): it resets it
        self.on_alive: Callable[[], None] | None = None
        self.run_failing = False

    @property
    def state(self) -> str:
        return str(self._cb.current_state)

    @property
    def fail_max(self) -> int:
        return int(self._cb.fail_max)

    @property
    def fail_counter(self) -> int:
        return int(self._cb.fail_counter)

    def admit(self) -> Ticket:
        """Let a new logical call through, or raise ``CircuitOpenError`` (failing fast)."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return Ticket(self._generation, False)
        if state == pybreaker.STATE_OPEN:
            if time.monotonic() < self._opened_at + self.reset_timeout:
                raise self.open_error()
            self._cb.half_open()
        if self._trial_running:
            raise self.open_error()
        self._trial_running = True
        if self.on_trial is not None:
            self.on_trial()
        return Ticket(self._generation, True)

    def refused(self, ticket: Ticket, exc: LMHTTPError) -> None:
        """The endpoint refused ``ticket``'s request with a 4xx (see the module docstring).

        Called as the answer arrives, before the call gives its concurrency slot back: the calls
        queued for that slot see the breaker open and fail fast instead of sending more requests
        into a refusal (``done`` still reports the call's outcome).
        """
        if _is_throttle(exc):
            self._throttled(ticket, exc)
            return
        if not _refusal(exc):
            return
        if not ticket.trial and (ticket.generation != self._generation or self._cb.current_state != pybreaker.STATE_CLOSED):
            return
        self.refusals += 1
        limit = self.fail_max if exc.status in _REFUSING_STATUSES else 10 * self.fail_max
        if self.refusals >= limit or (ticket.trial and self._refused is not None):
            self.last_error = str(exc)
            self.open_kind = "lm_http"  # reached, and refusing: the calls failing fast say so (their kind, HTTP status)
            self._refused = (
                f"the endpoint refused {self.refusals} calls in a row with HTTP {exc.status} "
                f"(last: {exc}); no other request would fare better"
            )
            self._cb.open()

    def _throttled(self, ticket: Ticket, exc: LMHTTPError) -> None:
        """A request answered 429: open, rate limited, once nothing but 429s came for ``throttle_patience``."""
        if ticket.trial:
            if self.open_kind == "rate_limited" and ticket.generation == self._generation:
                self.throttled_in_row += 1
                self._cb.open()  # still refusing: another ``reset_timeout`` (its retries stop: ``may_retry``)
            return
        if ticket.generation != self._generation or self._cb.current_state != pybreaker.STATE_CLOSED:
            return
        now = time.monotonic()
        if not self.throttled_in_row:
            self._throttled_since = now
        self.throttled_in_row += 1
        waited = now - self._throttled_since
        if self.throttled_in_row >= self.fail_max and waited >= self.throttle_patience:
            self.last_error = str(exc)
            self.open_kind = "rate_limited"
            self._refused = (
                f"the endpoint answered every request with HTTP 429 for {waited:.0f}s "
                f"({self.throttled_in_row} requests in a row, none answered; last: {exc}) - a spent quota or a "
                "rate limit this run cannot wait out; check the key's quota and billing, lower --dspex-concurrency, "
                "or wait longer with --dspex-rate-limit-patience"
            )
            self._cb.open()

    def open_for_run(self, message: str, kind: str = "lm_unavailable") -> None:
        """Another process of this run found the endpoint down: fail fast here too (``message`` says why)."""
        if self._cb.current_state == pybreaker.STATE_OPEN:
            return
        self._run_message = message
        self.open_kind = kind
        self._opening_for_run = True
        try:
            self._cb.open()
        finally:
            self._opening_for_run = False

    def hold_for_run(self, message: str) -> None:
        """Another worker's trial call is under way: stay open (a full ``reset_timeout`` more at most)."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED or self._trial_running:
            return
        if state == pybreaker.STATE_HALF_OPEN:
            self.open_for_run(message)
        self._opened_at = time.monotonic()

    def close_for_run(self) -> None:
        """Another worker's trial call succeeded: the endpoint answers again, close."""
        if self._cb.current_state == pybreaker.STATE_CLOSED or self._trial_running:
            return
        self._closing_for_run = True
        try:
            self._cb.close()
        finally:
            self._closing_for_run = False
        self._run_message = None
        self.refusals = 0
        self._refused = None
        self.throttled_in_row = 0
        self.open_kind = "lm_unavailable"

    def _closed(self) -> None:
        if not self._closing_for_run and self.on_closed is not None:
            self.on_closed()

    def open_error(self) -> CircuitOpenError:
        """The error a call failing fast gets (its ``kind`` says why: ``rate_limited`` or ``lm_unavailable``)."""
        error = CircuitOpenError(self._message())
        error.kind = self.open_kind
        return error

    def may_retry(self, ticket: Ticket) -> bool:
        """May the call holding ``ticket`` make another attempt? Not once the breaker opened under it."""
        if ticket.trial:
            return ticket.generation == self._generation  # not once its own answer re-opened the breaker
        return ticket.generation == self._generation and self._cb.current_state == pybreaker.STATE_CLOSED

    async def pause(self, seconds: float, ticket: Ticket) -> None:
        """Sleep before a retry; wake early when the breaker opens (that call will not retry)."""
        if not self.may_retry(ticket):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.add(fut)
        try:
            await asyncio.wait_for(fut, seconds)
        except TimeoutError:
            pass
        finally:
            self._sleepers.discard(fut)

    def done(self, ticket: Ticket, exc: BaseException | None) -> None:
        """Report the outcome of a logical call (``None``: it succeeded)."""
        if exc is None:
            self.throttled_in_row = 0  # the endpoint answered (whichever generation asked)
        if ticket.trial:
            self._trial_running = False
            if exc is not None and not _is_verdict(exc):
                return  # cancelled or never sent: the next new call is the trial
        elif ticket.generation != self._generation or self._cb.current_state != pybreaker.STATE_CLOSED:
            return  # admitted before the breaker opened: its outcome is its caller's alone
        if self.run_failing and (exc is None or _endpoint_answered(exc)):
            self.run_failing = False  # the endpoint answered: the run's count of failures in a row starts again
            if self.on_alive is not None:
                self.on_alive()
        if exc is None:
            self.refusals = 0
            self._refused = None
            self.open_kind = "lm_unavailable"
            if ticket.trial or self._cb.fail_counter:  # else nothing to reset: skip pybreaker's bookkeeping
                self._cb.call(_noop)
            return
        if not _is_verdict(exc):
            return
        if ticket.trial and _is_throttle(exc) and self.open_kind == "rate_limited":
            return  # ``_throttled`` re-opened the breaker on this very answer
        if _refusal(exc):
            if self._refused is not None:
                return  # ``refused`` opened the breaker on this very answer
        else:
            self.refusals = 0
            self._refused = None
            self.open_kind = "lm_unavailable"
        if is_endpoint_failure(exc):
            self.failures += 1
            self.last_error = str(exc)
            if self.on_failure is not None and not ticket.trial:
                self.run_failing = True
                self.on_failure(self.last_error)
        try:
            self._cb.call(_raise, exc)
        except BaseException:  # the caller raises the error itself
            pass

    def _opened(self) -> None:
        self._generation += 1
        self._opened_at = time.monotonic()
        self.trips += 1
        if self.opened_after is None:
            self.opened_after = self.failures
        for fut in self._sleepers:
            if not fut.done():
                fut.set_result(None)
        if self._opening_for_run:
            logger.info("LM endpoint %s: circuit breaker opened for the run: %s", self.name, self._run_message)
            return
        self._run_message = None
        if self.on_open is not None:
            self.on_open(self._message())
        if self._refused is not None:
            logger.warning("LM endpoint %s: circuit breaker opened: %s", self.name, self._refused)
            return
        logger.warning(
            "LM endpoint %s: circuit breaker opened after %d failed calls in a row (last: %s)",
            self.name,
            self._cb.fail_max,
            self.last_error,
        )

    def _message(self) -> str:
        if self._run_message is not None:
            return self._run_message
        if self._refused is not None:
            state = {"rate_limited": "is rate limited", "lm_http": "refuses every request"}.get(self.open_kind, "is unavailable")
            return f"LM endpoint {self.name} {state}: {self._refused}; failing fast for {self.reset_timeout:g}s"
        last = f" (last error: {self.last_error})" if self.last_error else ""
        return (
            f"LM endpoint {self.name} is unavailable: circuit breaker open after "
            f"{self._cb.fail_max} consecutive failed calls{last}; failing fast for {self.reset_timeout:g}s"
        )

    def __repr__(self) -> str:
        return f"Breaker({self.name!r}, state={self.state!r}, failures={self.failures})"


def _is_verdict(exc: BaseException) -> bool:
    """Does this outcome say anything about the endpoint?"""
    return is_endpoint_failure(exc) or _endpoint_answered(exc)


class _Watch(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        if new_state is not None and new_state.name == pybreaker.STATE_OPEN:
            self._breaker._opened()
        elif new_state is not None and new_state.name == pybreaker.STATE_CLOSED and old_state is not None:
            self._breaker._closed()


def _noop() -> None:
    return None


def _raise(exc: BaseException) -> None:
    raise exc


# -- the retry loop ----------------------------------------------------------------------------
async def send_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    breaker: Breaker,
    ticket: Ticket,
    limiter: AdaptiveLimiter | Any,
    label: str = "LM",
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds or should stop; return its result and the retries made.

    ``attempt`` makes one request and takes its own slot in ``limiter``; its errors are
    ``LMError``s. The answers are fed to the limiter (429 or not); the breaker is only asked
    whether another attempt may start.
    """
    failed = throttled = 0
    while True:
        try:
            data = await attempt()
        except LMError as exc:
            throttle = _is_throttle(exc)
            if isinstance(exc, LMHTTPError | LMResponseError):
                limiter.observe(throttled=throttle)
            spent = throttled >= policy.throttle_retries if throttle else failed >= policy.retries
            if not exc.retryable or spent:
                raise _gave_up(exc, failed + throttled, "") from None
            retry_after = getattr(exc, "retry_after", None)
            delay = policy.delay(throttled if throttle else failed, retry_after)
            if throttle and retry_after and hasattr(limiter, "hold"):
                limiter.hold(min(retry_after, policy.retry_after_max))  # the endpoint's, not this call's alone
            if isinstance(exc, LMHTTPError | LMResponseError):
                # the endpoint answered (5xx, 429, garbled): it is alive, so an evaluation may start
                # another example meanwhile; not for refused connections or timeouts (a dead or hung
                # endpoint gets no more traffic than before)
                _lending.waiting()
            await breaker.pause(delay, ticket)  # returns early if the breaker opens meanwhile
            if not breaker.may_retry(ticket):
                raise _gave_up(exc, failed + throttled, "; not retried: the circuit breaker opened") from None
            if throttle:
                throttled += 1
            else:
                failed += 1
            logger.info("%s: %s; retry %d after %.2fs", label, exc, failed + throttled, delay)
        else:
            limiter.observe(throttled=False)
            return data, failed + throttled


def _gave_up(exc: LMError, retries: int, why: str) -> LMError:
    exc.retries = retries
    if retries or why:
        exc.args = (f"{exc.args[0]}" + (f" (after {retries} retries)" if retries else "") + why,)
    return exc
