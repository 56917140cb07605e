"""The live progress line: drawn from the waiting test thread with capture suspended, quiet off a TTY."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_dspex.plugin.progress import Progress, run_with_progress


class FakeReporter:
    def __init__(self, capture: FakeCapture) -> None:
        self.capture = capture
        self.lines: list[tuple[str, bool]] = []  # (text, drawn while capture was suspended)
        self.currentfspath: Any = "/proj/test_x.py"
        self.startpath = "/proj"
        self.thread: threading.Thread | None = None

    def ensure_newline(self) -> None:
        self.currentfspath = None

    def rewrite(self, line: str, **markup: bool) -> None:
        self.thread = threading.current_thread()
        self.lines.append((line, self.capture.suspended))


class FakeCapture:
    suspended = False

    @contextlib.contextmanager
    def global_and_fixture_disabled(self) -> Iterator[None]:
        self.suspended = True
        try:
            yield
        finally:
            self.suspended = False


def test_progress_is_drawn_on_the_waiting_thread_with_capture_suspended_then_erased() -> None:
    capture = FakeCapture()
    reporter = FakeReporter(capture)
    progress = Progress(reporter, capture, "triage")

    def work() -> str:
        for done in range(1, 4):
            progress.update(done, 3, 1.0, 0)
            time.sleep(0.25)
        return "result"

    assert run_with_progress(progress, work) == "result"
    drawn = [text for text, suspended in reporter.lines if suspended]
    assert len(drawn) == len(reporter.lines) >= 2
    assert any(t.startswith("[dspex] triage: ") and "/3 score 1.000 errors 0" in t for t in drawn)
    assert drawn[-2:] == ["", "test_x.py "]  # erased at the end, the line handed back to pytest's results
    assert reporter.thread is threading.current_thread()
    assert reporter.currentfspath == "/proj/test_x.py"


def test_no_progress_line_off_a_terminal(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure("-p", "no:xdist")
    assert Progress.for_config(config, "triage") is None  # pytester's output is not a TTY
