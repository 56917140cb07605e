"""One run pipeline: ``ProgramRun`` judges a program's records into its verdict and row for every path
(whole-dataset test, per-example items, shard combine), ``RunDocument`` is the one report document, and
every output format is one entry of ``reports.formats``."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.evaluation.gates import DEFAULT_MAX_ERROR_RATE
from pytest_dspex.evaluation.records import ExampleRecord
from pytest_dspex.evaluation.result import EvaluationResult
from pytest_dspex.evaluation.sharding import Shard, shard_of
from pytest_dspex.plugin.options import OPTIONS
from pytest_dspex.reports.combine import combine
from pytest_dspex.reports.document import RunDocument
from pytest_dspex.reports.formats import FORMATS, add_format_arguments, write_formats
from pytest_dspex.reports.run import COMPUTED, ProgramRun, RunSettings


def rec(i: int, score: float, error_kind: str | None = None) -> ExampleRecord:
    return ExampleRecord.from_json(ExampleRecord(
        index=i, key=f"ex-{i}", inputs={"q": f"q{i}"}, expected={"a": "x"},
        prediction=None if error_kind else {"a": "x" if score else "y"}, score=score,
        error_kind=error_kind, error="boom" if error_kind else None,
        usage={"calls": 1, "cache_hits": 0, "prompt_tokens": 5, "completion_tokens": 1, "cost": 0.0},
    ).to_json())  # fmt: skip


def settings(**over: Any) -> RunSettings:
    base: dict[str, Any] = dict(
        program="triage", mode="per-example", test="tests/test_t.py::test_each", dataset="data/dev.jsonl",
        metric="exact", threshold=0.7, tolerance=0.05, alpha=0.05, max_error_rate=0.1, dataset_size=10,
    )  # fmt: skip
    return RunSettings(**(base | over))


def test_settings_round_trip_through_a_row_and_keep_fields_they_do_not_know() -> None:
    s = settings(note="a note", prompts={"p": [{"role": "user", "content": "{q}"}]}, provenance={"text": "held-out"},
                 extra={"per_example_cost_p95": 0.002})  # a newer writer's field  # fmt: skip
    assert RunSettings.from_json(s.to_json()) == s
    run = ProgramRun(s)
    run.add(rec(i, 1.0) for i in range(10))
    run.judge()
    row = run.row()
    assert row["golden_provenance"] == {"text": "held-out"} and row["per_example_cost_p95"] == 0.002
    assert RunSettings.from_json(row) == s  # the figures of the row are not settings
    # every key of a row is a setting or computed from the records (a new computed key belongs in COMPUTED)
    assert set(row) <= set(s.to_json()) | COMPUTED
    stale = RunSettings.from_json(row | {"per_example_cost_p95": 0.002})
    stale.extra["score"] = 0.0  # carried along by mistake: the records' figure still wins
    again = ProgramRun(stale)
    again.add(rec(i, 1.0) for i in range(10))
    again.judge()
    assert again.row()["score"] == 1.0
    assert RunSettings("p").max_error_rate == DEFAULT_MAX_ERROR_RATE


def test_a_run_is_judged_only_whole_and_says_why_not() -> None:
    full = ProgramRun(settings())
    full.add(rec(i, 1.0 if i < 8 else 0.0) for i in range(10))
    assert full.judge().passed and full.row()["n"] == 10

    cut = ProgramRun(settings())
    cut.add(rec(i, 1.0) for i in range(6))
    verdict = cut.judge(stopped="the run stopped early (-x)")
    assert verdict.kind == "incomplete" and not verdict.passed and not cut.selection
    assert "6 of 10 examples ran (the run stopped early (-x))" in verdict.reason

    chosen = ProgramRun(settings(), selected=6)
    chosen.add(rec(i, 1.0) for i in range(6))
    assert chosen.judge().kind == "incomplete" and chosen.selection  # the user's -k: no failure of its own

    shard = ProgramRun(settings(), shard=Shard(2, 3), expected=4)  # a shard job's whole share: deferred
    shard.add(rec(i, 0.0) for i in range(4))
    verdict = shard.judge()
    assert verdict.passed and verdict.kind == "deferred" and "shard 2/3: 4 of 10 examples" in verdict.reason


def test_an_evaluations_own_result_keeps_its_accounting() -> None:
    records = [rec(i, 1.0) for i in range(10)]
    result = EvaluationResult.from_records(records, program="triage", metric="exact")
    result.usage.retries = 3  # the LM meter's figures, not the records' sums
    run = ProgramRun(settings(mode="dataset"))
    run.judge(result=result)
    assert run.row()["usage"]["retries"] == 3 and len(run.records) == 10


def test_combined_shards_give_the_row_of_the_whole_run() -> None:
    records = [rec(i, 1.0 if i % 4 else 0.0) for i in range(40)]
    whole = ProgramRun(settings(mode="dataset", dataset_size=40, golden=None))
    whole.add(records)
    whole.judge()
    expected = whole.row()
    reports = []
    for k in (1, 2):
        part = ProgramRun(settings(mode="dataset", dataset_size=40, golden=None), shard=Shard(k, 2))
        part.add(r for r in records if shard_of(r.key, 2) == k)
        part.expected = len(part.records)
        part.judge()
        reports.append({"shard": {"index": k, "count": 2}, "programs": [part.row()]})
    [merged] = combine(reports)["programs"]
    for key in ("score", "n", "ci95", "errors", "verdict", "comparison", "records", "threshold", "dataset_size"):
        assert merged[key] == expected[key], key


def test_the_document_round_trips_and_its_verdict_is_computed() -> None:
    rows = [{"program": "a", "verdict": {"passed": True, "kind": "ok"}}, {"program": "b", "verdict": {"passed": False, "kind": "incomplete"}}]
    doc = RunDocument.build(rows, goldens={}, unused_goldens=[], model={"model": "m"}, shard=None, root=Path("/nonexistent"))
    data = doc.to_json()
    assert data["passed"] is False and data["complete"] is False and data["git_commit"] is None
    assert RunDocument.from_json(data | {"future_key": 1}).to_json() == data | {"future_key": 1}
    assert RunDocument().to_json()["passed"] is False  # a run that evaluated nothing passed nothing


def test_every_format_is_an_option_of_the_plugin_and_of_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = {name for name, *_ in OPTIONS}
    assert {f.option for f in FORMATS.values() if f.plugin} <= names and {"report", "html", "markdown"} <= names
    parser = argparse.ArgumentParser()
    add_format_arguments(parser)
    run = ProgramRun(settings(dataset_size=None))
    run.add(rec(i, 0.0) for i in range(3))
    run.judge()
    doc = RunDocument(programs=[run.row()]).to_json()
    args = parser.parse_args([f"--{f.option}={tmp_path / f.name}" for f in FORMATS.values()])
    assert write_formats(doc, args) == (False, [])  # nothing to stdout, every format written
    assert json.loads((tmp_path / "json").read_text()) == doc
    assert "triage" in (tmp_path / "html").read_text() and "triage" in (tmp_path / "markdown").read_text()
    case = ET.parse(tmp_path / "junit").getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None
    assert write_formats(doc, parser.parse_args(["--markdown=-"])) == (True, [])
    assert "triage" in capsys.readouterr().out
