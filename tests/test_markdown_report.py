"""The markdown summary (PR comment, GitHub job summary) and the JUnit property pairs."""

from __future__ import annotations

from pathlib import Path

from pytest_dspex.evaluation.records import ExampleRecord
from pytest_dspex.reports import example_properties, program_properties, render_markdown, write_markdown
from pytest_dspex.reports.markdown import md_text

from .report_samples import EVIL, program_row, record, report


def test_one_row_per_program_with_its_verdict() -> None:
    text = render_markdown(report(program_row("triage", 40, passed=False), program_row("find_product", 12, misses=1, errors=0)))
    lines = text.splitlines()
    assert lines[0] == "### ❌ pytest-dspex: 1 of 2 programs failed"
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0].startswith("| program | mode | test | score (95% CI) | threshold | golden | delta |")  # issue 23
    assert len(table) == 3
    assert "triage" in table[1] and "0.800 (0.70–0.88)" in table[1] and "❌ FAIL: regressed: 3 of 40 shared examples worse (p=0.031)" in table[1]
    assert "| dataset | test\\_triage.py::test\\_triage |" in table[1]
    assert "-0.025 \\[-0.070, +0.020\\] p=0.031" in table[1] and "2 (lm\\_timeout 2)" in table[1]
    assert "find\\_product" in table[2] and "✅ pass" in table[2]
    assert "model gemma-3-270m" in lines[-1] and "commit 0123456789ab" in lines[-1]
    assert "sk-secret" not in text


def test_all_passed_headline() -> None:
    assert render_markdown(report(program_row(passed=True))).startswith("### ✅ pytest-dspex: 1 program passed\n")
    # nothing evaluated passed nothing (issue 19: an interrupted run's empty report read as a pass)
    assert render_markdown({"programs": []}).startswith("### ⚠️ pytest-dspex: no LM program was evaluated")
    assert render_markdown({"passed": True, "programs": []}).startswith("### ⚠️ pytest-dspex: no LM program")


def test_regressions_list_the_first_ten_and_count_the_rest() -> None:
    row = program_row("triage", 40, misses=14, errors=0, regressions=14, passed=False)
    text = render_markdown(report(row))
    listed = [ln for ln in text.splitlines() if ln.startswith("- `ex-")]
    assert len(listed) == 10
    assert listed[0] == "- `ex-0`: I was charged twice for my subscription (#0) → expected billing, got technical"
    assert "- … and 4 more" in text
    assert "**triage** (dataset, test\\_triage.py::test\\_triage): 14 examples regressed against the golden (paired mcnemar-exact, p=0.031)" in text


def test_untrusted_text_cannot_format_or_inject() -> None:
    row = program_row("triage", 5, evil=True, passed=False)
    text = render_markdown(report(row, evil_meta=True))
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;" in text
    assert md_text(EVIL, 200).endswith("&amp;amp; \\| \\*\\*bold\\*\\* \\`tick\\`")
    row["records"][0]["key"] = "a`b\nc|d"
    row["comparison"]["regressions"] = ["a`b\nc|d"]
    line = next(ln for ln in render_markdown(report(row)).splitlines() if ln.startswith("- `a"))
    assert line.startswith("- `a'b c|d`:")  # one line, the code span closed where it should be
    assert "\n" not in EVIL


def test_paths_stay_relative(tmp_path: Path) -> None:
    text = render_markdown(report())
    assert str(Path.cwd()) not in text and str(tmp_path) not in text


