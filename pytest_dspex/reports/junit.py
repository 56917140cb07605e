"""JUnit XML: properties for a program's gate and for one example, and the ``junit`` report format.

The plugin passes them to ``record_property`` (``item.user_properties``), so CI dashboards that read
JUnit XML show the score, its interval, the delta against the golden and the verdict::

    for name, value in program_properties(row):
        item.user_properties.append((name, value))

Per example, ``dspex_outcome`` tells a miss (a wrong or unparseable answer, scored below 1) from an
error (no answer to score: the LM was unreachable, timed out, the budget ran out, the program or
the metric raised); ``dspex_error_kind`` names which.

In a pytest run, pytest's own ``--junitxml`` writes the file and these properties go on its test cases
(a per-example test's aggregate as ``aggregate_properties``); ``render_junit`` is the ``junit`` format of
a report document (``python -m pytest_dspex combine/report --junit``): one test case per program gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._format import ProgramView, fields_text, fmt_ci, fmt_delta, fmt_interval, outcome, record_json, split_expected

__all__ = ["aggregate_properties", "example_properties", "program_properties", "render_junit"]


def _num(value: Any) -> str:
    return f"{float(value):.6g}"


def program_properties(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``dspex_score``, ``dspex_ci95``, ``dspex_n``, ``dspex_errors``, ``dspex_verdict`` and, with a
    golden, ``dspex_golden_score`` and ``dspex_delta`` (plus ``dspex_delta_ci95``, ``dspex_p_value``,
    ``dspex_comparison``, ``dspex_regressions``, ``dspex_fixes`` from the paired comparison) and
    ``dspex_cost`` when the row has usage."""
    p = ProgramView(row)
    out: list[tuple[str, str]] = [("dspex_program", p.name)]
    if row.get("score") is not None:
        out.append(("dspex_score", _num(row["score"])))
    if row.get("ci95"):
        out.append(("dspex_ci95", fmt_ci(row["ci95"], 4)))
    if row.get("n") is not None:
        out.append(("dspex_n", str(int(row["n"]))))
    if row.get("threshold") is not None:
        out.append(("dspex_threshold", _num(row["threshold"])))
    golden = p.baseline if p.baseline is not None else row.get("golden_score")  # the delta's golden (shared examples)
    if golden is not None:
        out.append(("dspex_golden_score", _num(golden)))
    if p.delta is not None:
        out.append(("dspex_delta", fmt_delta(p.delta, 4)))
    c = p.comparison
    if c is not None:
        if c.get("delta_ci95"):
            out.append(("dspex_delta_ci95", fmt_interval(c["delta_ci95"], 4)))
        if c.get("p_value") is not None:
            out.append(("dspex_p_value", _num(c["p_value"])))
        if c.get("verdict"):
            out.append(("dspex_comparison", str(c["verdict"])))
        out.append(("dspex_regressions", str(len(c.get("regressions") or []))))
        out.append(("dspex_fixes", str(len(c.get("fixes") or []))))
        if c.get("underpowered"):
            out.append(("dspex_underpowered", f"needs n >= {c.get('needed_n')}" if c.get("needed_n") else "true"))
    out.append(("dspex_errors", str(p.errors)))
    if (row.get("usage") or {}).get("cost") is not None:
        out.append(("dspex_cost", _num(row["usage"]["cost"])))
    verdict = p.verdict
    # a shard's deferred gate "passed" only in that it does not fail the job: it is no pass
    out.append(("dspex_verdict", "pass" if p.passed and not p.deferred else str(verdict.get("kind") or "fail")))
    if (not p.passed or p.deferred) and verdict.get("reason"):
        out.append(("dspex_verdict_reason", str(verdict["reason"])))
    return out


def aggregate_properties(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A per-example test's aggregate, as properties that do not collide with its items' own."""
    return [
        (n if n == "dspex_program" else "dspex_aggregate_" + n.removeprefix("dspex_"), v) for n, v in program_properties(row)
    ]


def render_junit(document: Mapping[str, Any]) -> str:
    """A JUnit XML file with one test case per program gate, its figures as properties."""
    import xml.etree.ElementTree as ET

    programs = list(document.get("programs") or [])
    failures = sum(1 for p in programs if not (p.get("verdict") or {}).get("passed"))
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites, "testsuite", name="pytest-dspex combine", tests=str(len(programs)), failures=str(failures), errors="0"
    )
    for p in programs:
        case = ET.SubElement(suite, "testcase", classname=str(p.get("test") or "dspex"), name=str(p.get("program")))
        props = ET.SubElement(case, "properties")
        for name, value in program_properties(p):
            ET.SubElement(props, "property", name=name, value=value)
        verdict = p.get("verdict") or {}
        if not verdict.get("passed"):
            fail = ET.SubElement(case, "failure", message=str(verdict.get("reason") or "gate failed"))
            fail.text = str(verdict.get("reason") or "")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def example_properties(record: Any) -> list[tuple[str, str]]:
    """``dspex_key``, ``dspex_score``, ``dspex_outcome`` (``pass``/``miss``/``error``), for a miss or an
    error ``dspex_expected`` and ``dspex_got`` (the expected outputs and the answer; ``-`` without one)
    and, when the example failed with one, ``dspex_error_kind`` and ``dspex_error``; ``dspex_repeats``
    with repeats.

    ``record`` is an ``ExampleRecord`` or its JSON form."""
    rec = record_json(record)
    out: list[tuple[str, str]] = [
        ("dspex_key", str(rec.get("key", rec.get("index", "")))),
        ("dspex_score", _num(rec.get("score") or 0.0)),
        ("dspex_outcome", outcome(rec)),
    ]
    if rec.get("repeats"):
        out.append(("dspex_repeats", " ".join(_num(s) for s in rec["repeats"])))
    if out[2][1] != "pass":  # a miss or an error: what was expected and what came back
        expected, _meta = split_expected(rec)
        out.append(("dspex_expected", fields_text(expected)))
        predicted = rec.get("prediction") or {}
        out.append(("dspex_got", fields_text({k: predicted[k] for k in expected if k in predicted} or predicted) or "-"))
    if rec.get("error_kind"):
        out.append(("dspex_error_kind", str(rec["error_kind"])))
        if rec.get("error"):
            out.append(("dspex_error", str(rec["error"])))
    return out
