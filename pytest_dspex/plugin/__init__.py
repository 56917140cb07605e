"""The pytest plugin (entry point ``dspex``). Hooks stay thin: state lives in ``DspexSession``.

Importing this module imports only pytest and the small option/marker modules, so a project
that installs pytest-dspex but does not use it pays (almost) nothing at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .fixtures import dspex_evaluate, dspex_example, dspex_lm, dspex_load_dataset, dspex_predict
from .markers import MARKERS, dataset_path, example_id, metric_spec, program_spec
from .options import add_options, resolve
from .session import DspexSession, session_key

__all__ = ["dspex_evaluate", "dspex_example", "dspex_lm", "dspex_load_dataset", "dspex_predict"]

_collector_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    session = DspexSession(config, resolve(config))
    config.stash[session_key] = session
    if not session.is_worker:
        from .report import Collector

        collector = Collector()
        config.stash[_collector_key] = collector
        config.pluginmanager.register(_ControllerHooks(Path(config.rootpath), collector), "dspex-controller")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(session), "dspex-xdist")


class _ControllerHooks:
    """On the controller (or the only process): gathers what every test report carries."""

    def __init__(self, rootpath: Path, collector: Any) -> None:
        self.rootpath = rootpath
        self.collector = collector

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            fspath = str(self.rootpath / report.location[0])
            self.collector.test_files.add(fspath)
            self.collector.add(report.nodeid, fspath, report.user_properties)


class _XdistHooks:
    """Registered only when pytest-xdist is present: hands the run id to the workers."""

    def __init__(self, session: DspexSession) -> None:
        self.session = session

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dspex_run_id"] = self.session.run_id
        node.workerinput["dspex_owner_pid"] = os.getpid()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    node = metafunc.definition
    if not any(node.get_closest_marker(m) for m in ("dspex_program", "dspex_metric", "dspex_dataset")):
        return
    base = Path(node.path).parent
    spec = program_spec(node, base)
    metric_spec(node)
    marked = dataset_path(node, base)
    if "dspex_example" not in metafunc.fixturenames:
        return
    if marked is None or spec is None:
        pytest.fail(f"{node.nodeid}: dspex_example needs @pytest.mark.dspex_dataset(...) and @pytest.mark.dspex_program(...)", pytrace=False)
    from .._exceptions import DatasetError
    from .fixtures import dataset_cache

    try:
        examples = dataset_cache(marked[0], spec.input_keys, marked[1])
    except DatasetError as exc:
        pytest.fail(f"{node.nodeid}: {exc}", pytrace=False)
    ids = [example_id(ex, i) for i, ex in enumerate(examples)]
    metafunc.parametrize("dspex_example", range(len(examples)), indirect=True, ids=ids)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.when != "call" or not report.passed:
        return None
    for key, value in report.user_properties:
        if key == "dspex_example" and isinstance(value, dict) and not value.get("error_kind") and value.get("score", 1.0) < 1.0:
            return "missed", "m", ("MISS", {"yellow": True})
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    dspex = config.stash.get(session_key, None)
    if dspex is None:
        return
    collector = config.stash.get(_collector_key, None)
    try:
        if collector is not None:
            failed = collector.finish()
            for agg in collector.aggregates.values():
                config.hook.pytest_dspex_gate(program=agg.program, verdict=agg.verdict, result=agg)
            if failed and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if dspex.options.report is not None:
                from .._atomic import atomic_write_json

                path = dspex.options.report
                path = path if path.is_absolute() else Path(config.invocation_params.dir) / path
                atomic_write_json(path, _report(collector))
    finally:
        dspex.close()


def _report(collector: Any) -> dict[str, Any]:
    from .. import __version__

    rows = collector.all_rows()
    return {
        "plugin_version": __version__,
        "programs": rows,
        "goldens": collector.goldens,
        "unused_goldens": collector.unused_goldens(collector.test_files),
        "passed": all(r.get("passed") for r in rows),
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector = config.stash.get(_collector_key, None)
    if collector is None:
        return
    from .report import format_table

    rows = collector.all_rows()
    tr = terminalreporter
    if not rows and not collector.goldens:
        return
    tr.write_sep("=", "dspex")
    for line in format_table(rows):
        tr.write_line(line)
    for agg in collector.aggregates.values():
        if agg.verdict is not None and not agg.verdict.passed:
            tr.write_line(agg.verdict.headline(f"{agg.program} on {agg.dataset}", agg.n, agg.ci95()), red=True, bold=True)
    for row in rows:
        if row.get("note"):
            tr.write_line(f"{row['program']}: {row['note']}", yellow=True)
    written = [(p, g) for p, g in collector.goldens.items() if g.get("outcome")]
    for path, g in sorted(written):
        rel = os.path.relpath(path, config.rootpath)
        extra = f" (validation {g['score']:.3f}, n={g['n']}, chosen: {g['chosen']})" if "score" in g else ""
        tr.write_line(f"golden {g['outcome']}: {rel}{extra}", green=g["outcome"] != "kept", yellow=g["outcome"] == "kept")
    unused = collector.unused_goldens(collector.test_files)
    for path in unused:
        tr.write_line(f"golden unused: {os.path.relpath(path, config.rootpath)} (no test used it in this run)", yellow=True)
