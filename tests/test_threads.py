"""run_in_thread: what a sync metric sees when Evaluate runs it off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from pytest_dspex._threads import run_in_thread

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def test_runs_off_the_loop_with_the_callers_context_and_returns_the_value():
    async def main() -> tuple[str, bool]:
        var.set("caller")
        loop_thread = threading.get_ident()
        return await run_in_thread(lambda a, b: (var.get() + a + b, threading.get_ident() != loop_thread), "-x", "-y")

    value, elsewhere = asyncio.run(main())
    assert value == "caller-x-y" and elsewhere


def test_an_exception_reaches_the_awaiter():
    def boom() -> None:
        raise KeyError("metric failed")

    async def main() -> None:
        await run_in_thread(boom)

    with pytest.raises(KeyError, match="metric failed"):
        asyncio.run(main())


def test_calls_that_block_on_each_other_all_run_at_once():
    # 100 calls that each wait for all the others (as metrics waiting on an LM judge): a fixed small
    # pool would deadlock; threads are added while none is idle
    barrier = threading.Barrier(100, timeout=30)

    async def main() -> list[int]:
        return await asyncio.gather(*(run_in_thread(barrier.wait) for _ in range(100)))

    assert sorted(asyncio.run(main())) == list(range(100))


def test_a_cancelled_awaiter_does_not_break_later_calls():
    release = threading.Event()

    async def main() -> int:
        slow = asyncio.ensure_future(run_in_thread(release.wait, 30))
        await asyncio.sleep(0.01)
        slow.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return sum(await asyncio.gather(*(run_in_thread(lambda i=i: i) for i in range(50))))

    assert asyncio.run(main()) == sum(range(50))
