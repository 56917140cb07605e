"""An endpoint's back-pressure hold and breaker in Redis, for processes no coordinator reaches.

Local xdist workers share the run's limits through the controller's coordinator (``coordinator``);
remote workers (``--tx socket=…``, ``ssh=…``) and the shards of a CI job cannot reach it. With a
Redis cache configured (``--dspex-cache-url redis://…``), every such process also keeps two things
per endpoint in Redis, under ``dspex:ep:<hash of the endpoint's redacted URL>``:

* ``…:hold``: a 429 with ``Retry-After`` here sets it with that expiry (``SET … PX``, or a longer
  ``PEXPIRE … GT``): every process holds its requests to the endpoint while the key lives;
* ``…:breaker``: a breaker opening here sets it, once (``SET … NX PX reset_timeout``), with its
  message; every other process's breaker opens on seeing it (``Breaker.open_for_run``) instead of
  discovering the dead endpoint with ``fail_max`` calls of its own. A successful trial call deletes it.

* ``…:cut``: 429s without ``Retry-After`` halving a process's in-flight limit (AIMD) set it, once
  per ``CUT_S`` (``SET … NX PX``), with an id; every other process that reads a cut it has not seen
  halves its own limit once (``AdaptiveLimiter.cut``; not if it halved within the last second itself:
  the same burst), then grows back one slot per ``limit`` good answers as usual. A provider over its
  capacity is then backed off by every process, not only by the ones its 429s happened to hit.

* ``…:procs``: the processes calling the endpoint (a sorted set, each process's last read as its
  score; a process silent for ``ALIVE_S`` drops out). The in-flight limit is shared as a fair share:
  a process's own limiter allows ``concurrency // live processes`` (at least 1), so N processes
  together keep about the one limit (the default's probing limit is shared from where it starts,
  16, and does not probe: a process cannot see the others' in-flight requests). Not a lease per request (that would be a round trip per
  request); local xdist workers take their slots from the coordinator as before, this share only
  limits a process that has none (a remote worker, a shard, or one that lost the coordinator).

Reading is cheap: a process reads the keys and beats its heart (one pipelined round trip) at most
every ``every`` seconds (0.25 s), in the background, started by a call that finds its last read
stale; no request waits for Redis. Writing is one background command per opening or hold. Keys
expire with what they say, so nothing is left behind.

Losing Redis is never a failed example: the first error logs one warning and the process keeps its
own hold and breaker from then on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from .redis_cache import redact_url
from .resilience import AdaptiveLimiter, Breaker

__all__ = ["RedisLimits"]

logger = logging.getLogger("pytest_dspex.lm")

#: a process that has not read the endpoint's keys for this long no longer counts for the fair share
ALIVE_S = 5.0
#: one run-wide halving (``…:cut``) per this many seconds at most; a process reads it within that time
CUT_S = 2.0


class _Watched:
    def __init__(self, key: str) -> None:
        self.key = key
        self.limiters: weakref.WeakSet[AdaptiveLimiter] = weakref.WeakSet()
        self.configured: weakref.WeakKeyDictionary[AdaptiveLimiter, int] = weakref.WeakKeyDictionary()
        self.breakers: weakref.WeakSet[Breaker] = weakref.WeakSet()
        self.read_at = 0.0  # monotonic: the last read began then
        self.reading = False
        self.cut_seen: str | None = None  # the id of the last run-wide halving applied (or made) here


class RedisLimits:
    """An endpoint's hold and breaker shared through Redis (see the module docstring)."""

    def __init__(self, url: str, *, every: float = 0.25, timeout: float = 2.0) -> None:
        self.url = url
        self.every = every
        self.timeout = timeout
        self.lost: str | None = None
        self.live = 1  # processes calling the endpoint, at the last read
        self.reads = 0
        self.writes = 0
        self.cuts = 0  # halvings told to the others, and
        self.cuts_applied = 0  # others' halvings applied here
        self._client: Any = None
        self._endpoints: dict[str, _Watched] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def __repr__(self) -> str:
        return f"RedisLimits({redact_url(self.url)!r}, lost={self.lost is not None})"

    # -- what an LM attaches ------------------------------------------------------------------------
    def attach(self, endpoint: str, limiter: Any, breaker: Breaker) -> None:
        """``limiter``'s holds and ``breaker``'s openings are told to Redis; Redis's apply to them."""
        watched = self._endpoints.get(endpoint)
        if watched is None:
            digest = hashlib.sha256(endpoint.encode()).hexdigest()[:24]
            watched = self._endpoints[endpoint] = _Watched(f"dspex:ep:{digest}")
        own: AdaptiveLimiter = getattr(limiter, "local", limiter)  # a SharedLimiter keeps its hold in .local
        if own not in watched.limiters:
            watched.limiters.add(own)
            watched.configured[own] = own.start  # a probing default (``start``) is split from where it starts
            own.on_hold = _chain(own.on_hold, lambda seconds: self._spawn(self._hold(watched, seconds)))
            own.on_decrease = _chain(own.on_decrease, lambda limit: self._spawn(self._cut(watched)))
        if breaker not in watched.breakers:
            watched.breakers.add(breaker)
            breaker.on_open = _chain(breaker.on_open, lambda message: self._spawn(self._open(watched, breaker, message)))
            breaker.on_closed = _chain(breaker.on_closed, lambda: self._spawn(self._closed(watched)))

    def check(self, endpoint: str) -> None:
        """Before a call: read Redis again in the background if the last read is stale (cheap otherwise)."""
        if self.lost is not None:
            return
        watched = self._endpoints.get(endpoint)
        if watched is None or watched.reading:
            return
        now = time.monotonic()
        if now - watched.read_at < self.every:
            return
        watched.read_at = now
        watched.reading = True
        self._spawn(self._read(watched))

    # -- Redis ----------------------------------------------------------------------------------------
    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        return self._client

    def _spawn(self, coro: Any) -> None:
        if self.lost is not None:
            coro.close()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lose(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = f"{type(exc).__name__}: {exc}"
            logger.warning("pytest-dspex: the LM limits in Redis at %s are unreachable (%s); this process keeps its own "
                           "back-pressure hold and breaker", redact_url(self.url), self.lost)  # fmt: skip

    async def _read(self, watched: _Watched) -> None:
        now = time.time()
        procs = f"{watched.key}:procs"
        try:
            pipe = self._redis().pipeline(transaction=False)
            pipe.pttl(f"{watched.key}:hold")
            pipe.get(f"{watched.key}:breaker")
            pipe.get(f"{watched.key}:cut")
            pipe.zadd(procs, {self._me: now})
            pipe.zremrangebyscore(procs, "-inf", now - ALIVE_S)
            pipe.zcard(procs)
            pipe.expire(procs, int(4 * ALIVE_S))
            hold_ms, breaker, cut, _, _, live, _ = await pipe.execute()
            self.reads += 1
        except Exception as exc:  # a Redis that is gone or hangs: this process's own limits from now on
            self._lose(exc)
            return
        finally:
            watched.reading = False
        self.live = max(1, int(live or 1))
        cut_id = (cut.decode() if isinstance(cut, bytes) else str(cut)) if cut else None
        fresh_cut = cut_id is not None and cut_id != watched.cut_seen and not cut_id.startswith(self._me + "/")
        if cut_id is not None:
            watched.cut_seen = cut_id  # applied once, whatever the limiters say
        for limiter in list(watched.limiters):
            if hold_ms and hold_ms > 0:
                limiter.hold(hold_ms / 1000, tell=False)
            share = max(1, watched.configured.get(limiter, limiter.maximum) // self.live)
            if share != limiter.maximum:
                limiter.maximum = share  # AIMD grows back to it; a smaller share takes effect as slots come back
                limiter.limit = min(limiter.limit, share)
                limiter.start = min(limiter.start, share)  # no probing above a share: the others cannot see it
            if fresh_cut and limiter.cut():
                self.cuts_applied += 1
        if breaker:
            kind = "lm_unavailable"
            try:
                said = json.loads(breaker)
                message = str(said["message"])
                kind = str(said.get("kind") or kind)
            except (ValueError, KeyError, TypeError, AttributeError):
                message = "another process of this run found the LM endpoint unavailable"
            for b in list(watched.breakers):
                if b.state == "closed":
                    b.open_for_run(message, kind)

    async def _hold(self, watched: _Watched, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        try:
            client = self._redis()
            if not await client.set(f"{watched.key}:hold", b"1", px=ms, nx=True):
                await client.pexpire(f"{watched.key}:hold", ms, gt=True)  # a longer Retry-After extends it
            self.writes += 1
        except Exception as exc:
            self._lose(exc)

    async def _open(self, watched: _Watched, breaker: Breaker, message: str) -> None:
        try:
            value = json.dumps({"message": message, "kind": breaker.open_kind})
            await self._redis().set(f"{watched.key}:breaker", value, px=max(1, int(breaker.reset_timeout * 1000)), nx=True)
            self.writes += 1
        except Exception as exc:
            self._lose(exc)

    async def _cut(self, watched: _Watched) -> None:
        """429s halved this process's limit: the others halve theirs once (one cut per ``CUT_S`` for the run)."""
        self.cuts += 1
        cut_id = f"{self._me}/{self.cuts}"
        try:
            if await self._redis().set(f"{watched.key}:cut", cut_id, px=int(CUT_S * 1000), nx=True):
                self.writes += 1
        except Exception as exc:
            self._lose(exc)

    async def _closed(self, watched: _Watched) -> None:
        try:
            await self._redis().delete(f"{watched.key}:breaker")  # the trial call succeeded: the endpoint answers
            self.writes += 1
        except Exception as exc:
            self._lose(exc)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _chain(first: Callable[..., None] | None, then: Callable[..., None]) -> Callable[..., None]:
    if first is None:
        return then

    def both(*args: Any) -> None:
        first(*args)
        then(*args)

    return both
