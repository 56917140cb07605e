"""What the controller writes at session end: the JSON, HTML and markdown reports, and JUnit's
per-example aggregate.

All three files come from one report dict (``report.report_json``), built once however many are
asked for. Their paths are relative to the invocation directory (like ``--junitxml``); every path
inside them is relative to the rootdir. The markdown summary is also appended to
``$GITHUB_STEP_SUMMARY`` whenever that is set and the run evaluated a program — what GitHub users
expect from a test tool on a job page; an empty ``GITHUB_STEP_SUMMARY`` in the step's ``env``
turns it off. A shard's partial summary is not appended (``combine`` writes the whole one).

JUnit: a whole-dataset test records its program's properties itself (``record_property``). A
per-example test is judged here, after its items reported, so the aggregate's properties
(``dspex_aggregate_score``, ``dspex_aggregate_verdict`` …: the program's properties renamed so
they do not collide with the item's own ``dspex_score``) go on the test case of the item with the
highest example index — the same item with and without ``-n``. A failed aggregate is also a
``<failure>`` of that test case (its message the gate's headline), so a CI page that lists JUnit
failures shows it; the suite's counts say one more failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .report import Collector
    from .session import DspexSession

__all__ = ["add_junit_aggregates", "aggregate_properties", "write_reports"]


def _fail_case(xml: Any, case: Any, props: Any, run: Any) -> None:
    """A failed aggregate as a ``<failure>`` of its test case (CI pages list failures, not properties).

    The case passed as an item, so the suite's counts move one test from passed to failed.
    """
    import xml.etree.ElementTree as ET

    from _pytest.junitxml import bin_xml_escape

    verdict = run.verdict
    failure = ET.Element("failure", message=bin_xml_escape(verdict.headline(run.label, run.result.n)))
    failure.text = bin_xml_escape("\n".join([verdict.reason, *verdict.details]))
    case.insert(list(case).index(props) + 1, failure)
    xml.stats["failure"] += 1
    xml.stats["passed"] = max(0, xml.stats["passed"] - 1)


def _target(config: pytest.Config, path: Path) -> Path:
    return path if path.is_absolute() else Path(config.invocation_params.dir) / path


def write_reports(config: pytest.Config, dspex: DspexSession, collector: Collector) -> list[tuple[str, Path]]:
    """Write the reports the options ask for; ``(what, path)`` of each file written."""
    options = dspex.options
    step_summary = bool(os.environ.get("GITHUB_STEP_SUMMARY"))
    wanted = (options.report, options.html, options.markdown)
    if all(p is None for p in wanted) and not (step_summary and (collector.rows or collector.runs)):
        return []
    from .._atomic import atomic_write_json
    from .report import report_json

    model = {"model": dspex.lms.model_name(), "base_url": dspex.lms.redacted_base_url()}
    shard = options.shard.to_json() if options.shard is not None else None
    report = report_json(collector, model=model, shard=shard)
    written: list[tuple[str, Path]] = []
    if options.report is not None:
        path = _target(config, options.report)
        atomic_write_json(path, report)
        written.append(("json", path))
    if options.html is not None:
        from ..reports import write_html

        written.append(("html", write_html(report, _target(config, options.html))))
    append = step_summary and bool(report["programs"]) and not report.get("shard")
    if options.markdown is not None or append:
        from ..reports import write_markdown

        md_path = _target(config, options.markdown) if options.markdown is not None else None
        write_markdown(report, md_path, step_summary=append)
        if md_path is not None:
            written.append(("markdown", md_path))
    return written


def aggregate_properties(row: dict[str, Any]) -> list[tuple[str, str]]:
    """A per-example test's aggregate, as JUnit properties that do not collide with the item's own."""
    from ..reports import program_properties

    return [
        (n if n == "dspex_program" else "dspex_aggregate_" + n.removeprefix("dspex_"), v)
        for n, v in program_properties(row)
    ]


def add_junit_aggregates(config: pytest.Config, collector: Collector, last_items: dict[str, tuple[int, str]]) -> bool:
    """Put each judged per-example run's properties on its last item's JUnit test case.

    ``last_items``: per-example test key → (highest example index seen, that item's node id). Runs
    before JUnit writes its file (``pytest_sessionfinish`` is ``tryfirst``); the test cases are
    finalized by then, so the properties are added to their XML elements. False when there is no
    JUnit file or pytest's JUnit internals changed (then the aggregate is in the JSON/HTML only).
    """
    try:
        from _pytest.junitxml import bin_xml_escape, mangle_test_address, xml_key
    except ImportError:  # pragma: no cover - pytest internals moved
        return False
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return False
    try:
        cases: dict[tuple[str, str], Any] = {}
        for reporter in xml.node_reporters_ordered:
            element = reporter.to_xml()
            cases.setdefault((element.get("classname", ""), element.get("name", "")), element)
        import xml.etree.ElementTree as ET

        for run in collector.runs.values():
            if run.verdict is None or run.test not in last_items:
                continue
            names = mangle_test_address(last_items[run.test][1])
            classnames = names[:-1]
            if xml.prefix:
                classnames.insert(0, xml.prefix)
            case = cases.get((".".join(classnames), names[-1]))
            if case is None:
                continue
            props = case.find("properties")
            if props is None:
                props = ET.Element("properties")
                case.insert(0, props)
            for name, value in aggregate_properties(run.row()):
                props.append(ET.Element("property", name=name, value=bin_xml_escape(value)))
            if not run.verdict.passed and not any(case.find(tag) is not None for tag in ("failure", "error", "skipped")):
                _fail_case(xml, case, props, run)
    except (AttributeError, TypeError, KeyError):  # pragma: no cover - pytest internals changed
        return False
    return True
