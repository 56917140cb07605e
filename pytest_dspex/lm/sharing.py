"""In-flight request sharing, and hedged requests.

``InflightRequests.share(key, fetch)``: when a request with the same cache key is already on its
way, wait for its answer instead of sending a second one (a burst of identical examples makes
one request). If the leader's caller is cancelled, a follower asks again itself.

``hedged(first, second, after)``: send ``first``; if it has not answered within ``after`` seconds,
also send ``second`` and take whichever answers first. Both go through the caller's concurrency
limit and budget (the caller's ``second`` takes its own slot). The other is cancelled; an answer
that arrived anyway is handed to ``on_extra`` so its tokens are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["InflightRequests", "hedged"]

T = TypeVar("T")


class _LeaderCancelled(Exception):
    """The request another caller was sharing was cancelled by its own caller."""


class InflightRequests(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def share(self, key: str, fetch: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``fetch()``'s result, or the result of the same request already in flight.

        Returns ``(result, led)``: ``led`` is True when this caller made the request.
        """
        while True:
            pending = self._pending.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending), False
            except _LeaderCancelled:
                continue
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            result = await fetch()
        except asyncio.CancelledError:
            fut.set_exception(_LeaderCancelled())
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        else:
            fut.set_result(result)
            return result, True
        finally:
            self._pending.pop(key, None)


async def hedged(
    first: Callable[[], Awaitable[T]],
    second: Callable[[Callable[[], bool]], Awaitable[T]],
    after: float,
    on_extra: Callable[[T], None],
) -> T:
    """The first answer of ``first()`` and (started after ``after`` s without one) ``second(wanted)``.

    ``second`` calls ``wanted()`` once it holds its concurrency slot: False means ``first`` has
    answered meanwhile and the duplicate must not be sent. When both fail, ``first``'s error is raised.
    """
    one = asyncio.ensure_future(first())
    done, _ = await asyncio.wait({one}, timeout=after)
    if done:
        return one.result()
    two = asyncio.ensure_future(second(lambda: not one.done()))
    pending = {one, two}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winners = [f for f in done if not f.cancelled() and f.exception() is None]
            if winners:
                for extra in winners[1:]:
                    on_extra(extra.result())
                return winners[0].result()
        error = one.exception() if not one.cancelled() else None
        if error is None and not two.cancelled():
            error = two.exception()
        if error is None:  # pragma: no cover - both cancelled from outside
            raise asyncio.CancelledError
        raise error
    finally:
        for fut in (one, two):
            if not fut.done():
                fut.cancel()  # its own ``finally`` gives its concurrency slot back
            fut.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # nobody waits for the loser: no "exception never retrieved"
