"""In-flight request sharing, and hedged requests.

``InflightRequests.share(key, fetch)``: when a request with the same cache key is already on its
way, wait for its answer instead of sending a second one (a burst of identical examples makes
one request). If the leader's caller is cancelled, a follower asks again itself.

``hedged(first, duplicate, after)``: send ``first``; if it has not answered within ``after``
seconds, also send a duplicate (and another after twice that) and take whichever finishes first.
Every duplicate goes through the caller's concurrency limit and budget (it takes its own slot and
budget call). The others are cancelled; an answer that arrived anyway is handed to ``on_extra`` so
its tokens are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["HedgeSkipped", "InflightRequests", "hedged"]

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


class HedgeSkipped(Exception):
    """Raised by a duplicate that was not sent (no budget left): the first request carries on alone."""


async def hedged(
    first: Callable[[], Awaitable[T]],
    duplicate: Callable[[Callable[[], bool]], Awaitable[T]],
    after: float,
    on_extra: Callable[[T], None],
    *,
    max_duplicates: int = 2,
) -> T:
    """The first outcome of ``first()`` and of duplicates sent while it stays unanswered.

    A duplicate goes out after ``after`` seconds without an outcome, another after twice that,
    up to ``max_duplicates`` (a duplicate can stall too). Whichever finishes first wins, answer or
    error: a duplicate that fails fast (a 500) hands its error to the retry loop rather than
    leaving the caller waiting on a stalled request. ``duplicate(wanted)`` calls ``wanted()`` once
    it holds its concurrency slot: False means ``first`` has finished meanwhile and it must not be
    sent; it raises ``HedgeSkipped`` when it is not sent (that, or no budget left).
    """
    tasks = [asyncio.ensure_future(first())]
    pending: set[asyncio.Future[T]] = set(tasks)
    wait = after
    try:
        while True:
            timeout = wait if len(tasks) <= max_duplicates else None
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                extra = asyncio.ensure_future(duplicate(lambda: not tasks[0].done()))
                tasks.append(extra)
                pending.add(extra)
                wait *= 2
                continue
            finished = [f for f in done if f is tasks[0] or not (f.cancelled() or isinstance(f.exception(), HedgeSkipped))]
            if not finished:
                continue  # a duplicate that was not sent: wait for the others
            answers = [f for f in finished if not f.cancelled() and f.exception() is None]
            if answers:
                for other in answers[1:]:
                    on_extra(other.result())
                return answers[0].result()
            return finished[0].result()  # raises its error
    finally:
        for fut in tasks:
            if not fut.done():
                fut.cancel()  # its own ``finally`` gives its concurrency slot back
            fut.add_done_callback(_retrieve)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # nobody waits for the loser: no "exception never retrieved"
