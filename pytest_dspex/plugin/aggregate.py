"""A failing per-example aggregate is a failed test pytest knows about.

A per-example test's items report one example each; its gate is judged on the controller once all
have reported (``collector.PerExampleRun``). When that gate fails, the controller reports a test of its
own, node id ``<module>::<test function>`` (the function, without a parameter), through
``pytest_runtest_logreport`` — the hook every reporter listens to:

* the terminal counts it (``1 failed, 166 passed, 44 missed``), shows it under FAILURES and in the
  short summary (``FAILED test_triage.py::test_triage_each - dspex gate FAILED for …``);
* the last-failed cache records it and every example item of the test, so ``pytest --lf`` runs the
  whole test again (a part of it would only give "incomplete"); while the aggregate id is in
  lastfailed, ``--lf`` / ``--ff`` select all its items (``select_whole_tests``), even after a focused
  ``-k`` run or skips dropped some of them (an item that failed on its own while the gate did not is
  rerun alone: a focused debugging run);
* JUnit gets a test case of its own carrying the ``<failure>`` and the aggregate's properties — not
  an example whose own outcome is ``pass`` — so its failure count agrees with the terminal.

A passing aggregate adds no test (its properties stay on its last example's JUnit test case), and
an incomplete one (``gates.incomplete``) is not a failure of its own: what cut the run short
already failed it, or the user chose a subset (see ``reports.run.ProgramRun.judge``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .collector import Collector, PerExampleRun

__all__ = ["AGGREGATE", "is_aggregate", "report_aggregates", "select_whole_tests"]

#: the attribute that marks the controller's aggregate reports (``pytest_report_teststatus`` reads it)
AGGREGATE = "dspex_aggregate"


def is_aggregate(report: Any) -> bool:
    return bool(getattr(report, AGGREGATE, False))


def _longrepr(run: PerExampleRun) -> str:
    assert run.verdict is not None and run.result is not None
    verdict, result = run.verdict, run.result
    lines = [verdict.headline(run.label, result.n, result.ci95), *verdict.details]
    lines += ["", result.summary()]
    return "\n".join(lines)


def _reports(run: PerExampleRun) -> list[pytest.TestReport]:
    from ..reports.junit import aggregate_properties

    path, lineno = run.location if run.location is not None else (run.test.split("::", 1)[0], None)
    location = (path, lineno, run.test.rsplit("::", 1)[-1] + " (dspex gate)")
    common: dict[str, Any] = {"nodeid": run.test, "location": location, "keywords": {run.test.rsplit("::", 1)[-1]: 1}}
    call = pytest.TestReport(outcome="failed", longrepr=_longrepr(run), when="call", **common)
    teardown = pytest.TestReport(
        outcome="passed", longrepr=None, when="teardown", user_properties=aggregate_properties(run.row()), **common
    )
    for rep in (call, teardown):
        setattr(rep, AGGREGATE, True)
    return [call, teardown]


def fails_on_its_own(run: PerExampleRun) -> bool:
    """A judged gate that failed (not incomplete, not a shard's deferred gate): a failed test of its own."""
    return run.verdict is not None and not run.verdict.passed and not run.verdict.incomplete


def report_aggregates(config: pytest.Config, collector: Collector) -> int:
    """Report each failing aggregate as a failed test (terminal, last-failed, JUnit); how many failed.

    Runs in ``pytest_sessionfinish`` (tryfirst), before the terminal summary, the last-failed cache
    and JUnit are written.
    """
    # The last-failed plugin's ``lastfailed`` dict (read through its public registration name; the
    # attribute itself is not documented): pytest offers no public way to mark a node id failed for
    # ``--lf`` without reporting a test of it, and the aggregate's items passed one by one. When the
    # attribute is missing, --lf simply reruns the aggregate's own id.
    lastfailed = getattr(config.pluginmanager.get_plugin("lfplugin"), "lastfailed", None)
    failed = 0
    for run in collector.runs.values():
        if fails_on_its_own(run):
            failed += 1
            for rep in _reports(run):
                setattr(rep, AGGREGATE, "reporting")  # no progress letter: the progress line is finished
                config.hook.pytest_runtest_logreport(report=rep)
                setattr(rep, AGGREGATE, True)  # FAILED in the short summary
            if isinstance(lastfailed, dict):  # --lf runs the whole test again, not the one aggregate id
                lastfailed.update(dict.fromkeys(map(_lastfailed_key, run.nodeids), True))
        elif isinstance(lastfailed, dict) and run.verdict is not None and not run.verdict.incomplete:
            lastfailed.pop(_lastfailed_key(run.test), None)  # judged again and not failed: nothing left to rerun
    return failed


def select_whole_tests(config: pytest.Config, collected: list[Any]) -> None:
    """``--lf`` / ``--ff``: every example item of a per-example test whose aggregate id (its failed gate)
    is in the last-failed cache joins it, so the whole test runs again and the gate gets a verdict.

    Called with a file's collected nodes before the last-failed plugin filters them: a focused ``-k``
    run drops its passing items from lastfailed and skips drop theirs, so lastfailed may hold part of
    a test, or only its aggregate id (trial2 F3)."""
    lf = config.pluginmanager.get_plugin("lfplugin")
    lastfailed = getattr(lf, "lastfailed", None)
    if not lastfailed or not isinstance(lastfailed, dict) or not getattr(lf, "active", False):
        return
    from .fixtures import test_key

    tests: dict[str, list[Any]] = {}
    for node in collected:
        params = getattr(getattr(node, "callspec", None), "params", None)
        if isinstance(node, pytest.Item) and params and "dspex_example" in params:
            tests.setdefault(test_key(node), []).append(_lastfailed_key(node.nodeid))
    for test, keys in tests.items():
        if _lastfailed_key(test) in lastfailed:
            lastfailed.update(dict.fromkeys(keys, True))


def _lastfailed_key(nodeid: str) -> Any:
    """The last-failed cache's key for ``nodeid``: a ``NodeId`` from pytest 9, the string before.

    ``_pytest.nodeid`` is private: read only, because the cache's keys are its objects from pytest 9."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pragma: no cover - pytest < 9
        return nodeid
    return NodeId.parse(nodeid)
