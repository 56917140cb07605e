"""A live progress line in the terminal, visible under pytest's default output capture.

Evaluation and compile run on pytest-dspex's event-loop thread; they only *report* progress
(``update``/``say``, any thread). The test's own thread, waiting for them, calls ``poll`` a few
times a second and draws the latest state the way pytest's live logging does: capture suspended
(``capture_manager.global_and_fixture_disabled()``), drawn with the terminal reporter's public
``rewrite``. Quiet when the terminal is not a TTY, under ``-qq``, in xdist workers, and off the
main thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

__all__ = ["Progress", "run_with_progress"]

T = TypeVar("T")


class Progress:
    """One live line: ``[dspex] triage: 120/1000 score 0.950 errors 2``.

        progress = Progress.for_config(config, "triage")
        Evaluate(..., progress=progress.update)   # from any thread
        progress.poll()                           # from the test's thread: draws
        progress.close()                          # erases the line
    """

    def __init__(self, reporter: Any, capture: Any, label: str) -> None:
        self._reporter = reporter
        self._capture = capture
        self._label = label
        self._lock = threading.Lock()
        self._text: str | None = None
        self._drawn: str | None = None
        self._fspath: Any = None  # the test file whose results the interrupted line held

    @classmethod
    def for_config(cls, config: pytest.Config, label: str) -> Progress | None:
        """A progress line for this terminal, or None when nothing should be drawn."""
        if hasattr(config, "workerinput") or config.get_verbosity() < -1:
            return None
        if threading.current_thread() is not threading.main_thread():
            return None  # pytest's capture belongs to the main thread (an async test's to_thread call)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not getattr(reporter, "isatty", False):
            return None
        return cls(reporter, config.pluginmanager.get_plugin("capturemanager"), label)

    # -- reporting (any thread) -----------------------------------------------------------------
    def update(self, done: int, total: int, score: float, errors: int) -> None:
        self.say(f"{done}/{total} score {score:.3f} errors {errors}")

    def say(self, text: str) -> None:
        with self._lock:
            self._text = text

    # -- drawing (the test's thread) ------------------------------------------------------------
    def _suspended(self) -> Any:
        if self._capture is None:
            return contextlib.nullcontext()
        return self._capture.global_and_fixture_disabled()

    def poll(self) -> None:
        with self._lock:
            text = self._text
        if text is None or text == self._drawn:
            return
        if self._drawn is None:
            self._fspath = getattr(self._reporter, "currentfspath", None)
            with self._suspended():
                self._reporter.ensure_newline()
        self._drawn = text
        with self._suspended():
            self._reporter.rewrite(f"[dspex] {self._label}: {text}" if self._label else f"[dspex] {text}", erase=True)

    def close(self) -> None:
        self.poll()
        if self._drawn is None:
            return
        # give the line back to pytest as it left it: the test file's name, results to follow
        prefix = ""
        if self._fspath is not None:
            prefix = os.path.relpath(self._fspath, getattr(self._reporter, "startpath", os.getcwd())) + " "
        with self._suspended():
            self._reporter.rewrite("", erase=True)
            self._reporter.rewrite(prefix)
        self._reporter.currentfspath = self._fspath
        self._drawn = None


def run_with_progress(progress: Progress | None, fn: Callable[[], T]) -> T:
    """``fn()``; with a progress line, run in a helper thread while this thread draws it.

    The blocking work (an evaluation, a compile) waits on pytest-dspex's loop anyway; the helper
    thread only frees the test's thread to draw, the one place pytest lets us suspend capture.
    """
    if progress is None:
        return fn()
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-wait") as pool:
        fut = pool.submit(ctx.run, fn)
        try:
            while True:
                try:
                    return fut.result(timeout=0.1)
                except TimeoutError:
                    if fut.done():  # fn's own TimeoutError
                        raise
                    progress.poll()
        finally:
            progress.close()
