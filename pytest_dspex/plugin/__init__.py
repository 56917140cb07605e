"""The pytest plugin (entry point ``dspex``). Hooks stay thin: state lives in ``DspexSession``.

Importing this module imports only pytest and the small option/marker modules, so a project
that installs pytest-dspex but does not use it pays (almost) nothing at start-up.

Under xdist (default ``--dist load``), per-example items of one test are scheduled in chunks,
so each worker evaluates whole chunks concurrently (see ``plugin/xdist.py``).
"""

from __future__ import annotations

import functools
import gc
import json
import os
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import _plain_imports  # noqa: F401  (first: the package's other modules import plainly, see there)

if "PYTEST_XDIST_WORKER" in os.environ:  # an xdist worker: pytest and the plugins so far live the whole run
    gc.freeze()  # out of the collector's full scans (``warmup.freeze_startup``: the rest once collected)
from .collection import note_selection, parametrize_examples
from .endpoint import dspex_endpoint
from .fixtures import (
    NotAnswered,
    dspex_evaluate,
    dspex_example,
    dspex_lm,
    dspex_load_dataset,
    dspex_predict,
    payload_key,
)
from .markers import MARKERS
from .options import add_options, resolve
from .session import DspexSession, session_key

__all__ = ["dspex_endpoint", "dspex_evaluate", "dspex_example", "dspex_lm", "dspex_load_dataset", "dspex_predict"]

_collector_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from . import endpoint

    add_options(parser)
    endpoint.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``--dspex-openai-env``: the environment points at the run's endpoint before any conftest.py is
    imported (one that imports the application builds its client then)."""
    from . import endpoint

    endpoint.export_early(early_config)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import _asyncio_default, hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    _asyncio_default.register(pluginmanager)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    session = DspexSession(config, resolve(config))
    config.stash[session_key] = session
    from . import endpoint

    endpoint.configure(config, session)
    if not session.is_worker:
        from .collector import Collector
        from .interrupts import InterruptHooks

        config.pluginmanager.register(InterruptHooks(config), "dspex-interrupts")

        collector = Collector(
            Path(config.rootpath), shard=session.options.shard, force=session.options.force, state_dir=session.state_dir
        )
        config.stash[_collector_key] = collector
        # a deliberate selection: a golden whose test was only deselected is not "unused"
        o = config.option
        collector.selection = bool(
            getattr(o, "keyword", "") or getattr(o, "markexpr", "") or getattr(o, "deselect", None)
            or getattr(o, "lf", False) or any("::" in str(a) for a in config.args)
        )  # fmt: skip
        if session.options.outputs or os.environ.get("GITHUB_STEP_SUMMARY"):  # a report will name the commit
            collector.start_dirty_check()
        config.pluginmanager.register(_ControllerHooks(collector), "dspex-controller")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(session), "dspex-xdist")


class _ControllerHooks:
    """On the controller (or the only process): gathers the payload every test report carries."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector
        #: per-example test key -> (highest example index seen, its node id): where JUnit gets the aggregate
        self.last_items: dict[str, tuple[int, str]] = {}
        self._fspaths: dict[str, str] = {}  # a report's file (relative to the rootdir) -> its path

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":  # the test ended (passed, failed or skipped): ``_every_test_ran``
            self.collector.ended.add(report.nodeid)
        elif report.failed:  # a dspex test that fails before its gate (a stale golden) is no pass of the run
            self.collector.failed_tests.add(report.nodeid.split("[", 1)[0])
        payload = _payload(report)
        if payload:
            fspath = self._fspaths.get(report.location[0])
            if fspath is None:  # (a few files, 1,000s of reports)
                fspath = self._fspaths[report.location[0]] = str(Path(self.collector.rootpath) / report.location[0])
            self.collector.add(report.nodeid, fspath, payload, (report.location[0], report.location[1]))
            if payload.get("kind") == "example":
                index, test = int(payload["record"]["index"]), str(payload["settings"]["test"])
                if index >= self.last_items.get(test, (-1, ""))[0]:
                    self.last_items[test] = (index, report.nodeid)


    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # under xdist, each worker's collection errors are reported here too
            self.collector.collect_errors.add(report.nodeid or ".")


