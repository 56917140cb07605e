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

Reading is cheap: a process reads both keys (one pipelined round trip) at most every ``every``
seconds (0.25 s), in the background, started by a call that finds its last read stale; no request
waits for Redis. Writing is one background command per opening or hold. Keys expire with what they
say, so nothing is left behind. The in-flight limit is not shared this way (a lease per request
would be a round trip per request); each process keeps ``--dspex-concurrency`` of its own.

Losing Redis is never a failed example: the first error logs one warning and the process keeps its
own hold and breaker from then on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from .redis_cache import redact_url
from .resilience import AdaptiveLimiter, Breaker

__all__ = ["RedisLimits"]

logger = logging.getLogger("pytest_dspex.lm")


class _Watched:
    def __init__(self, key: str) -> None:
        self.key = key
        self.limiters: weakref.WeakSet[AdaptiveLimiter] = weakref.WeakSet()
        self.breakers: weakref.WeakSet[Breaker] = weakref.WeakSet()
        self.read_at = 0.0  # monotonic: the last read began then
        self.reading = False


class RedisLimits:
    """An endpoint's hold and breaker shared through Redis (see the module docstring)."""

    def __init__(self, url: str, *, every: float = 0.25, timeout: float = 2.0) -> None:
        self.url = url
        self.every = every
        self.timeout = timeout
        self.lost: str | None = None
        self.reads = 0
        self.writes = 0
        self._client: Any = None
        self._endpoints: dict[str, _Watched] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

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
            own.on_hold = _chain(own.on_hold, lambda seconds: self._spawn(self._hold(watched, seconds)))
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
        try:
            pipe = self._redis().pipeline(transaction=False)
            pipe.pttl(f"{watched.key}:hold")
            pipe.get(f"{watched.key}:breaker")
            hold_ms, breaker = await pipe.execute()
            self.reads += 1
        except Exception as exc:  # a Redis that is gone or hangs: this process's own limits from now on
            self._lose(exc)
            return
        finally:
            watched.reading = False
        if hold_ms and hold_ms > 0:
            for limiter in list(watched.limiters):
                limiter.hold(hold_ms / 1000, tell=False)
        if breaker:
            try:
                message = str(json.loads(breaker)["message"])
            except (ValueError, KeyError, TypeError):
                message = "another process of this run found the LM endpoint unavailable"
            for b in list(watched.breakers):
                if b.state == "closed":
                    b.open_for_run(message)

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
            value = json.dumps({"message": message})
            await self._redis().set(f"{watched.key}:breaker", value, px=max(1, int(breaker.reset_timeout * 1000)), nx=True)
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
