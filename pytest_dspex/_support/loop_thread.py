"""An event loop in a daemon thread of its own: where a small server lives (the run's coordinator, the
fake LM server), apart from pytest-dspex's own loop (``runtime``) and from the thread that started it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, setup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start the thread and run ``setup`` on its loop; its error is raised here (and nothing keeps running)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(setup())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            loop.close()
            raise errors[0]
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        """Run ``coro`` on the thread's loop and wait for its result."""
        assert self.loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def stop(self, cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None, timeout: float = 10.0) -> None:
        """Run ``cleanup``, cancel what still runs on the loop, stop it and join the thread (again: nothing)."""
        loop, self.loop = self.loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            if cleanup is not None:
                await cleanup()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=timeout)
        except Exception:  # a cleanup that failed or hung: the loop stops all the same
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        loop.close()
