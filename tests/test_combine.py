"""Shard reports combine into the verdict one unsharded run would give; bad sets of shards are refused."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.evaluation.comparison import compare
from pytest_dspex.evaluation.gates import judge, paired_outcomes
from pytest_dspex.evaluation.records import ExampleRecord
from pytest_dspex.evaluation.result import EvaluationResult
from pytest_dspex.evaluation.sharding import Shard, shard_of
from pytest_dspex.reports.combine import CombineError, combine, combine_files, main

VERDICT_FIELDS = ("score", "n", "ci95", "errors", "errors_by_kind", "infra_errors", "verdict", "comparison")


def record(i: int, score: float, error_kind: str | None = None) -> dict[str, Any]:
    return ExampleRecord(
        index=i,
        key=f"ex-{i}",
        inputs={"message": f"message {i}"},
        expected={"team": "billing"},
        prediction=None if error_kind else {"team": "billing" if score else "technical"},
        score=score,
        error_kind=error_kind,
        error=f"{error_kind}: boom" if error_kind else None,
        latency_s=0.01,
        usage={"calls": 1, "cache_hits": i % 2, "prompt_tokens": 10, "completion_tokens": 2, "cost": 0.001},
    ).to_json()


def program_entry(records: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "program": "triage",
        "mode": "dataset",
        "dataset": "tests/data/triage.jsonl",
        "test": "tests/test_triage.py::test_triage",
        "metric": "team_matches",
        "threshold": 0.5,
        "tolerance": 0.05,
        "golden": "tests/__dspex__/test_triage/triage.json",
        "golden_score": 0.9,
        "flaky": [],
        "prompts": {"predict": [{"role": "user", "content": "{message}"}]},
        "records": records,
        "usage": {"calls": len(records), "cache_hits": 0, "prompt_tokens": 10 * len(records), "completion_tokens": 2 * len(records), "cost": 0.001 * len(records)},
    }  # fmt: skip
    entry.update(over)
    return entry


def report(entries: list[dict[str, Any]], shard: Shard | None = None) -> dict[str, Any]:
    return {
        "plugin_version": "0.1.0",
        "created": "2026-11-26T01:00:00+00:00",
        "rootdir": ".",
        "git_commit": "abc123",
        "model": {"model": "fake-model", "base_url": "http://127.0.0.1:1/v1"},
        "passed": True,
        "shard": shard.to_json() if shard else None,
        "programs": entries,
        "goldens": {},
        "unused_goldens": [],
    }


def split(records: list[dict[str, Any]], n: int, **over: Any) -> list[dict[str, Any]]:
    """What n shard jobs write: each with the records its shard owns."""
    return [
        report([program_entry([r for r in records if shard_of(r["key"], n) == k], **over)], Shard(k, n))
        for k in range(1, n + 1)
    ]


def write_golden(root: Path, outcomes: dict[str, float] | None, score: float = 0.9) -> None:
    path = root / "tests/__dspex__/test_triage/triage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    validation: dict[str, Any] = {"score": score, "n": len(outcomes or {})}
    if outcomes is not None:
        validation["examples"] = outcomes  # schema 2: per-example outcomes; without them, a schema-1 golden
    golden = {"schema_version": 2 if outcomes is not None else 1, "program": "triage", "predictors": {},
              "scores": {"validation": validation}}  # fmt: skip
    path.write_text(json.dumps(golden))


def mixed_records(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        if i % 50 == 7:
            out.append(record(i, 0.0, "lm_timeout"))
        elif i % 50 == 9:
            out.append(record(i, 0.0, "parse"))
        else:
            out.append(record(i, 1.0 if i % 5 else 0.0))
    return out


def verdict_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in VERDICT_FIELDS}


def test_shards_combine_into_the_unsharded_verdict(tmp_path: Path) -> None:
    records = mixed_records(300)
    write_golden(tmp_path, {r["key"]: 1.0 for r in records})
    whole = combine([report([program_entry(records)])], rootdir=tmp_path)
    for n in (2, 3, 5):
        shards = split(records, n)
        assert sum(len(s["programs"][0]["records"]) for s in shards) == 300
        merged = combine(shards, rootdir=tmp_path)
        assert verdict_fields(merged["programs"][0]) == verdict_fields(whole["programs"][0])
        assert merged["passed"] == whole["passed"]
        assert [r["key"] for r in merged["programs"][0]["records"]] == [f"ex-{i}" for i in range(300)]
        assert merged["combined"] == {"shards": n, "reports": n} and merged["shard"] is None

    # and that verdict is the core's, computed on all 300 records at once
    row = whole["programs"][0]
    result = EvaluationResult.from_records([ExampleRecord.from_json(r) for r in records])
    assert (row["score"], row["n"], row["ci95"]) == (result.score, 300, list(result.ci95))
    # examples lost to infrastructure errors were not measured: left out of the paired comparison
    answered = paired_outcomes(result.records)
    # ... and counted as lost (trial finding 3: the comparison says how many were not measured)
    expected = {**compare({r["key"]: 1.0 for r in records}, answered).to_json(), "lost": result.infra_errors}
    assert row["comparison"] == expected and expected["lost"] == 6
    assert row["comparison"]["shared"] == len(answered) == 300 - result.infra_errors
    assert row["usage"]["calls"] == 300


def test_a_regression_no_single_shard_can_see_fails_the_combined_gate(tmp_path: Path) -> None:
    # 8 of 120 answers flipped right -> wrong: certain evidence together, 2-3 flips per shard is not
    records = [record(i, 0.0 if i < 8 else 1.0) for i in range(120)]
    write_golden(tmp_path, {f"ex-{i}": 1.0 for i in range(120)}, score=1.0)
    shards = split(records, 3, golden_score=1.0, threshold=0.8, tolerance=0.1)
    for s in shards:
        alone = combine([{**s, "shard": None}], rootdir=tmp_path)["programs"][0]
        assert alone["comparison"]["verdict"] == "no change"
    merged = combine(shards, rootdir=tmp_path)
    row = merged["programs"][0]
    assert row["comparison"]["verdict"] == "regressed"
    assert sorted(row["comparison"]["regressions"]) == sorted(f"ex-{i}" for i in range(8))
    assert row["verdict"]["passed"] is False and row["verdict"]["kind"] == "regression"
    assert merged["passed"] is False


def test_golden_without_per_example_outcomes_falls_back_to_the_tolerance(tmp_path: Path) -> None:
    write_golden(tmp_path, None, score=0.95)
    records = [record(i, 1.0 if i % 5 else 0.0) for i in range(100)]  # 0.80
    row = combine(split(records, 2, golden_score=0.95), rootdir=tmp_path)["programs"][0]
    assert row["comparison"] is None
    expected = judge(
        EvaluationResult.from_records([ExampleRecord.from_json(r) for r in records]),
        threshold=0.5,
        golden_score=0.95,
        tolerance=0.05,
    )
    assert row["verdict"] == {"passed": False, "reason": expected.reason, "kind": "regression"}


def test_infrastructure_errors_over_budget_are_lm_errors_not_a_low_score(tmp_path: Path) -> None:
    records = [record(i, 0.0, "lm_unavailable") if i % 4 == 0 else record(i, 1.0) for i in range(80)]
    row = combine(split(records, 3, golden=None, golden_score=None), rootdir=tmp_path)["programs"][0]
    assert row["verdict"]["kind"] == "lm_errors" and row["errors_by_kind"] == {"lm_unavailable": 20}
    # a report that records its own error budget is judged by it
    row = combine(split(records, 3, golden=None, golden_score=None, max_error_rate=0.3), rootdir=tmp_path)["programs"][
        0
    ]
    assert row["verdict"]["passed"] is True


def test_a_missing_shard_is_an_error_never_a_smaller_n(tmp_path: Path) -> None:
    shards = split(mixed_records(60), 3, golden=None)
    with pytest.raises(CombineError, match=r"shard 2/3 missing: got 1/3, 3/3"):
        combine([shards[0], shards[2]])
    with pytest.raises(CombineError, match=r"shards 2/3, 3/3 missing"):
        combine([shards[0]])


def test_a_duplicated_shard_is_an_error() -> None:
    shards = split(mixed_records(60), 3, golden=None)
    with pytest.raises(CombineError, match=r"shard 2/3 is given twice \(b.json and d.json\)"):
        combine(
            [shards[0], shards[1], shards[2], copy.deepcopy(shards[1])], names=["a.json", "b.json", "c.json", "d.json"]
        )


def test_mixed_shard_counts_and_unsharded_reports_are_errors() -> None:
    records = mixed_records(60)
    with pytest.raises(CombineError, match="different shard counts"):
        combine([*split(records, 2, golden=None), split(records, 3, golden=None)[2]])
    with pytest.raises(CombineError, match="not from a sharded run"):
        combine(
            [*split(records, 2, golden=None), report([program_entry(records, golden=None)])], names=["a", "b", "whole"]
        )
    with pytest.raises(CombineError, match="without shard metadata"):
        combine(
            [report([program_entry(records[:30], golden=None)]), report([program_entry(records[30:], golden=None)])]
        )


def test_duplicated_example_keys_across_shards_are_an_error() -> None:
    shards = split(mixed_records(60), 2, golden=None)
    stolen = shards[0]["programs"][0]["records"][0]
    # the same example also claimed by shard 2 (e.g. a shard run on another dataset version)
    shards[1]["programs"][0]["records"].append(stolen)
    with pytest.raises(CombineError, match=rf"example {stolen['key']!r} is in s1.json and s2.json"):
        combine(shards, names=["s1.json", "s2.json"])


def test_a_record_in_the_wrong_shard_is_an_error() -> None:
    shards = split(mixed_records(60), 2, golden=None)
    moved = shards[0]["programs"][0]["records"].pop()
    shards[1]["programs"][0]["records"].append(moved)
    with pytest.raises(CombineError, match=rf"example {moved['key']!r} belongs to shard 1/2, not 2/2"):
        combine(shards)


def test_a_program_missing_from_one_shard_is_an_error() -> None:
    shards = split(mixed_records(60), 3, golden=None)
    shards[1]["programs"] = []
    with pytest.raises(CombineError, match=r"program 'triage' on tests/data/triage.jsonl .* is missing from report #2"):
        combine(shards)


def test_shards_that_disagree_on_the_gate_are_an_error() -> None:
    shards = split(mixed_records(60), 2, golden=None)
    shards[1]["programs"][0]["threshold"] = 0.9
    with pytest.raises(CombineError, match="disagree on threshold"):
        combine(shards)
    shards = split(mixed_records(60), 2, golden=None)
    shards[1]["git_commit"] = "def456"
    with pytest.raises(CombineError, match="different git commits"):
        combine(shards)


def test_a_shard_made_on_uncommitted_changes_makes_the_combined_report_say_so() -> None:
    """Trial12 T12-4: the merged report names the shards' commit; dirty if any shard was, clean only when
    every shard said clean, else not known (a shard written by an older version, or outside git)."""
    from pytest_dspex.reports.markdown import render_markdown

    for flags, merged in (((False, True, False), True), ((False, False, False), False), ((False, None, False), None), ((True, None, False), True)):
        shards = split(mixed_records(60), 3, golden=None)
        for shard, flag in zip(shards, flags, strict=True):
            if flag is not None:
                shard["git_dirty"] = flag
        out = combine(shards)
        assert out["git_dirty"] is merged, flags
        assert ("commit abc123 (uncommitted changes)" in render_markdown(out)) is (merged is True)


def test_a_shard_without_a_programs_examples_is_fine_when_the_dataset_size_proves_it() -> None:
    records = mixed_records(40)
    shards = split(records, 3, golden=None, dataset_size=40)
    mine = shards[1]["programs"][0]["records"]
    shards[0]["programs"][0]["records"] += mine  # pretend shard 2 owned nothing: move its keys away
    shards[1]["programs"] = []
    with pytest.raises(CombineError, match="belongs to shard 2/3"):
        combine(shards)  # (the keys still say where they belong)
    shards = split(records[:1], 3, golden=None, dataset_size=1)
    owner = shard_of(records[0]["key"], 3)
    for k, s in enumerate(shards, 1):
        if k != owner:
            s["programs"] = []
    assert combine(shards)["programs"][0]["n"] == 1
    shards[owner - 1]["programs"] = []
    shards[owner % 3]["programs"] = [program_entry([], golden=None, dataset_size=1)]
    with pytest.raises(CombineError, match="the shards hold 0 examples, the dataset has 1"):
        combine(shards)


def test_dataset_size_must_add_up() -> None:
    records = mixed_records(60)
    combine(split(records, 2, golden=None, dataset_size=60))
    with pytest.raises(CombineError, match="the shards hold 60 examples, the dataset has 61"):
        combine(split(records, 2, golden=None, dataset_size=61))


def test_a_golden_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CombineError, match="golden file named by the reports not found"):
        combine(split(mixed_records(30), 2), rootdir=tmp_path)
    path = tmp_path / "tests/__dspex__/test_triage/triage.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    with pytest.raises(CombineError, match="triage.json: corrupted golden file"):
        combine(split(mixed_records(30), 2), rootdir=tmp_path)


def test_per_program_and_per_dataset_records_stay_apart(tmp_path: Path) -> None:
    a = mixed_records(40)
    b = [record(i, 1.0) for i in range(25)]
    shards = [
        report(
            [
                program_entry([r for r in a if shard_of(r["key"], 2) == k], golden=None),
                program_entry([r for r in b if shard_of(r["key"], 2) == k], golden=None, program="find", dataset="tests/data/products.jsonl"),
            ],
            Shard(k, 2),
        )
        for k in (1, 2)
    ]  # fmt: skip
    merged = combine(shards)
    assert [(p["program"], p["n"]) for p in merged["programs"]] == [("triage", 40), ("find", 25)]


@pytest.fixture(autouse=True)
def _no_job_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """combine appends to $GITHUB_STEP_SUMMARY whenever it is set: never the CI's own job summary here."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def write_reports(tmp_path: Path, reports: list[dict[str, Any]]) -> list[str]:
    paths = []
    for k, r in enumerate(reports, 1):
        p = tmp_path / f"shard-{k}.json"
        p.write_text(json.dumps(r))
        paths.append(str(p))
    return paths


