"""run_in_thread: what a sync metric sees when Evaluate runs it off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time

import pytest

import pytest_dspex as dspex
from pytest_dspex._support import threads as _threads
from pytest_dspex._support.threads import run_in_thread

from .conftest import Triage, triage_examples

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


# -- SyncCaller: a sync metric runs in threads until its first calls show it is quick -------------


def _loop_thread_share(metric_threads: list[int], loop_threads: set[int]) -> tuple[int, int]:
    on_loop = sum(1 for t in metric_threads if t in loop_threads)
    return on_loop, len(metric_threads) - on_loop


def test_a_quick_sync_metric_moves_onto_the_loop_after_its_first_calls(server, make_lm, monkeypatch):
    # generous limits: this asserts the mechanism, not how fast this machine is
    monkeypatch.setattr(_threads, "QUICK_S", 10.0)
    monkeypatch.setattr(_threads, "SLOW_S", 10.0)
    seen: list[int] = []
    loops: set[int] = set()

    def quick(example, prediction, trace=None):
        seen.append(threading.get_ident())
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            loops.add(threading.get_ident())
        return example.team == prediction.team

    result = dspex.evaluate(dspex.Predict(Triage, lm=make_lm(server)), triage_examples(60), quick, concurrency=4)
    assert result.score == 1.0 and result.n == 60
    on_loop, in_threads = _loop_thread_share(seen, loops)
    assert in_threads >= _threads.PROBE_CALLS and on_loop > 0 and on_loop + in_threads == 60


def test_a_metric_that_sleeps_never_runs_on_the_loop(server, make_lm):
    loops: list[bool] = []

    def sleepy(example, prediction, trace=None):
        time.sleep(0.003)  # a blocking call (I/O): longer than QUICK_S, and a wait
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)
        return example.team == prediction.team

    result = dspex.evaluate(dspex.Predict(Triage, lm=make_lm(server)), triage_examples(40), sleepy, concurrency=8)
    assert result.score == 1.0 and loops.count(True) == 0 and len(loops) == 40


def test_a_quick_metric_that_later_calls_an_lm_judge_is_scored_like_a_threaded_one(server, make_lm, monkeypatch):
    # quick for its first 30 calls (it moves onto the loop), then it starts calling a judge program
    # synchronously: that call cannot run on the loop, so it is re-run in a thread and stays there
    monkeypatch.setattr(_threads, "QUICK_S", 10.0)
    monkeypatch.setattr(_threads, "SLOW_S", 10.0)
    judge = dspex.Predict(Triage, lm=make_lm(server))
    calls = {"n": 0}

    def sometimes_judged(example, prediction, trace=None):
        calls["n"] += 1
        if calls["n"] <= 30:
            return example.team == prediction.team
        return judge(message=example.message).team == prediction.team

    result = dspex.evaluate(
        dspex.Predict(Triage, lm=make_lm(server)), triage_examples(80), sometimes_judged, concurrency=1
    )
    assert result.score == 1.0 and not result.errors, result.summary()


def test_a_metric_that_raises_on_the_loop_raises_as_it_would_in_a_thread(monkeypatch):
    monkeypatch.setattr(_threads, "QUICK_S", 10.0)
    monkeypatch.setattr(_threads, "SLOW_S", 10.0)
    where: list[bool] = []

    def metric(i: int) -> int:
        try:
            asyncio.get_running_loop()
            where.append(True)
        except RuntimeError:
            where.append(False)
        if i == 40:
            raise ValueError("bad example 40")
        return i

    async def main() -> list[object]:
        caller = _threads.SyncCaller(metric)
        out: list[object] = []
        for i in range(60):
            try:
                out.append(await caller(i))
            except ValueError as exc:
                out.append(str(exc))
        assert caller.threads_for_good
        return out

    out = asyncio.run(main())
    assert out == [*range(40), "bad example 40", *range(41, 60)]
    # threads first, then the loop, the raising call once on the loop and again in a thread, then threads
    assert where[: _threads.PROBE_CALLS] == [False] * _threads.PROBE_CALLS
    assert where[_threads.PROBE_CALLS : 41] == [True] * (41 - _threads.PROBE_CALLS)
    assert where[41:] == [False] * 20
