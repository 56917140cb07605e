"""A live progress line in the terminal, visible under pytest's default output capture.

Evaluation and compile run on pytest-dspex's event-loop thread; they only *report* progress
(``update``/``say``, any thread). The test's own thread, waiting for them, calls ``poll`` a few
times a second and draws the latest state the way pytest's live logging does: capture suspended
(``capture_manager.global_and_fixture_disabled()``), drawn with the terminal reporter's public
``rewrite``. Quiet under ``-qq``, in xdist workers, and off the main thread.

Without a TTY (a CI log) a live line cannot be redrawn: with ``log=True`` (the compile) the
progress is written as lines instead, ``[dspex] <text> (<elapsed> s)``: one when the phase
changes, one when the text changes within a phase, but never two within ``LOG_MIN_S`` of each
other (``LOG_SAME_PHASE_S`` within a phase), and at least one every ``LOG_MAX_S`` while the work
goes on (the latest text again), so a CI log shows a long compile moving and nothing floods it.
Without ``log`` nothing is drawn off a TTY (an evaluation's running score would only add noise).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

__all__ = ["LogProgress", "Progress", "run_with_progress"]

#: lines written without a TTY: never two closer than this (seconds) ...
LOG_MIN_S = 2.0
#: ... nor two of the same phase closer than this ...
LOG_SAME_PHASE_S = 5.0
#: ... and at least one this often while the work goes on
LOG_MAX_S = 9.5  # polled every 0.1 s: a line within 10 s

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
    def for_config(cls, config: pytest.Config, label: str, *, log: bool = False) -> Progress | None:
        """A progress line for this terminal, or None when nothing should be drawn.

        ``log``: without a TTY, write throttled lines (``LogProgress``) rather than nothing.
        """
        if hasattr(config, "workerinput") or config.get_verbosity() < -1:
            return None
        if threading.current_thread() is not threading.main_thread():
            return None  # pytest's capture belongs to the main thread (an async test's to_thread call)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return None
        capture = config.pluginmanager.get_plugin("capturemanager")
        if not getattr(reporter, "isatty", False):
            return LogProgress(reporter, capture, label) if log else None
        return cls(reporter, capture, label)

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


class LogProgress(Progress):
    """``Progress`` for a terminal that is not a TTY: throttled whole lines (see the module doc)."""

    def __init__(self, reporter: Any, capture: Any, label: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(reporter, capture, label)
        self._clock = clock
        self._started = clock()
        self._last_at: float | None = None
        self._last_text: str | None = None
        self._opened = False

    @staticmethod
    def _phase(text: str) -> str:
        """``a: b: counts`` -> ``a: b``; otherwise the text without its numbers."""
        if text.count(": ") >= 2:
            return text.rsplit(": ", 1)[0]
        return re.sub(r"\d+(\.\d+)?", "#", text)

    def line_due(self, text: str, now: float) -> bool:
        """Whether ``text`` should be written at ``now`` (the throttling rule, kept pure for tests)."""
        if self._last_at is None:
            return True
        since = now - self._last_at
        if since >= LOG_MAX_S:
            return True  # the heartbeat, even with the same text
        if text == self._last_text or since < LOG_MIN_S:
            return False
        same_phase = self._last_text is not None and self._phase(text) == self._phase(self._last_text)
        return not same_phase or since >= LOG_SAME_PHASE_S

    def poll(self) -> None:
        with self._lock:
            text = self._text
        now = self._clock()
        if text is None or not self.line_due(text, now):
            return
        self._last_at, self._last_text = now, text
        label = f"{self._label}: " if self._label else ""
        with self._suspended():
            if not self._opened:
                self._reporter.ensure_newline()
                self._opened = True
            self._reporter.write_line(f"[dspex] {label}{text} ({now - self._started:.0f} s)")

    def close(self) -> None:
        if self._opened:
            with self._suspended():
                self._reporter.ensure_newline()


def run_with_progress(progress: Progress | None, fn: Callable[[], T]) -> T:
    """``fn()``; with a progress line, run in a helper thread while this thread draws it.

    The blocking work (an evaluation, a compile) waits on pytest-dspex's loop anyway; the helper
    thread only frees the test's thread to draw, the one place pytest lets us suspend capture.
    """
    if progress is None:
        return fn()
    from .._support.runtime import Interrupt, interrupt_scope

    ctx = contextvars.copy_context()
    scope = Interrupt()
    ctx.run(interrupt_scope.set, scope)
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
        except KeyboardInterrupt:  # Ctrl-C reaches this thread: stop fn's waits now, not after it ran on
            scope.interrupt()
            concurrent.futures.wait([fut])
            own = fut.exception() if not fut.cancelled() else None
            if isinstance(own, KeyboardInterrupt) and own.args:  # fn said what the interrupt left undone
                raise own from None
            raise
        finally:
            progress.close()
