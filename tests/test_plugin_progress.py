"""The live progress line: drawn from the waiting test thread with capture suspended, quiet off a TTY."""

from __future__ import annotations

import contextlib
import itertools
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


class LogReporter(FakeReporter):
    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append((line, self.capture.suspended))


def test_without_a_tty_the_compile_writes_throttled_lines_with_a_heartbeat() -> None:
    from pytest_dspex.plugin.progress import LOG_MAX_S, LOG_MIN_S, LogProgress

    now = [100.0]
    capture = FakeCapture()
    reporter = LogReporter(capture)
    progress = LogProgress(reporter, capture, "", clock=lambda: now[0])
    written: list[tuple[float, str]] = []

    clock = [0.0]

    def at(t: float, text: str | None = None) -> None:
        """Time runs on to ``t`` with the waiting thread polling every 0.1 s, then ``text`` is said."""
        while clock[0] < t - 1e-9:
            clock[0] = round(clock[0] + 0.1, 6)
            now[0] = 100.0 + clock[0]
            before = len(reporter.lines)
            progress.poll()
            written.extend((clock[0], line) for line, _ in reporter.lines[before:])
        if text is not None:
            progress.say(text)

    at(0, "compiling triage: 24 training, 24 validation examples")
    at(0.5, "compiling triage: bootstrapping 7 candidates on 24 training examples")  # too soon: waits
    for k in range(1, 30):  # a running count every 0.4 s, within one phase
        at(2.0 + 0.4 * k, f"compiling triage: evaluating bootstrap: {k}/24 examples, score 0.900")
    at(40.0)  # nothing new for 26 s: the heartbeat repeats the latest text
    times = [t for t, _ in written]
    assert all(b - a >= LOG_MIN_S - 1e-6 for a, b in itertools.pairwise(times)), written
    assert all(b - a <= LOG_MAX_S + 0.1 + 1e-6 for a, b in itertools.pairwise(times)), written  # polled every 0.1 s
    assert times[-1] >= 40 - LOG_MAX_S - 0.1
    texts = [line for _, line in written]
    assert texts[0] == "[dspex] compiling triage: 24 training, 24 validation examples (0 s)"
    assert texts[1] == "[dspex] compiling triage: bootstrapping 7 candidates on 24 training examples (2 s)"
    assert texts[2].startswith("[dspex] compiling triage: evaluating bootstrap: ")
    counts = [t for t in texts if "evaluating bootstrap" in t]
    assert len(counts) < 29 / 4  # within one phase one line every 5 s, not one every 0.4 s
    assert [t.rsplit(" (", 1)[0] for t in texts[-3:]] == ["[dspex] compiling triage: evaluating bootstrap: 29/24 examples, score 0.900"] * 3
    assert all(suspended for _, suspended in reporter.lines)


def test_the_compile_reports_progress_in_a_log_without_a_tty(pytester: pytest.Pytester, server_factory) -> None:
    from .test_demos import pipeline_responder
    from .test_plugin import run

    pytester.makefile(".jsonl", **{"data/train": _review_rows(8), "data/dev": _review_rows(6)})
    from .test_demos import RESPONDER_TEST

    pytester.makepyfile(test_resp=RESPONDER_TEST.replace("MARKER", ""))
    # 50 ms an answer: the compile outlasts the progress poll (0.1 s) on any machine (at 0 ms a fast one
    # compiled in under a poll, and a compile that short has nothing to show)
    server = server_factory(pipeline_responder, latency=0.05)
    result = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile", "--dspex-candidates=1")
    assert result.ret == 0, result.stdout.str()
    # the line's phase depends on the machine's speed (a poll shows the latest): any, with its elapsed time
    result.stdout.re_match_lines([r"\[dspex\] compiling responder: .+ \(\d+ s\)$"])
    # a normal run (the golden loaded, nothing compiled) writes no progress line
    quiet = run(pytester, server, ["-p", "no:xdist"])
    assert quiet.ret == 0 and "[dspex] " not in quiet.stdout.str()


def _review_rows(n: int) -> str:
    from .test_demos import review_rows

    return review_rows(n)