def test_write_markdown_and_the_github_step_summary(tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    out = tmp_path / "dspex.md"
    text = write_markdown(report(), out, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert out.read_text(encoding="utf-8") == text
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + text  # appended, not replaced
    write_markdown(report(), out, env={})  # unset: nothing appended
    write_markdown(report(), None, step_summary=False, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + text


# -- JUnit properties ------------------------------------------------------------------------------
def test_program_properties() -> None:
    props = dict(program_properties(program_row("triage", 40, passed=False)))
    assert props["dspex_program"] == "triage"
    assert props["dspex_score"] == "0.8" and props["dspex_ci95"] == "0.7000–0.8800" and props["dspex_n"] == "40"
    assert props["dspex_threshold"] == "0.7" and props["dspex_golden_score"] == "0.825"
    assert props["dspex_delta"] == "-0.0250" and props["dspex_delta_ci95"] == "[-0.0700, +0.0200]"
    assert props["dspex_p_value"] == "0.031" and props["dspex_comparison"] == "regressed"
    assert props["dspex_regressions"] == "3" and props["dspex_fixes"] == "1" and props["dspex_errors"] == "2"
    assert props["dspex_verdict"] == "regressed"
    assert props["dspex_verdict_reason"].startswith("regressed: 3 examples flipped")
    passing = dict(program_properties(program_row(passed=True)))
    assert passing["dspex_verdict"] == "pass" and "dspex_verdict_reason" not in passing
    flat = dict(program_properties({"program": "p", "score": 0.5, "n": 2, "passed": True}))
    assert flat["dspex_verdict"] == "pass" and "dspex_delta" not in flat


def test_example_properties_tell_a_miss_from_an_error() -> None:
    ok, miss, parse, err = (record(1), record(2, outcome="miss"), record(3, outcome="parse"), record(4, outcome="error"))
    assert example_properties(ok) == [("dspex_key", "ex-1"), ("dspex_score", "1"), ("dspex_outcome", "pass")]
    expected, got = miss["expected"]["team"], miss["prediction"]["team"]  # a miss shows both (issue 23)
    assert example_properties(miss) == [("dspex_key", "ex-2"), ("dspex_score", "0"), ("dspex_outcome", "miss"),
                                        ("dspex_expected", expected), ("dspex_got", got)]  # fmt: skip
    assert dict(example_properties(parse)) == {
        "dspex_key": "ex-3", "dspex_score": "0", "dspex_outcome": "miss", "dspex_expected": parse["expected"]["team"],
        "dspex_got": "-", "dspex_error_kind": "parse", "dspex_error": "AdapterParseError: answer has no Team",
    }  # fmt: skip
    assert dict(example_properties(err))["dspex_outcome"] == "error"
    assert dict(example_properties(err))["dspex_error_kind"] == "lm_timeout"
    rec = ExampleRecord.from_json({**record(5), "repeats": [1.0, 0.0], "score": 0.5})
    assert dict(example_properties(rec)) == {
        "dspex_key": "ex-5", "dspex_score": "0.5", "dspex_outcome": "miss", "dspex_repeats": "1 0",
        "dspex_expected": rec.expected["team"], "dspex_got": rec.prediction["team"],
    }  # fmt: skip


def test_a_tiny_p_value_reads_p_less_than_not_p_equals_less_than() -> None:
    row = program_row("triage", 40, passed=False)
    row["comparison"]["p_value"] = 0.00001
    text = render_markdown(report(row))
    assert "p&lt;0.001" in text and "p=&lt;" not in text  # markdown-escaped "p<0.001"


def test_a_programs_golden_line_is_said_once_for_both_modes() -> None:
    # trial finding 5: the same program in dataset and per-example mode printed the identical golden line twice
    rows = [program_row("triage", 10, passed=True), program_row("triage", 10, passed=True)]
    rows[1]["mode"] = "per-example"
    for row in rows:
        row["golden_provenance"] = {"text": "chosen on the validation set (40 examples)"}
    text = render_markdown(report(*rows))
    assert text.count("**triage** golden: chosen on the validation set (40 examples)") == 1
    other = program_row("other", 10, passed=True)
    other["golden_provenance"] = {"text": "chosen on the validation set (40 examples)"}
    assert render_markdown(report(*rows, other)).count("golden: chosen on the validation set") == 2  # one per program


def test_a_test_named_paired_is_not_said_paired_twice() -> None:
    """``(paired paired-redrawn, p=0.010)`` (trial10 T10-6): the test's own name when it says paired."""
    row = program_row("triage", 40, misses=14, errors=0, regressions=14, passed=False)
    row["comparison"]["test"] = "paired-redrawn"
    text = render_markdown(report(row))
    assert "(paired-redrawn, p=0.031)" in text and "paired paired" not in text
