"""Run sync calls (a user's metric) off the event loop, cheaply.

``await run_in_thread(fn, *args)`` is ``asyncio.to_thread(fn, *args)`` (same context variables,
same exceptions, the call keeps running if its awaiter is cancelled) at a fraction of the CPU:
``to_thread`` costs ~15 µs per call in isolation and ~50 µs per example inside a busy evaluation
(an executor work item, a concurrent future chained to an asyncio one, and one loop wake-up per
call). Here a worker thread takes calls from a queue and keeps going while there are more, and the
results that finish while the loop is busy are handed back together with one wake-up.

Threads are started when no idle one is free (up to ``MAX_THREADS``, as many calls may block at
once — a metric that calls an LM judge waits on it), kept for the next calls until idle for
``IDLE_EXIT_S``, and are daemons: an unfinished call never holds up the interpreter's exit.

Even so a hop costs ~45 µs of CPU per call, most of a cache-replayed example's cost. ``SyncCaller``
learns instead of assuming: a sync function's first ``PROBE_CALLS`` calls run in threads, timed
there; if they took under ``QUICK_S`` and none waited on pytest-dspex's own loop (a metric calling an
LM judge does), later calls run inline on the loop. ``STRIKES`` slow calls (over ``QUICK_S`` in a
thread, ``SLOW_S`` inline), or one call that raises or touches the loop, send the function back to
threads for good (one that raised or touched the
loop is re-run there, so its caller sees what a threaded call gives).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from .runtime import loop_waits

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

__all__ = ["MAX_THREADS", "SyncCaller", "run_in_thread"]

T = TypeVar("T")
MAX_THREADS = 256
IDLE_EXIT_S = 10.0  # a thread idle this long ends (a closed loop's threads go too)

PROBE_CALLS = 16  # calls run in threads and timed before a function may run inline
QUICK_S = 0.0005  # each of them under this (wall, in its thread)
SLOW_S = 0.002  # an inline call over this is a strike
STRIKES = 3  # slow calls (in threads or inline) before a function stays in threads

_Item = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class _Runner:
    """The worker threads serving one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the runner (kept by its threads) must not keep a closed loop alive
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a call that no submitted call has claimed yet
        self._threads = 0
        self._results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._wake_pending = False

    def submit(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        fut = loop.create_future()
        with self._lock:
            if self._idle:
                self._idle -= 1  # an idle thread will take it
                start = False
            else:
                start = self._threads < MAX_THREADS  # else it waits for the next free thread
                self._threads += start
        self._queue.put((contextvars.copy_context(), fn, args, fut))
        if start:
            threading.Thread(target=self._work, name="dspex-sync", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            try:
                ctx, fn, args, fut = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody claimed this thread: it goes
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue  # claimed just now: its call is on the way
            try:
                result = (fut, True, ctx.run(fn, *args))
            except BaseException as exc:
                result = (fut, False, exc)
            del ctx, fn, args, fut  # no reference kept while idle
            with self._lock:
                self._results.append(result)
                wake = not self._wake_pending
                self._wake_pending = True
                self._idle += 1
            del result
            if wake:
                loop = self._loop()
                try:
                    if loop is None:
                        raise RuntimeError("the loop is gone")
                    loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
                del loop

    def _deliver(self) -> None:
        with self._lock:
            results, self._results = self._results, []
            self._wake_pending = False
        for fut, ok, value in results:
            if fut.done():  # its awaiter was cancelled (an example timeout)
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


_runners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Runner] = weakref.WeakKeyDictionary()


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, in a copy of the caller's context; awaited on the running loop."""
    loop = asyncio.get_running_loop()
    runner = _runners.get(loop)
    if runner is None:
        runner = _runners[loop] = _Runner(loop)
    result: T = await runner.submit(loop, fn, args)
    return result


class SyncCaller:
    """``await caller(*args)`` calls the sync function ``fn``: in a worker thread (``run_in_thread``)
    until it has shown it is quick and never waits on pytest-dspex's loop, then inline (see above).

    A slow call that waited (a voluntary context switch: I/O, a sleep, a lock) is a strike;
    ``STRIKES`` of them, or a call that raised or waited on the loop, and it stays in threads.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.inline = False
        self.threads_for_good = False
        self._quick = 0
        self._strikes = 0

    async def __call__(self, *args: Any) -> Any:
        if self.inline:
            waits: list[None] = []
            token = loop_waits.set(waits)
            t0, w0 = time.perf_counter(), _waited()
            try:
                value = self.fn(*args)
            except Exception:
                value = _FAILED
            finally:
                loop_waits.reset(token)
            if value is not _FAILED and not waits:
                if time.perf_counter() - t0 > SLOW_S and _waited() != w0:
                    self._strike()
                return value
            self._give_up()  # it raised or touched the loop: what a thread gives is the answer
            return await run_in_thread(self.fn, *args)
        if self.threads_for_good:
            return await run_in_thread(self.fn, *args)
        return await run_in_thread(self._probe, *args)

    def _probe(self, *args: Any) -> Any:
        waits: list[None] = []
        token = loop_waits.set(waits)
        t0, w0 = time.perf_counter(), _waited()
        ok = False
        try:
            value = self.fn(*args)
            ok = not waits
        finally:
            loop_waits.reset(token)
            if not ok:
                self._give_up()
            elif time.perf_counter() - t0 >= QUICK_S and _waited() != w0:
                self._strike()
            elif not self.threads_for_good:
                self._quick += 1
                if self._quick >= PROBE_CALLS:
                    self.inline = True
        return value

    def _strike(self) -> None:
        self._strikes += 1
        if self._strikes >= STRIKES:
            self._give_up()

    def _give_up(self) -> None:
        self.inline = False
        self.threads_for_good = True


_FAILED = object()


def _waited() -> int:
    """This thread's voluntary context switches (it waited: I/O, a sleep, a lock) — so a call slow only
    because its process was preempted on a busy machine is no strike. Where threads have no usage
    figures (not Linux): a constant, and a slow call is a strike."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD else 0


_RUSAGE_THREAD = resource is not None and hasattr(resource, "RUSAGE_THREAD")
