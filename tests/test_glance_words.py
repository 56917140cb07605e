"""Words that agree (issue 23), on report rows: one verdict sentence naming every failed check, hash
keys named with an input excerpt, "no example changed" instead of an interval, a table of <= 120
columns, the baseline on the shared examples."""

from __future__ import annotations

from pytest_dspex.evaluation.comparison import compare
from pytest_dspex.plugin.report import format_table, gate_lines, verdict_lines
from pytest_dspex.reports._format import ProgramView, endpoint_text, split_expected

from .report_samples import program_row


def test_every_failed_check_is_named_in_words():
    row = program_row("triage", 40, misses=14, errors=0, passed=False)
    row["threshold"], row["verdict"] = 0.9, {"passed": False, "kind": "below_threshold", "reason": "below threshold (0.650 < 0.900)"}
    view = ProgramView(row)
    assert view.failed_checks == [  # the golden (0.675) never met the threshold either: said with it (trial10)
        "below threshold (0.650 < 0.90), as is the golden's own baseline 0.675: lower the threshold or recompile",
        "regressed: 3 of 40 shared examples worse (p=0.031)",
    ]
    assert verdict_lines([row]) == [f"triage [dataset] test_triage.py::test_triage: {view.verdict_words}"]
    assert verdict_lines([row], frozenset({row["test"]})) == []  # already said (the per-example headline)
    other = program_row("support_router", 1000) | {"mode": "per-example"}
    other["usage"] |= {"prompt_tokens": 912_000, "completion_tokens": 3000, "cost": 12.3456, "calls": 10_000, "cache_hits": 5000}
    table = format_table([row, other])
    assert max(len(line) for line in table) <= 120 and table[2].endswith("FAIL")  # was 151 with the reason in it


def test_baseline_is_the_golden_on_the_shared_examples():
    row = program_row("triage", 40, passed=False)
    row["golden_score"] = None  # the dev set changed since compiling: no recorded score to compare
    row["comparison"]["baseline_score"], row["comparison"]["shared"] = 0.795, 38
    assert ProgramView(row).baseline == 0.795
    assert "0.795 (-0.025)" in format_table([row])[2]


def test_a_hash_key_is_named_with_an_excerpt_of_its_inputs():
    row = program_row("triage", 10, misses=3, errors=0, passed=False)
    row["records"][0]["key"] = "h:3890cc7248b73df4"
    row["comparison"]["regressions"] = ["h:3890cc7248b73df4", "ex-1"]
    text = next(t for t, _ in gate_lines([row]) if "vs golden" in t)
    assert "pass -> fail: h:3890cc72 (I was charged twice for …), ex-1" in text


def test_nothing_moved_is_said_without_an_interval():
    same = {f"k{i}": 1.0 if i % 3 else 0.0 for i in range(60)}
    assert compare(same, same).summary().startswith("no change: no example changed outcome (delta +0.000), 60 shared examples")


def test_expected_outputs_apart_from_the_id_and_the_embedded_endpoint_in_words():
    rec = {"expected": {"id": "dev-0010", "answer": -67}, "prediction": {"answer": -60}}
    assert split_expected(rec) == ({"answer": -67}, {"id": "dev-0010"})
    assert split_expected({"expected": {"id": "dev-0010", "answer": -67}, "prediction": None}) == ({"answer": -67}, {"id": "dev-0010"})
    assert endpoint_text("embedded") == "(embedded)" and endpoint_text("http://127.0.0.1:8080/v1") == "at http://127.0.0.1:8080/v1"
