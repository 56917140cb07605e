"""The run's limits in one place: a small coordinator the controller hosts for its workers.

With ``pytest -n N`` every worker has its own LM client; left alone, each would keep its own
in-flight limit, back-pressure state, breaker and budget, and a run would be N times what the user
asked for. The controller starts one :class:`Coordinator` (its own thread and event loop, a TCP
socket on 127.0.0.1, a random token every client must present first) and hands its address to the
workers it starts; each worker's LM talks to it through a ``link.RunLink``. It keeps, per endpoint:

* **the in-flight limit**, lent out as *slots*. A worker asks for as many slots as it has requests
  waiting and keeps the ones it gets while nobody else needs them, so a busy worker reuses its slots
  without a message per request. When a slot is wanted and none is free — or the limit came down
  below what is lent — the coordinator says so (``tight``, with each worker's fair share): workers
  then give back every slot they hold beyond their share as it is released, and idle ones at once;
  the slots go to the waiting workers that hold the fewest first.
* **the back-pressure state**: workers report their answers (429 or not, in batches); the limit is
  halved while 429s keep coming (half of a window of ``max(8, 2 × limit)`` answers) and grows back
  by one per ``limit`` good answers, as ``resilience.AdaptiveLimiter`` does in one process. A limit
  given a ``start`` below its maximum (the plugin's default) starts there and grows, while at least
  half of it is lent, up to the maximum; a 429 while above ``start`` sets the limit and the maximum
  to 90% of what was lent then less one (never below ``start``: headroom for the endpoint's own
  count lagging ours) for the run: it grows no more (another 429 above ``start``, after ``limit``
  answers, lowers it again the same way).
* **the cap found from refusals**: each 429 a worker reports makes the coordinator ask every worker with
  slots how many of its requests on the wire now are answered (``probe``; one at a time); their sum is
  what the endpoint took when it refused, and ``resilience.CapFinder`` sets the limit there when most
  recent refusals agree (undone when the 429s come as often below it; workers report each answer
  while a cut is tried, not 16 at a time).
* **the hold**: a worker that got a 429 with ``Retry-After`` says so (``pause``); the coordinator
  keeps the endpoint held until then and tells every other worker, whose requests to it wait too
  (a later, longer Retry-After extends it; a shorter one inside the hold is the same hold).
* **the breaker**: workers tell every failed logical call (a refused connection, a timeout, a 5xx
  after its retries); the run's ``fail_max``-th in a row opens the breaker for every worker at once
  (the first answer after the count started, any worker's, starts it again). A worker whose
  breaker opens on its own (a refusing endpoint, a spent quota) says so; the coordinator counts the opening once
  for the run (another worker's opening while it is open is the same one) and tells every other
  worker, whose breakers then fail fast too — a worker that first asks for the endpoint while it is
  open is told before it sends anything (a late worker does not find the dead endpoint anew). When one worker's breaker lets its half-open trial
  call through, the others are told to hold (stay open); the trial's success closes them all.

And **the budget** (calls and cost) for the run: every call is reserved here before it is made, its
cost charged when its answer arrives.

A worker whose connection drops has its slots taken back. The protocol is one JSON object a line.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .._support.loop_thread import LoopThread
from .resilience import CapFinder
from .usage import cost_spent

__all__ = ["Coordinator", "describe"]

logger = logging.getLogger("pytest_dspex.lm")


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    name: str = "?"


@dataclass
class _Endpoint:
    """One endpoint's slots and back-pressure (AIMD) state."""

    maximum: int
    limit: int
    start: int = 0  # the limit grows above this only while the endpoint accepts (probing); 0: = maximum
    probed: int = 0  # the ceiling a 429 above ``start`` found (0: none)
    calm: int = 0  # answers to wait before another 429 above ``start`` lowers it again
    lent: int = 0
    held: dict[int, int] = field(default_factory=dict)  # client id → slots it holds
    wants: dict[int, int] = field(default_factory=dict)  # client id → slots it waits for (FIFO order)
    recent: collections.deque[bool] = field(default_factory=collections.deque)
    credit: int = 0
    decreases: int = 0
    throttled: int = 0
    answered: int = 0
    share: int = -1  # -1: relaxed (keep what you hold); >= 0: tight, give back beyond this
    told: dict[int, int] = field(default_factory=dict)  # client id → the share it was last told
    seen: set[int] = field(default_factory=set)  # clients that asked about this endpoint (told its open breaker)
    failing: int = 0  # the run's failed logical calls in a row (every worker's), while the breaker is closed
    breaker_until: float = 0.0  # monotonic: open until then
    breaker_message: str = ""
    breaker_kind: str = "lm_unavailable"  # the error kind of its fast failures (``rate_limited``: 429s opened it)
    trips: int = 0
    trials: int = 0
    held_until: float = 0.0  # monotonic: the endpoint asked (Retry-After) for no request before then
    holds: int = 0
    peak_lent: int = 0
    caps: CapFinder = field(default_factory=CapFinder)  # the endpoint's cap on requests in flight, from refusals
    capped: int = 0  # the cuts to a cap found by ``caps`` in force (made, less those undone)
    probe_id: int = 0  # the last probe asked after a 429 (``Coordinator._probe``)
    probe_at: float = 0.0
    probe_sum: int = 0  # accepted requests the workers said so far
    probe_waiting: set[int] = field(default_factory=set)  # the workers yet to answer it

    def refused_at(self, accepted: int) -> None:
        """A refusal resolved by a worker: about ``accepted`` of the run's requests were accepted with it."""
        cap = self.caps.cut_to_cap(self, accepted)  # (the same cut as a process's own ``AdaptiveLimiter.refused_at``)
        if cap is not None:
            logger.info("LM endpoint refuses requests above %d in flight: the run's in-flight limit is now %d", cap, cap)

    @property
    def window(self) -> int:
        return max(8, 2 * self.limit)

    def observe(self, ok: int, throttled: int) -> None:
        self.answered += ok + throttled
        self.throttled += throttled
        undo = self.caps.answered(ok, throttled, drained=self.lent <= self.limit)
        if undo is not None:  # a cap tried did not lessen the 429s: they were not about in flight
            self.limit, self.maximum, self.probed = undo
            self.capped -= 1  # (``capped``: the cuts in force)
            self.credit = 0
            logger.info("LM endpoint answers 429 as often below %d in flight: the run's in-flight limit is %d again", self.limit, self.limit)
            return
        self.calm = max(0, self.calm - ok - throttled)
        if throttled and self.limit > self.start:  # above the start: the endpoint's cap is below what was lent
            if not self.calm:  # one cut per ``limit`` answers: a burst of 429s is one overshoot
                self.probed = self.maximum = self.limit = max(self.start, (min(self.limit, self.lent) - 1) * 9 // 10)
                self.calm = self.limit
                self.credit = 0
                logger.info("LM endpoint answers 429 above %d in flight: the run's in-flight limit stays at %d", self.start, self.limit)
            return
        if ok:
            self.recent.extend([False] * min(ok, self.window))
        if throttled:
            self.recent.extend([True] * throttled)
        while len(self.recent) > self.window:
            self.recent.popleft()
        if throttled and sum(self.recent) * 2 >= self.window:
            self.limit = max(1, self.limit // 2)
            self.decreases += 1
            self.recent.clear()
            self.credit = 0
            logger.info("LM endpoint keeps answering 429: the run's in-flight limit lowered to %d", self.limit)
        elif ok and self.limit < self.maximum and (self.limit <= self.start or 2 * self.lent >= self.limit):
            self.credit += ok
            while self.credit >= self.limit and self.limit < self.maximum:
                self.credit -= self.limit
                self.limit += 1


class Coordinator:
    """The run-wide limits server (see the module docstring). ``start()`` → its address for workers."""

    def __init__(self, *, max_cost: float | None = None, max_calls: int | None = None) -> None:
        self.max_cost = max_cost
        self.max_calls = max_calls
        self.calls = 0
        self.cost = 0.0
        self.refused_calls = 0
        self.token = secrets.token_hex(16)
        self.address: str | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._clients: dict[int, _Client] = {}
        self._next_id = 0
        self._thread = LoopThread("pytest-dspex-coordinator")
        self._server: asyncio.AbstractServer | None = None

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> str:
        """Listen on 127.0.0.1 (its own thread and loop); the address workers connect to."""

        async def setup() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{port}"

        self._thread.start(setup)
        assert self.address is not None
        return self.address

    def stop(self, *, bye: bool = True) -> None:
        """Stop serving. Each connected worker is told the run is ending (``bye``: its end, or Ctrl-C while
        workers still run), so it carries on under its own limits without warning of a lost coordinator;
        ``bye=False`` drops the connections as a crashed controller would."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for client in list(self._clients.values()):
                if bye and not client.writer.is_closing():
                    client.writer.write(b'{"op":"bye"}\n')
                client.writer.close()

        self._thread.stop(close, timeout=5)

    def stats(self) -> dict[str, Any]:
        """What the run's limits saw: per endpoint, and the budget (for reports and tests)."""

        async def read() -> dict[str, Any]:
            return {
                "clients": self._next_id,
                "calls": self.calls,
                "cost": self.cost,
                "refused_calls": self.refused_calls,
                "endpoints": {
                    name: {"limit": e.limit, "maximum": e.maximum, "start": e.start, "probed": e.probed,
                           "decreases": e.decreases, "throttled": e.throttled, "capped": e.capped,
                           "scattered": e.caps.scattered,
                           "answered": e.answered, "trips": e.trips, "trials": e.trials, "peak_lent": e.peak_lent,
                           "holds": e.holds, "failing": e.failing}
                    for name, e in self._endpoints.items()
                },
            }  # fmt: skip

        if self._thread.loop is None:
            return {}
        return self._thread.run(read())

    @property
    def clients(self) -> int:
        """How many workers connected over the run."""
        return self._next_id

    # -- one client ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = json.loads(await asyncio.wait_for(reader.readline(), 5))
        except (TimeoutError, ValueError, OSError):
            writer.close()
            return
        if not isinstance(hello, dict) or not secrets.compare_digest(str(hello.get("token", "")), self.token):
            writer.close()  # not one of this run's workers
            return
        self._next_id += 1
        cid = self._next_id
        self._clients[cid] = _Client(writer, str(hello.get("name", "?")))
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                self._handle(cid, message)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the worker went away, or the run is over
        finally:
            self._drop(cid)
            writer.close()

    def _send(self, cid: int, message: dict[str, Any]) -> None:
        client = self._clients.get(cid)
        if client is not None and not client.writer.is_closing():
            client.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def _drop(self, cid: int) -> None:
        self._clients.pop(cid, None)
        for name, ep in self._endpoints.items():
            if cid in ep.probe_waiting:
                self._probed(cid, name, ep, ep.probe_id, 0)
            ep.lent -= ep.held.pop(cid, 0)
            ep.wants.pop(cid, None)
            ep.told.pop(cid, None)
            ep.seen.discard(cid)
            self._pump(name, ep)

    def _endpoint(self, name: str, maximum: int, start: int) -> _Endpoint:
        ep = self._endpoints.get(name)
        if ep is None:
            start = min(start, maximum) if start > 0 else maximum
            ep = self._endpoints[name] = _Endpoint(maximum=maximum, limit=start, start=start)
        return ep

    def _handle(self, cid: int, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "reserve":
            self._send(cid, {"op": "reserved", "id": m.get("id"), "error": self._reserve(int(m.get("n", 1)))})
            return
        if op == "charge":
            self.cost += float(m.get("cost", 0.0))
            return
        name = str(m.get("ep", ""))
        ep = self._endpoint(name, max(1, int(m.get("max", 16))), int(m.get("start", 0)))
        if cid not in ep.seen:  # a worker that starts late: told the run's breaker is open before it sends anything
            ep.seen.add(cid)
            if time.monotonic() < ep.breaker_until:
                self._send(cid, {"op": "open", "ep": name, "message": ep.breaker_message, "reset": ep.breaker_until - time.monotonic(),
                                "kind": ep.breaker_kind})
        if m.get("ok") or m.get("thr"):
            trying = ep.caps.trying_now
            ep.observe(int(m.get("ok", 0)), int(m.get("thr", 0)))
            if m.get("thr"):
                self._probe(cid, name, ep)
            if ep.caps.trying_now != trying:
                self._tell_batch(name, ep)
        if op == "want":
            ep.wants[cid] = ep.wants.get(cid, 0) + int(m.get("n", 1))
        elif op == "ret":
            n = min(int(m.get("n", 1)), ep.held.get(cid, 0))
            ep.held[cid] = ep.held.get(cid, 0) - n
            ep.lent -= n
        elif op == "probed":  # a worker's answer to a probe: how many of its requests on the wire were accepted
            self._probed(cid, name, ep, int(m.get("id", 0)), int(m.get("acc", 0)))
            return
        elif op == "fail":
            self._failed(cid, name, ep, m)
            return
        elif op == "alive":  # an answer: the run's count of failures in a row starts again
            ep.failing = 0
            return
        elif op == "trip":
            self._trip(cid, name, ep, str(m.get("message", "")), float(m.get("reset", 30.0)), str(m.get("kind") or "lm_unavailable"))
            return
        elif op == "pause":
            seconds = max(0.0, float(m.get("s", 0.0)))
            until = time.monotonic() + seconds
            if until > ep.held_until + 0.01:
                ep.held_until = until
                ep.holds += 1
                self._tell_others(cid, {"op": "pause", "ep": name, "s": round(seconds, 3)})
            return
        elif op == "trial":  # one worker tries the endpoint again: the others wait for its outcome
            ep.trials += 1
            self._tell_others(cid, {"op": "hold", "ep": name, "message": f"{ep.breaker_message} (a trial call is under way)"})
            return
        elif op == "closed":  # its trial succeeded: every worker's breaker closes
            ep.breaker_until = 0.0
            ep.failing = 0
            self._tell_others(cid, {"op": "close", "ep": name})
            return
        self._pump(name, ep)

    def _probe(self, cid: int, name: str, ep: _Endpoint) -> None:
        """A 429: ask every worker with requests out how many of those on its wire now are accepted (their sum,
        once all answer, is what the endpoint took when it refused: ``_Endpoint.refused_at``). One at a time."""
        now = time.monotonic()
        if ep.caps.scattered or (ep.probe_waiting and now - ep.probe_at < 30):
            return  # (scattered: its 429s are not about in flight, no cut is made for them any more)
        ep.probe_id += 1
        ep.probe_at = now
        ep.probe_sum = 0
        ep.probe_waiting = {c for c, h in ep.held.items() if h > 0 and c in self._clients} | {cid}
        for c in ep.probe_waiting:
            self._send(c, {"op": "probe", "ep": name, "id": ep.probe_id})

    def _probed(self, cid: int, name: str, ep: _Endpoint, probe_id: int, accepted: int) -> None:
        if probe_id != ep.probe_id or cid not in ep.probe_waiting:
            return
        ep.probe_sum += accepted
        ep.probe_waiting.discard(cid)
        if not ep.probe_waiting:
            ep.refused_at(ep.probe_sum)
            if ep.caps.trying_now:
                self._tell_batch(name, ep)

    def _tell_batch(self, name: str, ep: _Endpoint) -> None:
        """While a cut is tried, every answer is told at once (not 16 at a time): its share is the run's now."""
        n = 1 if ep.caps.trying_now else 0
        for c in list(self._clients):
            self._send(c, {"op": "batch", "ep": name, "n": n})

    def _reserve(self, n: int) -> str | None:
        if self.max_calls is not None and self.calls + n > self.max_calls:
            self.refused_calls += n
            return f"the run's LM call budget is spent ({self.calls} of {self.max_calls} calls); no further calls are made"
        if self.max_cost is not None and self.cost >= self.max_cost:
            self.refused_calls += n
            return f"the run's LM cost budget is spent ({cost_spent(self.cost, self.max_cost)}); no further calls are made"
        self.calls += n
        return None

    def _failed(self, cid: int, name: str, ep: _Endpoint, m: dict[str, Any]) -> None:
        """A worker's logical call failed (the endpoint is down or broken): count it for the run."""
        if time.monotonic() < ep.breaker_until:
            return  # already open: a call admitted before the opening
        ep.failing += 1
        if ep.failing == 1:  # the others say their next answer, which starts the count again
            self._tell_others(cid, {"op": "failing", "ep": name})
        fail_max = max(1, int(m.get("fail_max", 5)))
        if ep.failing < fail_max:
            return
        reset = float(m.get("reset", 30.0))
        message = (f"LM endpoint {m.get('name') or name} is unavailable: circuit breaker open after {ep.failing} failed calls "
                   f"in a row across the run's workers (last error: {m.get('error', '')}); failing fast for {reset:g}s")  # fmt: skip
        ep.failing = 0
        self._trip(None, name, ep, message, reset)

    def _trip(self, cid: int | None, name: str, ep: _Endpoint, message: str, reset: float, kind: str = "lm_unavailable") -> None:
        now = time.monotonic()
        if now < ep.breaker_until:
            return  # already open for the run: the same opening
        ep.trips += 1
        ep.failing = 0
        ep.breaker_until = now + reset
        ep.breaker_message = message
        ep.breaker_kind = kind
        self._tell_others(cid, {"op": "open", "ep": name, "message": message, "reset": reset, "kind": kind})

    def _tell_others(self, cid: int | None, message: dict[str, Any]) -> None:
        for other in list(self._clients):
            if other != cid:
                self._send(other, message)

    def _pump(self, name: str, ep: _Endpoint) -> None:
        """Lend free slots to the waiting clients (fewest held first); say whether slots are tight."""
        grants: dict[int, int] = {}
        while ep.wants and ep.lent < ep.limit:
            cid = min(ep.wants, key=lambda c: ep.held.get(c, 0) + grants.get(c, 0))
            grants[cid] = grants.get(cid, 0) + 1
            ep.lent += 1
            ep.wants[cid] -= 1
            if ep.wants[cid] <= 0:
                del ep.wants[cid]
        for cid, n in grants.items():
            ep.held[cid] = ep.held.get(cid, 0) + n
            self._send(cid, {"op": "grant", "ep": name, "n": n})
        ep.peak_lent = max(ep.peak_lent, ep.lent)
        tight = bool(ep.wants) or ep.lent > ep.limit
        if tight:
            active = {c for c, h in ep.held.items() if h > 0} | set(ep.wants)
            share = ep.limit // max(1, len(active))
        else:
            share = -1
        ep.share = share
        for cid in {c for c, h in ep.held.items() if h > 0} | set(ep.wants):
            if ep.told.get(cid, -1) != share:
                ep.told[cid] = share
                self._send(cid, {"op": "share", "ep": name, "share": share})


def describe(stats: dict[str, Any], *, verbose: bool = False) -> str | None:
    """One line on what the run's shared limits did; None when there is nothing to say.

    Said when an endpoint answered 429, a breaker opened or the budget refused calls (or ``verbose``).
    """
    if not stats or not stats.get("clients"):
        return None
    parts = []
    notable = bool(stats.get("refused_calls"))
    for e in stats.get("endpoints", {}).values():
        notable = notable or e["throttled"] or e["trips"]
        part = f"in flight at most {e['peak_lent']} of {e['maximum']}"
        if e.get("capped") and e.get("probed"):  # refusals found the endpoint's cap (``resilience.CapFinder``)
            part = (f"in flight at most {e['peak_lent']} (from {e['start']}; the endpoint refused requests above "
                    f"{e['probed']} in flight: kept to {e['probed']})")
        elif e.get("probed") and e["probed"] <= e.get("start", 0):  # a 429 as it grew past the start: 429s of any kind
            part = f"in flight at most {e['peak_lent']} (from {e['start']}; not grown: a 429 came as it grew past {e['start']})"
        elif e.get("probed"):
            part = f"in flight at most {e['peak_lent']} (from {e['start']}; the endpoint refused above it: kept to {e['probed']})"
        elif e.get("start") and e["throttled"] and e["limit"] < e["start"]:  # 429s cut it below where it started
            part = f"in flight at most {e['peak_lent']} (from {e['start']}; cut by the endpoint's 429s)"
        elif e.get("start") and e["start"] < e["maximum"]:
            part = f"in flight at most {e['peak_lent']} (from {e['start']}, growing up to {e['maximum']} while the endpoint accepts)"
        if e["throttled"]:
            part += f", {e['throttled']} of {e['answered']} answers were 429 (limit now {e['limit']})"
            if e["answered"] >= 50 and e["throttled"] * 5 >= e["answered"]:  # not a scattering: the limit is above its cap
                if e.get("capped") and e.get("probed") and e["limit"] >= e["probed"]:  # still at the cap found
                    # the cap is found and kept (trial7 T7-1): the 429s were the finding of it (a short run),
                    # not a limit above the cap: going below it is not the advice
                    part += (f": {e['throttled'] / e['answered']:.0%} refused while it found the cap (a short run); "
                             f"--dspex-concurrency {e['probed']} starts there")  # fmt: skip
                else:
                    part += (f": {e['throttled'] / e['answered']:.0%} refused, so the endpoint takes fewer requests at once "
                             f"than that; a lower --dspex-concurrency (below {e['limit']}) sends fewer requests it refuses")  # fmt: skip
        if e.get("holds"):
            part += f", held {e['holds']}x for the endpoint's Retry-After"
        if e["trips"]:
            part += f", circuit breaker opened {e['trips']}x for the run"
        parts.append(part)
    if stats.get("calls") or stats.get("refused_calls"):
        budget = f"budget: {stats['calls']} calls made"
        if stats.get("refused_calls"):
            budget += f", {stats['refused_calls']} refused"
        parts.append(budget)
    if not (notable or verbose) or not parts:
        return None
    clients = stats["clients"]
    if stats.get("alone"):  # one process, its own limits (no worker, no serving process)
        return "dspex: LM limits: " + "; ".join(parts)
    return f"dspex: LM limits shared by {clients} worker{'' if clients == 1 else 's'}: " + "; ".join(parts)