def test_cli_exit_codes_and_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_golden(tmp_path, {f"ex-{i}": 1.0 for i in range(120)}, score=1.0)
    passing = write_reports(tmp_path, split([record(i, 1.0) for i in range(120)], 3, golden_score=1.0))
    out = tmp_path / "out"
    out.mkdir()
    code = main([*passing, "--rootdir", str(tmp_path), "--report", str(out / "c.json"), "--html", str(out / "c.html"),
                 "--markdown", str(out / "c.md"), "--junit", str(out / "c.xml")])  # fmt: skip
    assert code == 0
    merged = json.loads((out / "c.json").read_text())
    assert merged["passed"] is True and merged["programs"][0]["n"] == 120
    assert (out / "c.html").read_text().startswith("<!") and "triage" in (out / "c.md").read_text()
    suite = ET.parse(out / "c.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"
    assert "score 1.000" in capsys.readouterr().out

    failing_dir = tmp_path / "failing"
    failing_dir.mkdir()
    failing = write_reports(
        failing_dir, split([record(i, 0.0 if i < 10 else 1.0) for i in range(120)], 3, golden_score=1.0)
    )
    assert main([*failing, "--rootdir", str(tmp_path), "--junit", str(out / "f.xml")]) == 1
    case = ET.parse(out / "f.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None

    assert main([passing[0], passing[2], "--rootdir", str(tmp_path)]) == 2
    assert "shard 2/3 missing" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert main([str(tmp_path / "broken.json")]) == 2
    assert main([str(tmp_path / "nope.json")]) == 2


def test_combine_to_a_path_that_cannot_be_written_keeps_the_verdicts_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 9 (T9-4): ``--html`` under a file was a traceback and exit 1 — combine's "a gate failed" —
    on a passing run, and the formats after it were not written."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_golden(tmp_path, {f"ex-{i}": 1.0 for i in range(120)}, score=1.0)
    passing = write_reports(tmp_path, split([record(i, 1.0) for i in range(120)], 3, golden_score=1.0))
    bad = Path(passing[0]) / "c.html"
    code = main([*passing, "--rootdir", str(tmp_path), "--html", str(bad), "--markdown", str(tmp_path / "c.md")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err and f"html report not written: {bad}:" in err
    assert (tmp_path / "c.md").exists() and "gate passed" in out


def test_combine_appends_the_github_job_summary_with_or_without_markdown_as_the_plugin_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 9: the plugin appends to $GITHUB_STEP_SUMMARY with or without --dspex-markdown; combine, the
    job that gives a sharded run's verdict, did only with --markdown. A summary path that cannot be
    written is one line (it was a traceback), the exit code the verdict's."""
    write_golden(tmp_path, {f"ex-{i}": 1.0 for i in range(120)}, score=1.0)
    passing = write_reports(tmp_path, split([record(i, 1.0) for i in range(120)], 3, golden_score=1.0))
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main([*passing, "--rootdir", str(tmp_path), "--html", str(tmp_path / "c.html")]) == 0
    assert summary.read_text(encoding="utf-8").startswith("### ✅ pytest-dspex: 1 program passed")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no-such-folder" / "summary.md"))
    capsys.readouterr()
    assert main([*passing, "--rootdir", str(tmp_path), "--markdown", str(tmp_path / "c.md")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "GitHub job summary not written" in err, err


def test_python_dash_m_pytest_dspex_combine(tmp_path: Path) -> None:
    paths = write_reports(tmp_path, split(mixed_records(90), 3, golden=None, golden_score=None))
    ok = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "combine", *paths], capture_output=True, text=True, cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert "n=90 from 3 shard(s): gate passed" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "combine", *paths[:2]], capture_output=True, text=True, cwd=tmp_path
    )
    assert bad.returncode == 2 and "shard 3/3 missing" in bad.stderr


def test_markdown_to_stdout_is_only_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    paths = write_reports(tmp_path, split(mixed_records(30), 2, golden=None, golden_score=None))
    assert main([*paths, "--markdown", "-"]) == 0
    out, err = capsys.readouterr()
    assert "triage" in out and "gate passed" not in out and "gate passed" in err


def test_combine_files_names_the_files_in_errors(tmp_path: Path) -> None:
    paths = write_reports(tmp_path, split(mixed_records(30), 2, golden=None))
    assert combine_files(paths)["programs"][0]["n"] == 30
    with pytest.raises(CombineError, match=r"shard-1.json and .*shard-1.json"):
        combine_files([paths[0], paths[0]])


def test_a_program_in_two_modes_prints_two_different_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``combine`` printed two identical lines for a program gated in both modes (issue 23)."""
    records = [record(i, 1.0) for i in range(30)]
    each = {"mode": "per-example", "test": "tests/test_triage.py::test_triage_each", "golden": None, "golden_score": None}
    shards = [
        report([program_entry([r for r in records if shard_of(r["key"], 2) == k], golden=None, golden_score=None),
                program_entry([r for r in records if shard_of(r["key"], 2) == k], **each)], Shard(k, 2))
        for k in (1, 2)
    ]  # fmt: skip
    assert main([*write_reports(tmp_path, shards), "--rootdir", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "shard(s)" in line]
    assert len(lines) == 2 and lines[0] != lines[1]
    assert lines[0].startswith("triage [dataset] test_triage.py::test_triage on tests/data/triage.jsonl: score 1.000")
    assert lines[1].startswith("triage [per-example] test_triage.py::test_triage_each on tests/data/triage.jsonl: score 1.000")