#: the last payload text decoded and its value: a report's payload is read by ``pytest_runtest_logreport``
#: and again by ``pytest_report_teststatus`` (inside the terminal's), one after the other: decoded once
_decoded: tuple[str, dict[str, Any]] | None = None


def _payload(report: Any) -> dict[str, Any] | None:
    """The dspex payload a test report carries (``pytest_runtest_makereport``), decoded if a worker sent it
    (the report keeps the text: decoded values are shared, read only)."""
    global _decoded
    payload = getattr(report, "dspex", None)
    if not isinstance(payload, str):
        return payload
    if _decoded is not None and _decoded[0] is payload:
        return _decoded[1]
    value: dict[str, Any] = json.loads(payload)
    _decoded = (payload, value)
    return value


class _XdistHooks:
    """Registered only when pytest-xdist is present: hands the run id to the workers."""

    def __init__(self, session: DspexSession) -> None:
        self.session = session

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died on a per-example item: name what was in flight (``xdist.crash_of``)."""
        from .xdist import crash_of, read_chunks

        worker = getattr(getattr(report, "node", None), "workerinput", {}).get("workerid", "?")
        chunks = read_chunks(self.session.state_dir(), self.session.run_id)
        in_flight = getattr(sched, "in_flight", {}).get(crashitem)  # ``ChunkScheduling``: a chunk's evaluation
        crash = crash_of(crashitem, worker, chunks, list(getattr(sched, "collection", None) or ()), in_flight)
        if crash is None:
            return
        report.longrepr = crash.text
        collector = self.session.config.stash.get(_collector_key, None)
        if collector is not None:
            collector.crashes.setdefault(crash.test, []).append((crash.text, crash.total))

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dspex_run_id"] = self.session.run_id
        node.workerinput["dspex_owner_pid"] = os.getpid()
        if getattr(getattr(node.gateway, "spec", None), "popen", False):  # a worker on this machine
            node.workerinput["dspex_limits"] = self.session.run_limits()  # one set of LM limits per run

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Any) -> None:
        collector = self.session.config.stash.get(_collector_key, None)
        if collector is not None:  # what the workers collected (each the same): ``_every_test_ran``
            collector.collected = len(ids)
        from .xdist import read_usage_error

        problem = read_usage_error(self.session.state_dir(), self.session.run_id, node.workerinput["workerid"])
        if problem is not None:
            pytest.exit(f"ERROR: {problem}", returncode=pytest.ExitCode.USAGE_ERROR)
        if node.workerinput["workerid"] == "gw0":  # the budget said up front (``upfront``), before any test runs
            from .xdist import read_budget_notice

            notice = read_budget_notice(self.session.state_dir(), self.session.run_id)
            if notice is not None:
                _say_budget(node.config, notice)

    @pytest.hookimpl(tryfirst=True)  # a worker, its collection reported: before xdist waits for its tests
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """The first dspex test's one-time imports, made while the worker waits for its tests (``warmup``)."""
        if self.session.is_worker and not session.config.option.collectonly:
            from .warmup import freeze_startup, has_goldens, uses_dspex, warm_up

            if uses_dspex(session.items):
                warm_up(goldens=has_goldens(session.items))
                freeze_startup()

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load":
            return None
        from .scheduling import ChunkScheduling

        return ChunkScheduling(config, log, run_id=self.session.run_id, state_dir=self.session.state_dir)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_examples(metafunc)


