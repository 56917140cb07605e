"""The run's budget in Redis, for workers on other machines (``--dspex-cache-url`` with xdist).

Local xdist workers share the run's limits through the controller's coordinator (``coordinator``);
a remote worker (``--tx socket=…``, ``ssh=…``) cannot reach it. With a Redis cache configured, every
worker of the run — local and remote — counts the budget in Redis instead: each call is reserved with
one ``INCR`` of ``dspex:run:<run id>:calls`` before it is made (refused past ``max_calls``), each answer's
cost added with ``INCRBYFLOAT`` to ``…:cost`` (no new call once it reaches ``max_cost``). The keys expire
a day after the run's first call. The run id is the controller's, handed to every worker.

Losing Redis is never a failed example: the first error logs one warning and the process counts the
budget itself from then on (``Budget``), as a worker without its coordinator does.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BudgetExceededError
from .redis_cache import redact_url
from .usage import Budget, cost_spent

__all__ = ["RedisBudget"]

logger = logging.getLogger("pytest_dspex.lm")

#: the run's keys outlive it by a day at most
TTL_S = 24 * 3600


class RedisBudget(Budget):
    def __init__(self, url: str, run_id: str, max_cost: float | None = None, max_calls: int | None = None, *, timeout: float = 2.0) -> None:
        super().__init__(max_cost, max_calls)
        self.url = url
        self._key = f"dspex:run:{run_id}"
        self.timeout = timeout
        self._client: Any = None
        self._pending: set[Any] = set()  # cost updates on their way
        self.lost: str | None = None

    def __repr__(self) -> str:
        return f"RedisBudget({redact_url(self.url)!r}, max_cost={self.max_cost}, max_calls={self.max_calls})"

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        return self._client

    def _lose(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = f"{type(exc).__name__}: {exc}"
            logger.warning("pytest-dspex: the run's budget in Redis at %s is unreachable (%s); this process counts its own budget",
                           redact_url(self.url), self.lost)  # fmt: skip

    async def areserve(self) -> None:
        if self.lost is not None:
            self.reserve()
            return
        try:
            client = self._redis()
            calls = int(await client.incr(f"{self._key}:calls"))
            if calls == 1:
                await client.expire(f"{self._key}:calls", TTL_S)
            cost = float(await client.get(f"{self._key}:cost") or 0.0) if self.max_cost is not None else 0.0
        except Exception as exc:  # a Redis that is gone or hangs: this process's own budget from now on
            self._lose(exc)
            self.reserve()
            return
        if self.max_calls is not None and calls > self.max_calls:
            raise BudgetExceededError(
                f"the run's LM call budget is spent ({self.max_calls} calls, counted in Redis); no further calls are made"
            )
        if self.max_cost is not None and cost >= self.max_cost:
            raise BudgetExceededError(f"the run's LM cost budget is spent ({cost_spent(cost, self.max_cost)}); no further calls are made")
        with self._lock:
            self.calls += 1  # what this process made (the run's count is in Redis)

    def charge(self, cost: float) -> None:
        super().charge(cost)
        if cost and self.lost is None:
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            task = loop.create_task(self._add_cost(cost))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _add_cost(self, cost: float) -> None:
        try:
            client = self._redis()
            await client.incrbyfloat(f"{self._key}:cost", cost)
            await client.expire(f"{self._key}:cost", TTL_S)
        except Exception as exc:
            self._lose(exc)

    async def aclose(self) -> None:
        if self._pending:
            import asyncio

            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
