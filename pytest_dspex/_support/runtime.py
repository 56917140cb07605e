"""One background event loop per process, where every LM connection pool lives.

An httpx/aiohttp client belongs to the loop that created it. pytest-dspex is called from sync
fixtures, from pytest-asyncio tests (each with its own loop) and from xdist workers, so all network
I/O runs on a single long-lived loop in a daemon thread; sync and async callers hand their
coroutines to it. Context variables (traces, usage trackers, settings) travel with the coroutine.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupt", "get_loop", "in_runtime", "on_shutdown", "raise_if_interrupted", "run_async", "run_sync", "shutdown"]

T = TypeVar("T")

class _Runtime:
    """The loop, its thread and the cleanups registered on it: they live and die together."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        # sync user modules and metrics run in threads; the default pool (cores + 4) would cap concurrency
        self.loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(256, thread_name_prefix="dspex-sync"))
        self.closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="pytest-dspex-loop", daemon=True)
        self.thread.start()
        ready.wait()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and not self.loop.is_closed()

    def stop(self) -> None:
        async def close_all() -> None:
            for closer in list(self.closers):
                try:
                    await closer()
                except Exception:
                    pass
            self.closers.clear()

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


_lock = threading.Lock()
_current: _Runtime | None = None


def _runtime() -> _Runtime:
    global _current
    rt = _current
    if rt is not None and rt.alive:
        return rt
    with _lock:
        if _current is None or not _current.alive:
            _current = _Runtime()  # first use, or a forked child (a loop does not survive a fork)
        return _current


def get_loop() -> asyncio.AbstractEventLoop:
    return _runtime().loop


def in_runtime() -> bool:
    rt = _current
    if rt is None:
        return False
    try:
        return asyncio.get_running_loop() is rt.loop
    except RuntimeError:
        return False


def _submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    loop = get_loop()
    ctx = contextvars.copy_context()
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        task = loop.create_task(coro, context=ctx)

        def done(t: asyncio.Task[T]) -> None:
            if t.cancelled():
                fut.cancel()
            elif (exc := t.exception()) is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(t.result())

        task.add_done_callback(done)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)

    loop.call_soon_threadsafe(start)
    return fut


#: set by ``_threads.SyncCaller`` around a sync call it is learning about: each ``run_sync`` inside
#: appends to the list, so a metric that waits on this loop (an LM judge) is never run on it.
loop_waits: contextvars.ContextVar[list[None] | None] = contextvars.ContextVar("dspex_loop_waits", default=None)


class Interrupt:
    """Ctrl-C for work that a helper thread runs (``run_with_progress``): the main thread gets the
    KeyboardInterrupt, so it calls ``interrupt()``, which cancels the helper's ``run_sync`` waits; they,
    and any later ``run_sync`` or ``raise_if_interrupted`` in that context, raise KeyboardInterrupt.
    Without it the helper ran on after the signal and wrote what it had (a half-compiled golden)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: set[concurrent.futures.Future[Any]] = set()
        self.interrupted = False

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted = True
            waits = list(self._waits)
        for fut in waits:
            fut.cancel()

    def _watch(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waits.add(fut)
            interrupted = self.interrupted
        if interrupted:
            fut.cancel()

    def _unwatch(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waits.discard(fut)


#: the ``Interrupt`` of the work running in this context (set by the caller that runs it in a helper thread)
interrupt_scope: contextvars.ContextVar[Interrupt | None] = contextvars.ContextVar("dspex_interrupt", default=None)


def raise_if_interrupted() -> None:
    """KeyboardInterrupt when this context's work was interrupted (before writing anything to disk)."""
    scope = interrupt_scope.get()
    if scope is not None and scope.interrupted:
        raise KeyboardInterrupt


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for it (from any thread but that loop's)."""
    waits = loop_waits.get()
    if waits is not None:
        waits.append(None)
    if in_runtime():
        coro.close()
        raise RuntimeError(
            "a synchronous pytest-dspex call was made from inside its own event loop; "
            "use `await program.acall(...)` in async code"
        )
    scope = interrupt_scope.get()
    if scope is not None and scope.interrupted:
        coro.close()
        raise KeyboardInterrupt
    fut = _submit(coro)
    if scope is not None:
        scope._watch(fut)
    try:
        return fut.result()
    except KeyboardInterrupt:
        fut.cancel()
        raise
    except concurrent.futures.CancelledError:
        if scope is not None and scope.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if scope is not None:
            scope._unwatch(fut)


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop from any event loop."""
    if in_runtime():
        return await coro
    return await asyncio.wrap_future(_submit(coro))


def on_shutdown(closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Register an async cleanup (closing a connection pool) to run when the loop stops."""
    _runtime().closers.append(closer)


def shutdown() -> None:
    """Run the cleanups and stop the loop; the next call starts a fresh one."""
    global _current
    rt = _current
    if rt is None or not rt.alive:
        return
    rt.stop()
    _current = None


atexit.register(shutdown)
