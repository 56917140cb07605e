"""What the controller writes at session end: the JSON, HTML and markdown reports, and JUnit's
per-example aggregate.

Every file is one format of the run's document (``collector.report_json``: ``reports.document``), built
once however many are asked for, and written through the format registry (``reports.formats``: each
``--dspex-<option>`` names one). Their paths are relative to the invocation directory (like ``--junitxml``); every path
inside them is relative to the rootdir. The markdown summary is also appended to
``$GITHUB_STEP_SUMMARY`` whenever that is set and the run evaluated a program — what GitHub users
expect from a test tool on a job page; an empty ``GITHUB_STEP_SUMMARY`` in the step's ``env``
turns it off. A shard's partial summary is not appended (``combine`` writes the whole one).

JUnit: a whole-dataset test records its program's properties itself (``record_property``). A
per-example test is judged here, after its items reported, so the aggregate's properties
(``dspex_aggregate_score``, ``dspex_aggregate_verdict`` …: the program's properties renamed so
they do not collide with the item's own ``dspex_score``) go on the test case of the item with the
highest example index — the same item with and without ``-n``. A failed aggregate is a test case
of its own instead (``aggregate``: ``<module>::<test function>``, with the ``<failure>`` and these
properties), so JUnit's failure count agrees with the terminal's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._support.atomic import describe_os_error

if TYPE_CHECKING:
    from .collector import Collector
    from .session import DspexSession

__all__ = ["add_junit_aggregates", "describe_os_error", "write_reports"]


def _target(config: pytest.Config, path: Path) -> Path:
    return path if path.is_absolute() else Path(config.invocation_params.dir) / path


def write_reports(
    config: pytest.Config, dspex: DspexSession, collector: Collector, *, interrupted: bool = False
) -> list[tuple[str, Path]]:
    """Write the reports the options ask for; ``(what, path)`` of each file written.

    Never raises: a report that cannot be written (a path under a file, an unwritable folder, a
    ``GITHUB_STEP_SUMMARY`` naming a missing folder) is one line in ``collector.report_problems``,
    shown under the dspex table, and the other reports, the table and the failures are still shown.
    An interrupted run (Ctrl-C) writes its report (``"complete": false``, ``"passed": false``: what ran
    before the interruption), so no earlier run's verdict stays the newest file; a report already there
    is kept beside it as ``<name>.prev`` (copied atomically first), and a line says so.
    """
    outputs = dspex.options.outputs
    step_summary = bool(os.environ.get("GITHUB_STEP_SUMMARY"))
    if not outputs and not (step_summary and (collector.rows or collector.runs)):
        return []
    from ..reports.formats import FORMATS
    from .collector import report_json

    model = {"model": dspex.lms.model_name(), "base_url": dspex.lms.redacted_base_url()}
    shard = dspex.options.shard.to_json() if dspex.options.shard is not None else None
    report = report_json(collector, model=model, shard=shard)
    written: list[tuple[str, Path]] = []

    # why the report is incomplete: Ctrl-C, -x/--maxfail, a collection error (one line says it, not two)
    reason = getattr(collector, "stopped", "") or ("the run was interrupted" if interrupted else "")

    def attempt(what: str, path: Path | None, write: Callable[[], object]) -> None:
        if path is not None and reason:
            said = ""
            if path.is_file():
                try:
                    said = f"; the previous report is kept as {keep_previous(path)}"
                except OSError as exc:
                    said = f"; the previous report could not be kept ({describe_os_error(exc)})"
            collector.report_problems.append((
                f"dspex {what} report: {reason}, so {path} holds an incomplete report "
                f"(complete: false, passed: false){said}", False,
            ))  # fmt: skip
            collector.reports_said_incomplete.add(path)
        try:
            write()
        except (OSError, UnicodeError, ValueError) as exc:
            where = f"{path}" if path is not None else f"$GITHUB_STEP_SUMMARY ({os.environ.get('GITHUB_STEP_SUMMARY')})"
            collector.report_problems.append((f"dspex {what} report not written: {where}: {describe_os_error(exc)}", True))
            return
        if path is not None:
            written.append((what, path))

    for name, path in outputs.items():
        target = _target(config, path)
        attempt(name, target, partial(FORMATS[name].write, report, target))
    if step_summary and report["programs"] and not report.get("shard"):  # a shard's is not the job's: combine's is
        from ..reports.markdown import append_step_summary, render_markdown

        attempt("step summary", None, lambda: append_step_summary(render_markdown(report)))
    return written


def keep_previous(path: Path) -> Path:
    """Copy ``path`` to ``<path>.prev`` atomically (a temporary file beside it, then a rename); the copy."""
    import tempfile

    prev = path.with_name(path.name + ".prev")
    fd, tmp = tempfile.mkstemp(prefix=f".{prev.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(path.read_bytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, prev)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return prev


def add_junit_aggregates(config: pytest.Config, collector: Collector, last_items: dict[str, tuple[int, str]]) -> bool:
    """Put each judged per-example run's properties on its last item's JUnit test case.

    ``last_items``: per-example test key → (highest example index seen, that item's node id). Runs
    before JUnit writes its file (``pytest_sessionfinish`` is ``tryfirst``); the test cases are
    finalized by then, so the properties are added to their XML elements. False when there is no
    JUnit file or pytest's JUnit internals changed (then the aggregate is in the JSON/HTML only).
    """
    try:
        # pytest's JUnit writer is private: the properties of a test judged after its last item ran
        # (the aggregate) have no public route onto that item's test case; without it, JSON/HTML keep them
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

        from ..reports.junit import aggregate_properties
        from .aggregate import fails_on_its_own

        for run in collector.runs.values():
            if run.verdict is None or run.test not in last_items or fails_on_its_own(run):
                continue  # a failed gate has a test case of its own (``aggregate``), with these properties
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
            for name, value in aggregate_properties(run.row()):  # the same figures as the junit format's
                props.append(ET.Element("property", name=name, value=bin_xml_escape(value)))

    except (AttributeError, TypeError, KeyError):  # pragma: no cover - pytest internals changed
        return False
    return True
