"""A worker's side of the run's limits: its LM's in-flight slots, budget and breaker, held run-wide.

``RunLink(address, token)`` connects (on first use, on pytest-dspex's loop) to the controller's
``coordinator.Coordinator``. An ``LM(..., limits=link)`` then takes

* its in-flight slots from a :class:`SharedLimiter` (one per endpoint per process, shared by the
  LM's copies): slots are lent by the coordinator and kept while nobody else needs them, so a busy
  worker makes no round trip per request; answers (429 or not) are reported in batches, a 429 at once;
* its budget from a :class:`SharedBudget`: each call is reserved with the coordinator (one round
  trip per call, only when a budget is set), its cost charged as it arrives;
* its back-pressure hold from the run: a 429 with ``Retry-After`` here holds every worker's
  requests to that endpoint until then (``AdaptiveLimiter.hold``), and another's holds this one;
* its breaker's state from the run: each failed logical call is counted by the coordinator, whose
  ``fail_max``-th failure in a row (any worker's) opens every worker's breaker; an opening here is
  told to the coordinator, another worker's opening opens this breaker too (``Breaker.open_for_run``); when one worker's breaker lets its
  half-open trial call through, the others stay open until it ends (``hold_for_run``), and its
  success closes them all (``close_for_run``): one trial for the run, not one per worker.

A link that cannot connect, or loses its connection, falls back to the process's own limits (an
``AdaptiveLimiter`` of the same concurrency, the budget counted here) with one warning; every
request waiting on it carries on under the fallback at once — nothing waits for a coordinator that
is gone.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..errors import BudgetExceededError
from .resilience import ACCEPTED, AdaptiveLimiter, Breaker, outcome_of
from .usage import Budget

__all__ = ["RunLink", "SharedBudget", "SharedLimiter"]

logger = logging.getLogger("pytest_dspex.lm")

#: good answers reported in one message (a 429 is reported at once)
_BATCH = 16


class RunLink:
    """One process's connection to the run's coordinator (see the module docstring)."""

    def __init__(self, address: str, token: str, *, name: str = "worker", connect_timeout: float = 2.0) -> None:
        self.address = address
        self.name = name
        self._token = token
        self.connect_timeout = connect_timeout
        self.state = "new"  # new → up → lost (or new → lost); closed when this process is done
        self.lost_reason: str | None = None
        self._connecting: asyncio.Future[bool] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiters: dict[str, SharedLimiter] = {}
        self._breakers: dict[str, weakref.WeakSet[Breaker]] = collections.defaultdict(weakref.WeakSet)
        self._reserves: dict[int, asyncio.Future[str | None]] = {}
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"RunLink({self.address!r}, state={self.state!r})"

    # -- what an LM takes from the link -----------------------------------------------------------
    def limiter(self, endpoint: str, concurrency: int, start: int | None = None) -> SharedLimiter:
        found = self._limiters.get(endpoint)
        if found is None:
            found = self._limiters[endpoint] = SharedLimiter(self, endpoint, concurrency, start)
        return found

    def budget(self, max_cost: float | None, max_calls: int | None) -> SharedBudget:
        return SharedBudget(self, max_cost, max_calls)

    def watch(self, endpoint: str, breaker: Breaker) -> None:
        """``breaker``'s openings are the run's; the run's openings open it."""
        self._breakers[endpoint].add(breaker)
        breaker.on_open = lambda message: self.send(
            {"op": "trip", "ep": endpoint, "message": message, "reset": breaker.reset_timeout, "kind": breaker.open_kind}
        )
        breaker.on_trial = lambda: self.send({"op": "trial", "ep": endpoint})
        breaker.on_failure = lambda error: self.send(
            {"op": "fail", "ep": endpoint, "name": breaker.name, "error": error, "fail_max": breaker.fail_max,
             "reset": breaker.reset_timeout}
        )  # fmt: skip
        breaker.on_alive = lambda: self.send({"op": "alive", "ep": endpoint})
        breaker.on_closed = lambda: self.send({"op": "closed", "ep": endpoint})

    # -- the connection --------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.state == "up" and self._loop is asyncio.get_running_loop()

    async def ensure(self) -> bool:
        """Connected (connecting on first use)? False once lost: the caller uses its own limits."""
        if self.state == "up":
            return self._loop is asyncio.get_running_loop()
        if self.state in ("lost", "closed"):
            return False
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            host, _, port = self.address.rpartition(":")
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=1 << 20), self.connect_timeout)
            writer.write(json.dumps({"token": self._token, "name": self.name}).encode() + b"\n")
        except (OSError, TimeoutError, ValueError) as exc:
            self._lose(f"cannot reach the run's coordinator at {self.address} ({type(exc).__name__}: {exc})")
        else:
            self._loop = loop
            self._writer = writer
            self.state = "up"
            self._reader_task = loop.create_task(self._read(reader))
        self._connecting.set_result(self.state == "up")
        return self.state == "up"

    def send(self, message: dict[str, Any]) -> None:
        if self.state == "up" and self._writer is not None and not self._writer.is_closing():
            try:
                self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            except (OSError, RuntimeError) as exc:
                self._lose(f"lost the run's coordinator at {self.address} ({type(exc).__name__})")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        why = f"the run's coordinator at {self.address} closed the connection"
        try:
            while line := await reader.readline():
                try:
                    self._dispatch(json.loads(line))
                except ValueError:
                    continue
        except (OSError, asyncio.IncompleteReadError) as exc:
            why = f"lost the run's coordinator at {self.address} ({type(exc).__name__})"
        except asyncio.CancelledError:
            why = f"the link to the run's coordinator at {self.address} was closed"
        self._lose(why)

    def _dispatch(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "bye":  # the controller is ending the run (its end, or Ctrl-C): own limits, no warning
            self._lose("the run's coordinator stopped with the run", warn=False)
            return
        if op == "reserved":
            fut = self._reserves.pop(int(m.get("id", 0)), None)
            if fut is not None and not fut.done():
                fut.set_result(m.get("error"))
            return
        endpoint = str(m.get("ep", ""))
        if op == "pause":  # another worker's 429 said Retry-After: hold here too
            limiter = self._limiters.get(endpoint)
            if limiter is not None:
                limiter.hold(float(m.get("s", 0.0)), tell=False)
            return
        if op in ("open", "hold", "close", "failing"):
            for breaker in list(self._breakers.get(endpoint, ())):
                if op == "failing":  # the run's count of failed calls in a row started: say the next answer
                    breaker.run_failing = True
                elif op == "open":
                    breaker.open_for_run(str(m.get("message", "")), str(m.get("kind") or "lm_unavailable"))
                elif op == "hold":
                    breaker.hold_for_run(str(m.get("message", "")))
                else:
                    breaker.close_for_run()
            return
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            return
        if op == "grant":
            limiter.granted(int(m.get("n", 0)))
        elif op == "share":
            limiter.set_share(int(m.get("share", -1)))
        elif op == "probe":
            limiter.probe(int(m.get("id", 0)))
        elif op == "batch":
            limiter.batch = int(m.get("n", 0)) or _BATCH

    def _lose(self, why: str, *, warn: bool = True) -> None:
        if self.state in ("lost", "closed"):
            return
        self.state = "lost"
        self.lost_reason = why
        if warn:
            logger.warning("pytest-dspex: %s; this process now keeps its own LM limits (in-flight, budget, breaker)", why)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for limiter in self._limiters.values():
            limiter.fall_back()
        for fut in self._reserves.values():
            if not fut.done():
                fut.set_result(_FALLBACK)
        self._reserves.clear()

    async def reserve(self) -> str | None:
        """Reserve one call in the run's budget: None, the refusal, or ``_FALLBACK`` (no coordinator)."""
        if not await self.ensure():
            return _FALLBACK
        rid = next(self._ids)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._reserves[rid] = fut
        self.send({"op": "reserve", "id": rid})
        return await fut

    async def aclose(self) -> None:
        """The process is done with the run (not a lost coordinator: no warning)."""
        for limiter in self._limiters.values():  # its last good answers, short of a batch (trial7 T7-2)
            limiter.flush()
        self.state = "closed"
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()


_FALLBACK = "\0fallback"


class SharedLimiter:
    """``AdaptiveLimiter``'s interface over slots lent by the run's coordinator (module docstring)."""

    def __init__(self, link: RunLink, endpoint: str, maximum: int, start: int | None = None) -> None:
        self._link = link
        self.endpoint = endpoint
        self.maximum = maximum
        self._limits = {"max": maximum, "start": start} if start else {"max": maximum}  # said in every message
        self.held = 0  # slots lent to this process
        self.used = 0  # of those, in use
        self.share = -1  # -1: keep what we hold; >= 0: give back beyond this (others wait)
        self._asked = 0  # slots asked for and not yet granted
        self._ok = 0  # good answers not yet reported
        self.batch = _BATCH  # reported this many at a time (1 while the coordinator tries a cut)
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self.local = AdaptiveLimiter(maximum, start)  # the fallback: this process's own limit
        self.local.on_hold = self._told_hold  # the hold (Retry-After) is kept here, and told to the run
        self.local.wire.on_refusal = self._refused_at  # this process's requests on the wire, shared slots or not

    def hold(self, seconds: float, *, tell: bool = True) -> bool:
        """No new request to this endpoint for ``seconds`` — in this process and, told, in the run's others."""
        return self.local.hold(seconds, tell=tell)

    def _told_hold(self, seconds: float) -> None:
        if self._link.state == "up":
            self._link.send({"op": "pause", "ep": self.endpoint, **self._limits, "s": round(seconds, 3)})

    @property
    def held_until(self) -> float:
        return self.local.held_until

    # what ``AdaptiveLimiter`` shows
    @property
    def limit(self) -> int:
        return self.local.limit if self._link.state == "lost" else self.maximum

    @property
    def in_flight(self) -> int:
        return self.used + self.local.in_flight

    @property
    def decreases(self) -> int:
        return self.local.decreases

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        shared = await self._acquire()
        try:
            if self.local.held_until:
                await self.local.wait_hold()
            wire = self.local.wire  # this process's requests on the wire, shared slots or not
            number = wire.send()
            try:
                yield
            except BaseException as exc:
                wire.back(number, outcome_of(exc))
                raise
            wire.back(number, ACCEPTED)
        finally:
            self._release(shared)

    def _refused_at(self, accepted: int, on_wire: int) -> None:
        """A refusal resolved here (``resilience.Wire``): this process's own limit finds the endpoint's cap
        when the coordinator is gone; while it is up, the coordinator counts the run's (``probe``)."""
        if self._link.state == "lost":
            self.local.refused_at(accepted, on_wire)

    def probe(self, probe_id: int) -> None:
        """The coordinator heard of a 429: say how many of the requests on the wire here now are accepted."""
        self.local.wire.mark(lambda accepted, on_wire: self._link.send({"op": "probed", "ep": self.endpoint, "id": probe_id, "acc": accepted}))

    async def _acquire(self) -> bool:
        if not (self._link.up or await self._link.ensure()):
            await self.local.acquire()
            return False
        if self.used < self.held and not self._waiters:
            self.used += 1
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._ask()
        try:
            shared = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())  # handed a slot as we were cancelled
            else:
                self._waiters.remove(fut)
            raise
        if not shared:
            await self.local.acquire()
        return shared

    def _ask(self) -> None:
        need = len(self._waiters) - self._asked
        if need > 0:
            self._asked += need
            self._link.send(self._message("want", need))

    def _message(self, op: str, n: int) -> dict[str, Any]:
        message = {"op": op, "ep": self.endpoint, "n": n, **self._limits}
        if self._ok:
            message["ok"] = self._ok
            self._ok = 0
        return message

    def _release(self, shared: bool) -> None:
        if not shared:
            self.local.release()
            return
        if self._link.state == "lost":
            return  # lent by a coordinator that is gone: nothing to give back
        self.used -= 1
        if self.share >= 0 and (self.held > self.share or not self._waiters):
            self.held -= 1
            self._link.send(self._message("ret", 1))
            return
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.used < self.held:
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(True)

    def granted(self, n: int) -> None:
        self._asked = max(0, self._asked - n)
        self.held += n
        self._hand_over()
        self._give_back_idle()

    def set_share(self, share: int) -> None:
        self.share = share
        self._give_back_idle()

    def _give_back_idle(self) -> None:
        idle = self.held - self.used
        if self.share >= 0 and idle > 0 and not self._waiters:
            self.held -= idle
            self._link.send(self._message("ret", idle))

    def observe(self, *, throttled: bool) -> None:
        if self._link.state != "up":
            self.local.observe(throttled=throttled)
            return
        if throttled:
            message = {"op": "obs", "ep": self.endpoint, **self._limits, "ok": self._ok, "thr": 1}
            self._ok = 0
            self._link.send(message)
            return
        self._ok += 1
        if self._ok >= self.batch:
            self._link.send({"op": "obs", "ep": self.endpoint, **self._limits, "ok": self._ok})
            self._ok = 0

    def flush(self) -> None:
        """Report the good answers not yet reported (fewer than a batch): the run's count of answers is
        then the requests answered (before, each worker's last partial batch was never said)."""
        if self._ok and self._link.state == "up":
            self._link.send({"op": "obs", "ep": self.endpoint, **self._limits, "ok": self._ok})
            self._ok = 0

    def fall_back(self) -> None:
        """The coordinator is gone: every waiting request goes to the process's own limiter."""
        self.held = self.used = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)


class SharedBudget(Budget):
    """The run's budget: calls reserved with the coordinator, cost charged there; here as a fallback."""

    def __init__(self, link: RunLink, max_cost: float | None = None, max_calls: int | None = None) -> None:
        super().__init__(max_cost, max_calls)
        self._link = link

    async def areserve(self) -> None:
        refusal = await self._link.reserve()
        if refusal == _FALLBACK:
            self.reserve()
        elif refusal is not None:
            raise BudgetExceededError(refusal)
        else:
            with self._lock:
                self.calls += 1  # what this process made (the run's count is the coordinator's)

    def charge(self, cost: float) -> None:
        super().charge(cost)
        if cost:
            self._link.send({"op": "charge", "cost": cost})
