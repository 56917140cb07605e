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

__all__ = ["get_loop", "in_runtime", "on_shutdown", "run_async", "run_sync", "shutdown"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid = 0
_closers: list[Callable[[], Coroutine[Any, Any, None]]] = []


def get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread, _pid
    if _loop is not None and _pid == os.getpid() and not _loop.is_closed():
        return _loop
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            # sync user modules run in threads; the default pool (cores + 4) would cap concurrency
            loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(256, thread_name_prefix="dspex-sync")
            )
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="pytest-dspex-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread, _pid = loop, thread, os.getpid()
            _closers.clear()
    return _loop


def in_runtime() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
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


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for it (from any thread but that loop's)."""
    if in_runtime():
        coro.close()
        raise RuntimeError(
            "a synchronous pytest-dspex call was made from inside its own event loop; "
            "use `await program.acall(...)` in async code"
        )
    fut = _submit(coro)
    try:
        return fut.result()
    except KeyboardInterrupt:
        fut.cancel()
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop from any event loop."""
    if in_runtime():
        return await coro
    return await asyncio.wrap_future(_submit(coro))


def on_shutdown(closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Register an async cleanup (closing a connection pool) to run at shutdown."""
    _closers.append(closer)


def shutdown() -> None:
    """Run the cleanups and stop the loop; the next call starts a fresh one."""
    global _loop
    loop = _loop
    if loop is None or _pid != os.getpid() or loop.is_closed():
        return

    async def close_all() -> None:
        for closer in list(_closers):
            try:
                await closer()
            except Exception:
                pass
        _closers.clear()

    try:
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=10)
    except Exception:
        pass
    loop.call_soon_threadsafe(loop.stop)
    if _thread is not None:
        _thread.join(timeout=5)
    if not loop.is_running():
        loop.close()
    _loop = None


atexit.register(shutdown)
