"""Ctrl-C during a run (TRIAL findings 1 and 5): an interrupted compile writes no golden and stops
promptly; an interrupted session keeps the previous report, whatever the number of signals.

The user's metric sends the SIGINT itself (``os.kill``) at its Nth call: a real signal, delivered
while the compile or the gate is in flight, at a point that does not depend on the machine's speed.
"""

from __future__ import annotations

import json

import pytest

from .test_plugin_baseline import COMPILE, GOLDEN, mode, model, project, run, server  # noqa: F401

# the metric counts its calls in calls.log and, at call KILL_AT, sends SIGINT to its process (and,
# under xdist, to the controller too: a terminal's Ctrl-C reaches them all)
KILLING_METRIC = '''
import os, signal

def _claim(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False

def team_matches(example, prediction, trace=None):
    with open("calls.log", "a") as f:
        f.write("x\\n")
    with open("calls.log") as f:
        calls = len(f.readlines())
    kill_at = int(os.environ.get("KILL_AT") or 0)
    # metrics run side by side: two calls may both count past KILL_AT, so the first to claim the flag kills
    if kill_at and calls >= kill_at and _claim("killed.flag"):
        if os.environ.get("PYTEST_XDIST_WORKER"):
            os.kill(os.getppid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    return example.team == prediction.team
'''


def killing_project(pytester: pytest.Pytester, n: int = 40) -> None:
    project(pytester, n)
    path = pytester.path / "test_triage.py"
    source = path.read_text()
    start = source.index("def team_matches")
    end = source.index("@pytest.mark", start)
    path.write_text(source[:start] + KILLING_METRIC.lstrip() + "\n" + source[end:])


def calls(pytester: pytest.Pytester) -> int:
    log = pytester.path / "calls.log"
    n = len(log.read_text().splitlines()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return n


def test_ctrl_c_during_a_compile_keeps_the_golden_and_stops_the_compile(pytester, server, mode, monkeypatch):  # noqa: F811
    """Finding 1: Ctrl-C during --dspex-compile (no xdist) went on ~9 s and replaced the golden with a
    candidate chosen from the part that had run."""
    killing_project(pytester)
    server.latency = 0.05
    first = run(pytester, server, mode, *COMPILE, "-k", "not each")
    assert first.ret == 0, first.stdout.str()
    full = calls(pytester)  # the metric calls of a whole compile and gate
    before = (pytester.path / GOLDEN).read_bytes()
    monkeypatch.setenv("KILL_AT", "3")
    out = run(pytester, server, mode, *COMPILE, "--dspex-force", "-k", "not each")
    assert out.ret == pytest.ExitCode.INTERRUPTED, out.stdout.str()
    assert (pytester.path / GOLDEN).read_bytes() == before
    if "no:xdist" in mode:
        out.stdout.fnmatch_lines(["*compile of 'triage' interrupted: golden not written (__dspex__/test_triage/triage.json unchanged)*"])
    else:  # the controller, the goldens' one writer, says it (trial 6 #10: nothing was said)
        # not "compile of every program": programs may have finished before it (trial: garbled wording)
        out.stdout.fnmatch_lines(["dspex: compile interrupted: no golden written in this run (the goldens are unchanged)"])
    assert calls(pytester) < full // 2  # the compile stopped at the signal, it did not run on to its end
    assert "Traceback" not in out.stdout.str() + out.stderr.str()


# a second Ctrl-C (a real SIGINT) where it hurt: while pytest reports the first (making a traceback's
# source lines), or while the run finishes (the terminal summary)
SECOND_CTRL_C = """
import os, signal, time

def _again(where):
    if os.environ.get("SECOND_AT") == where:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the signal ends this sleep at once

def pytest_keyboard_interrupt(excinfo):
    _again("report")

def pytest_terminal_summary(terminalreporter):
    _again("summary")
"""


@pytest.mark.parametrize("second_at", ["report", "summary"])
def test_ctrl_c_twice_keeps_the_previous_report_and_says_it_in_one_line(pytester, server, mode, monkeypatch, second_at):  # noqa: F811
    """Finding 5: two Ctrl-Cs 20 ms apart printed an 87-line traceback and replaced the existing report
    with one of the part that had run ("programs": [] when nothing had)."""
    killing_project(pytester)
    pytester.makeconftest(SECOND_CTRL_C)
    assert run(pytester, server, mode, *COMPILE).ret == 0
    first = run(pytester, server, mode, "--dspex-report=r.json")
    assert first.ret == 0, first.stdout.str()
    before = (pytester.path / "r.json").read_bytes()
    assert json.loads(before)["programs"]
    calls(pytester)  # the metric counts from here
    monkeypatch.setenv("KILL_AT", "5")
    monkeypatch.setenv("SECOND_AT", second_at)
    out = run(pytester, server, mode, "--dspex-report=r.json")
    assert out.ret == pytest.ExitCode.INTERRUPTED, out.stdout.str() + out.stderr.str()
    now = (pytester.path / "r.json").read_bytes()
    if now != before:  # written as interrupted (trial F4): incomplete, the previous one kept beside it
        assert (pytester.path / "r.json.prev").read_bytes() == before
        assert json.loads(now)["complete"] is False and json.loads(now)["passed"] is False
    again = {"report": "interrupted again while pytest reported the interruption", "summary": "interrupted while the run was finishing"}
    out.stdout.fnmatch_lines([f"dspex: {again[second_at]}: stopping*"])
    assert "Traceback" not in out.stdout.str() + out.stderr.str()
    assert "INTERNALERROR" not in out.stdout.str() + out.stderr.str()


def test_the_controllers_interrupted_compile_line_says_what_it_wrote_and_nothing_more():
    # trial: "compile of every program interrupted: golden not written (the goldens are unchanged but those;
    # written before it: a.json, b.json)" -- garbled, and "every program" though some had finished
    from pytest_dspex.plugin import interrupted_compile_text

    both = ["tests/__dspex__/test_b/b.json", "tests/__dspex__/test_a/a.json"]
    assert interrupted_compile_text("compile", {"*"}, both) == (
        "dspex: compile interrupted: written before the interrupt: tests/__dspex__/test_a/a.json, "
        "tests/__dspex__/test_b/b.json; no other golden written (the others are unchanged)"
    )
    assert interrupted_compile_text("re-baseline", {"triage"}, []) == (
        "dspex: re-baseline of 'triage' interrupted: no golden written in this run (the goldens are unchanged)"
    )


def test_ctrl_c_under_xdist_does_not_warn_that_the_coordinator_was_lost(pytester, server, monkeypatch):  # noqa: F811
    """trial3 T4: after Ctrl-C under -n 2 each worker warned "the run's coordinator at 127.0.0.1:N closed
    the connection; this process now keeps its own LM limits" — the interrupt, not a fault."""
    killing_project(pytester)
    server.latency = 0.05
    assert run(pytester, server, ["-p", "no:xdist"], *COMPILE, "-k", "not each").ret == 0
    calls(pytester)
    monkeypatch.setenv("KILL_AT", "10")
    out = run(pytester, server, ["-n", "2"])
    assert out.ret == pytest.ExitCode.INTERRUPTED, out.stdout.str()
    said = out.stdout.str() + out.stderr.str()
    assert "the run's coordinator" not in said and "keeps its own LM limits" not in said, said