@pytest.hookimpl(wrapper=True, trylast=True)  # inside the last-failed plugin's wrapper: before it filters
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    config = collector.config
    if isinstance(collector, pytest.File) and report.result and (config.getoption("lf", False) or config.getoption("failedfirst", False)):
        from .aggregate import select_whole_tests

        select_whole_tests(config, report.result)  # --lf reruns a per-example test whole (trial2 F3)
    return report


@pytest.hookimpl(tryfirst=True)  # before an xdist worker reports its collection
def pytest_collection_finish(session: pytest.Session) -> None:
    """Which examples of each per-example test this process may run (``-k``, ``--lf`` applied); with a
    budget set, whether the run's estimate exceeds it (said once, before any LM call: ``upfront``)."""
    note_selection(session)
    dspex = session.config.stash.get(session_key, None)
    if dspex is None or (dspex.options.max_calls is None and dspex.options.max_cost is None):
        return
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    if worker not in (None, "gw0"):  # every worker collects the same: one works it out
        return
    from .upfront import budget_notice

    notice = budget_notice(session, dspex)
    if notice is None:
        return
    if worker is None:
        _say_budget(session.config, notice)
    else:
        from .xdist import write_budget_notice

        write_budget_notice(dspex.state_dir(), dspex.run_id, notice)


def _say_budget(config: pytest.Config, notice: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.ensure_newline()
        tr.write_line(notice, yellow=True, bold=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    if call.when == "call" and call.excinfo is not None and isinstance(call.excinfo.value, NotAnswered):
        # a MISS / LM ERROR item passes (the aggregate gate decides): its report is made as a pass's,
        # so no traceback is formatted for it (most of an LM error item's CPU) and --pdb does not stop there
        call.excinfo = None
    report = yield
    if call.when == "call":
        carried = item.stash.get(payload_key, None)
        if carried is not None:
            payload = carried.to_json()
            # JSON: travels with the report through xdist — as ASCII JSON text from a worker, so a lone
            # surrogate from a dataset row crosses execnet (which refuses it in a str) and comes back the same
            dspex = item.config.stash.get(session_key, None)
            if dspex is not None and dspex.is_worker:
                global _decoded
                text = json.dumps(payload)
                report.dspex = text  # type: ignore[attr-defined]
                # this process reads it next (``pytest_report_teststatus``, the terminal's): not decoded again
                _decoded = (text, payload)
            else:
                report.dspex = payload  # type: ignore[attr-defined]
            if payload.get("kind") == "example" and report.passed:
                miss_lines, outcome = _format_helpers()
                if outcome(payload["record"]) != "pass":  # -rA shows it under the item: expected vs got
                    report.sections.append(("dspex: " + outcome(payload["record"]), "\n".join(miss_lines(payload["record"]))))
    return report


@functools.cache
def _format_helpers() -> tuple[Callable[[Mapping[str, Any]], list[str]], Callable[[Mapping[str, Any]], str]]:
    """``reports._format``'s ``miss_lines`` and ``outcome``, imported at the first per-example report and
    kept (a relative import in the hook cost every item's report a few microseconds)."""
    from ..reports._format import miss_lines, outcome

    return miss_lines, outcome


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    aggregate = getattr(report, "dspex_aggregate", False)
    if aggregate:  # a failed gate, reported at the end (plugin/aggregate.py): counted, without a progress letter
        if report.when != "call":
            return ("", "", "")
        return ("failed", "", "") if aggregate == "reporting" else ("failed", "F", ("FAILED", {"red": True}))
    if report.when != "call" or not report.passed:
        return None
    payload = _payload(report)
    if not payload or payload.get("kind") != "example":
        return None
    record = payload["record"]
    kind = record.get("error_kind")
    if kind is not None and kind not in ("parse", "refused"):  # records.ANSWER_ERROR_KINDS: the model's answer
        return "lm_error", "e", ("LM ERROR", {"yellow": True})
    if record["score"] < 1.0:
        return "missed", "m", ("MISS", {"yellow": True})
    return None


@pytest.hookimpl(tryfirst=True)  # before JUnit writes its file (the per-example aggregates go in it)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    dspex = config.stash.get(session_key, None)
    if dspex is None:
        return
    collector = config.stash.get(_collector_key, None)
    from .interrupts import was_interrupted

    if was_interrupted(config):  # Ctrl-C twice: pytest's status may not say it (``interrupts``)
        exitstatus = pytest.ExitCode.INTERRUPTED
    try:
        if collector is not None:
            failed = collector.finish(_stopped(session, exitstatus, collector))
            if not dspex.is_worker:  # the selected tests by program: their goldens are in use, whatever they ended with
                programs = dspex.selected_programs
                folder = dspex.state_dir_if_made()
                if not programs and folder is not None:  # under xdist the controller collected nothing
                    from .xdist import read_selected_programs

                    programs = read_selected_programs(folder, dspex.run_id)
                collector.note_selected(programs)
                if collector.stopped:  # the tests that never gave a verdict, by program
                    collector.note_not_gated(programs)
                else:  # the tests that failed before their gate (a stale or missing golden, ...), by program
                    collector.note_failed_before_verdict(programs)
            if dspex.options.estimate:
                return  # an estimate: no gate, no golden, no report (the summary prints what a run would cost)
            for run in collector.runs.values() if collector.shard is None else ():  # a shard defers its gate
                config.hook.pytest_dspex_gate(program=run.program, verdict=run.verdict, result=run.result)
            from .aggregate import report_aggregates

            report_aggregates(config, collector)  # a failed gate is a failed test: counts, --lf, JUnit
            golden_failed = any(is_error for _, is_error in collector.golden_messages)
            if (failed or golden_failed) and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            from .outputs import add_junit_aggregates, write_reports

            controller = config.pluginmanager.get_plugin("dspex-controller")
            if controller is not None and controller.last_items:
                add_junit_aggregates(config, collector, controller.last_items)
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED and bool(collector.stopped)  # not: -x on the last test
            collector.written = write_reports(config, dspex, collector, interrupted=interrupted)  # never raises
    finally:
        dspex.close()
        from .._support.quick_exit import skip_final_collections

        skip_final_collections()  # the process ends soon: no full collection over everything it holds
        folder = dspex.state_dir_if_made()
        if not dspex.is_worker and folder is not None and config.pluginmanager.hasplugin("xdist"):
            from .xdist import read_chunks, read_selected_programs, remove_usage_errors

            read_chunks(folder, dspex.run_id, remove=True)
            remove_usage_errors(folder, dspex.run_id)
            read_selected_programs(folder, dspex.run_id, remove=True)


def _stopped(session: pytest.Session, exitstatus: int, collector: Any) -> str:
    """Why the session ended before every selected test ran ("" when it did not, as far as pytest knows)."""
    if collector.collect_errors:  # pytest stops there; xdist runs the rest: either way, not every test ran
        errors = sorted(collector.collect_errors)
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        return f"a collection error in {errors[0]}{more}: not every test ran"
    crashed = str(collector.crash_reason())
    if crashed:
        return crashed
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        # xdist ends a run stopped by -x/--maxfail as interrupted: its controller knows why
        dsession = session.config.pluginmanager.get_plugin("dsession")
        reason = getattr(dsession, "shouldstop", None)
        if isinstance(reason, str) and reason.startswith("stopping after"):
            return "" if _every_test_ran(session, collector) else f"the run stopped early: {reason}"
        return "the run was interrupted"
    for reason in (session.shouldfail, session.shouldstop):
        if reason and not _every_test_ran(session, collector):
            return f"the run stopped early: {reason}" if isinstance(reason, str) else "the run stopped early (-x)"
    return ""


def _every_test_ran(session: pytest.Session, collector: Any) -> bool:
    """Whether every selected test ended, as when ``-x`` stops on the last one: nothing was left out."""
    collected = collector.collected if collector.collected is not None else len(session.items)
    return collected > 0 and len(collector.ended) >= collected


def _interrupted_compile_line(config: pytest.Config, collector: Any) -> str | None:
    """Ctrl-C under xdist during a compile or re-baseline: the workers' "golden not written" is lost with
    them, but the controller is the goldens' one writer, so it knows: none it did not write changed."""
    from .interrupts import was_interrupted

    dspex = config.stash.get(session_key, None)
    if dspex is None or config.pluginmanager.get_plugin("dsession") is None or not was_interrupted(config):
        return None
    o = dspex.options
    names, what = (o.compile, "compile") if o.compile is not None else (o.rebaseline, "re-baseline")
    if names is None:
        return None
    written = [rel for rel, w in collector.golden_writes.items() if w.get("outcome") not in (None, "not written")]
    return interrupted_compile_text(what, names, written)


def interrupted_compile_text(what: str, names: Any, written: list[str]) -> str:
    """The controller's line after Ctrl-C: what it wrote before the interrupt, and that nothing else was.

    It does not know which programs were still compiling (the workers were), so it names none of them
    as interrupted: ``compile interrupted`` for all programs, ``compile of 'a', 'b' interrupted`` when named."""
    which = "" if "*" in names else " of " + ", ".join(repr(n) for n in sorted(names))
    if not written:
        return f"dspex: {what}{which} interrupted: no golden written in this run (the goldens are unchanged)"
    return (
        f"dspex: {what}{which} interrupted: written before the interrupt: {', '.join(sorted(written))}; "
        "no other golden written (the others are unchanged)"
    )


def _misses(tr: Any) -> None:
    """With ``-rA``, ``-rP`` or ``-rm``: each per-example miss (and LM error) with expected vs got.

    Their items passed (the aggregate decides), so pytest's own PASSES section does not list them."""
    chars = str(getattr(tr, "reportchars", ""))
    if not any(c in chars for c in "APm"):
        return
    reports = [r for cat in ("missed", "lm_error") for r in tr.stats.get(cat, ()) if getattr(r, "when", "") == "call"]
    if not reports:
        return
    tr.write_sep("=", "MISSES")
    for r in sorted(reports, key=lambda r: r.nodeid):
        tr.write_sep("_", r.head_line or r.nodeid)
        for name, content in r.sections:
            if name.startswith("dspex: "):
                tr.write_line(content)



def _rebaseline(golden: Mapping[str, Any]) -> bool:
    """A golden this run re-baselined, written or left untouched because nothing changed (its spend is the
    re-baseline's, not a compile's)."""
    return golden.get("outcome") == "rebaselined" or str(golden.get("reason") or "").startswith("re-baseline")

def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector = config.stash.get(_collector_key, None)
    if collector is None:
        return
    from .report import format_table, run_spend, spend_text

    rows = collector.all_rows()
    tr = terminalreporter
    dspex = config.stash.get(session_key, None)
    if dspex is not None and dspex.options.estimate:
        from .estimate import estimate_lines

        tr.write_sep("=", "dspex estimate (no LM call made)")
        o = dspex.options
        from ..lm.estimates import counting

        lines = estimate_lines(rows, priced=dspex.lms.priced(), max_calls=o.max_calls, max_cost=o.max_cost,
                               counting=counting(dspex.lms.model_name() or ""))  # fmt: skip
        for text, markup in lines:
            tr.write_line(text, **markup)
        return
    _misses(tr)
    unjudged = collector.unjudged_crashes()
    said_interrupted = _interrupted_compile_line(config, collector)
    died = dspex.lms.server_death if dspex is not None else None  # the embedded server, before the run's end
    if (not rows and not collector.goldens and not collector.report_problems and not unjudged and not said_interrupted
            and not died and not collector.not_gated and not collector.failed_before_verdict):  # fmt: skip
        return
    tr.write_sep("=", "dspex")
    if died:  # first: every "connection refused" above and below is this
        tr.write_line(f"dspex: {died}", red=True, bold=True)
    # goldens this run wrote: no comparison with them (it would compare the run with its own baseline)
    fresh = frozenset(p for p, g in collector.goldens.items() if g.get("outcome") in ("created", "updated", "rebaselined"))
    for line in format_table(rows, fresh) if rows else ():
        tr.write_line(line)
    for line in unjudged:  # a crash left a per-example test without one record: no row, still said
        tr.write_line(line, yellow=True)
    for program, tests in collector.not_gated.items():  # a stopped run: what it never gated, by name
        tr.write_line(f"{program}: not gated ({collector.stopped}): {', '.join(tests)} gave no verdict", yellow=True)
    for program, tests in collector.failed_before_verdict.items():  # no row: failed before its gate (T12-3)
        tr.write_line(f"{program}: no verdict: {', '.join(tests)} failed before its gate (see FAILURES)", red=True)
    # a failed gate is a failed test whose sentence is under FAILURES: said there, once (unless --tb=no hides it)
    shown_above = config.getoption("tbstyle", "auto") != "no"
    said = set()
    for run in collector.runs.values():
        if run.verdict is not None and run.result is not None and not run.verdict.passed:
            style = {"yellow": True} if run.verdict.incomplete else {"red": True, "bold": True}
            if not shown_above or run.verdict.incomplete:  # an incomplete run is no failed test: said here
                tr.write_line(run.verdict.headline(run.label, run.result.n, run.result.ci95), **style)
            said.add(run.test)
    from .report import cache_only_line, verdict_lines

    unsaid = [r for r in rows if not shown_above or r["verdict"].get("kind") == "incomplete"]
    for text in verdict_lines(unsaid, frozenset(said)):  # a failed whole-dataset test (its own failure says it)
        tr.write_line(text, red=True, bold=True)
    cached = cache_only_line(rows, collector.goldens.values())
    if cached:  # nothing was asked of the endpoint in this run: say so, once (issue 19)
        tr.write_line(cached, yellow=True)
    notes = dict.fromkeys(f"{row['program']}: {row['note']}" for row in rows if row.get("note"))
    for note in notes:  # a program's note, once (not once per test using it)
        tr.write_line(note, yellow=True)
    for row in rows:
        if row["verdict"].get("kind") == "deferred":  # a shard job: "shard 2/3: 340 of 1000 examples; ..."
            tr.write_line(f"{row['program']} [{row.get('mode', 'dataset')}]: {row['verdict']['reason']}")
    dspex = config.stash.get(session_key, None)
    # a program that samples on its own (an SDK call with its own temperature) makes repeats that disagree
    sampled = any(row.get("flaky") for row in rows)
    if dspex is not None and dspex.options.repeats > 1 and dspex.options.temperature == 0 and not sampled:
        tr.write_line(
            f"dspex: --dspex-repeats={dspex.options.repeats} at temperature 0: a greedy model gives every repeat "
            f"the same answer, so the repeats cost {dspex.options.repeats}x the calls and add nothing "
            "(sample with --dspex-temperature > 0, or drop --dspex-repeats)",
            yellow=True,
        )
    if dspex is not None and dspex.options.shard is None:
        from ..evaluation.sharding import ci_parallel_variables

        ci = ci_parallel_variables()
        if ci is not None:  # a parallel CI job whose LM gate is judged whole, on purpose (issue 19)
            tr.write_line(
                f"dspex: {ci} are set: not sharded, every example ran in this job "
                "(--dspex-shard=ci, or ini dspex_shard = ci, splits them across the parallel jobs)"
            )
    from .report import diffs_under_failures, gate_lines

    diffs_above = diffs_under_failures(rows, str(config.getoption("tbstyle", "auto")))  # a diff once: with its failure
    for text, style in gate_lines(rows, fresh, diffs_above):  # paired comparison with the golden, flaky examples
        tr.write_line(text, **style)
    written = [(p, g) for p, g in collector.goldens.items() if g.get("outcome")]
    for rel, g in sorted(written):
        extra = f" (selection {g['score']:.3f}, n={g['n']}, chosen: {g['chosen']})" if "score" in g else ""
        if extra and g["outcome"] == "kept":  # what this run chose and did not write, not what the file holds
            extra = f" (this run chose {g['chosen']}, selection {g['score']:.3f}, n={g['n']})"
        if g.get("compile_usage"):
            what = "re-baseline" if _rebaseline(g) else "compile"
            extra += f"; {what} spent {spend_text(g['compile_usage'])}"
        if g.get("reason") and (g["outcome"] in ("kept", "updated", "rebaselined") or str(g["reason"]).startswith(("re-baseline", "same demos and instructions as the golden file, on the same model", "same demos and instructions as the golden file, chosen again"))):
            extra += f": {g['reason']}"  # why compile replaced or kept it
        tr.write_line(f"golden {g['outcome']}: {rel}{extra}", green=g["outcome"] != "kept", yellow=g["outcome"] == "kept")
        if g.get("demos") and g["outcome"] in ("created", "updated"):  # what a reviewer of the golden should know
            from ..optimize.review import summary_lines

            for line in summary_lines(g["demos"]):
                tr.write_line(f"  {line}", yellow=line.lstrip().startswith("!"))
        if g.get("provenance"):
            tr.write_line(f"  {g['provenance']['text']}")
        if g.get("near_threshold") and g["outcome"] in ("created", "updated", "rebaselined"):
            tr.write_line(f"  {g['near_threshold']}", yellow=True)
        if g.get("replaced"):  # the new baseline paired with the one it replaced
            from ..evaluation.comparison import Comparison
            from ..evaluation.gates import comparison_text, gate_would_fail

            c = Comparison.from_json(g["replaced"])
            kept = g["outcome"] == "kept" or (g["outcome"] == "unchanged" and not _rebaseline(g))
            tr.write_line(f"  {'this run' if kept else 'new baseline'} vs the golden's baseline: {comparison_text(c)}",
                          red=gate_would_fail(c), green=c.verdict == "improved")  # fmt: skip
    if said_interrupted:
        tr.write_line(said_interrupted, yellow=True)
    for text, is_error in collector.golden_messages:  # goldens compiled on workers, written here
        tr.write_line(text, red=is_error, yellow=not is_error)
    for rel in collector.unused_goldens():
        tr.write_line(f"golden unused: {rel} (no test used it in this run)", yellow=True)
    total = run_spend(rows, collector.goldens.values())
    if total is not None:  # the table's columns are the gates' alone: with a compile, the run's whole spend
        what = "re-baseline" if all(_rebaseline(g) for _, g in written) else "compile"
        tr.write_line(f"dspex LM spend in this run (gates and {what}): {spend_text(total)}")
    if dspex is not None:
        from ..lm.coordinator import describe

        limits = describe(dspex.limits_stats(), verbose=config.getoption("verbose", 0) > 0)
        if limits is not None and dspex.lms.serving is not None:  # one process: its limits shared with the loopback's serving process
            import re

            limits = re.sub(r"^dspex: LM limits shared by \d+ workers?:", "dspex: LM limits shared with the loopback's serving process:", limits)
        if limits is not None:  # what the run's shared LM limits did (xdist)
            tr.write_line(limits)
    for what, path in getattr(collector, "written", ()):
        if path not in collector.reports_said_incomplete:  # its line below says where it is, and that it is incomplete
            tr.write_line(f"dspex {what} report: {path}")
    for text, is_error in collector.report_problems:  # a report that could not be written: one line each
        tr.write_line(text, red=is_error, yellow=not is_error)
