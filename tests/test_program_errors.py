"""What a verdict says when the program raises, and when a threshold and a tolerance-sized drop both fail.

Trial F7: a plain function that raised on every example (its client had no credentials: the run was
not given ``--dspex-openai-env``) was judged "below threshold; and regression against the golden: 10
of 15 shared examples went pass -> fail". Now: "program raised on k of n examples: <exception> — not
a low score", not paired with the golden, and for a plain function that made no LM call through the
session, the way through.

Trial F6: with the threshold failing too, a drop of more than the tolerance that the paired test is
too small to call was said "no change" and left out of the verdict. Now the comparison line is the
same whatever the threshold, and the verdict names both failed checks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_dspex.evaluation.gates import judge
from pytest_dspex.evaluation.records import ExampleRecord
from pytest_dspex.evaluation.result import EvaluationResult
from pytest_dspex.testing.fake_server import FakeLMServer

from .test_infra_verdicts import run
from .test_plugin import MODES
from .test_plugin import rows as plugin_rows

SOURCE = '''
import pathlib
import re

import pytest
import pytest_dspex as dspex

def triage(message):
    if pathlib.Path("broken").exists():  # as a client built without credentials does, on every call
        raise RuntimeError("Missing credentials: set OPENAI_API_KEY")
    case = int(re.search(r"case (\\d+)", message).group(1))
    wrong = {{int(x) for x in pathlib.Path("wrong.txt").read_text().split()}}
    return "other" if case in wrong else ("billing" if case % 2 else "technical")

program = dspex.program(triage, outputs=["team"])

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(program, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold={threshold})
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(program, name="triage_each")
@pytest.mark.dspex_metric(team_matches, threshold={threshold})
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def _project(pytester: pytest.Pytester, threshold: float = 0.5) -> None:
    pytester.makefile(".jsonl", **{"data/dev": plugin_rows(10, ids=True)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=SOURCE.format(threshold=threshold))


def _compiled(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]) -> None:
    """A golden for both programs, measured while the function is right on 6 of the 10 examples."""
    _project(pytester)
    (pytester.path / "wrong.txt").write_text("0 1 2 3")
    result = run(pytester, server, *mode, "--dspex-compile=triage,triage_each")
    assert result.ret == 0, result.stdout.str()


def _rows(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    return {r["mode"]: r for r in json.loads((pytester.path / "report.json").read_text())["programs"]}


def _records(n: int, raised: int) -> list[ExampleRecord]:
    return [
        ExampleRecord(
            index=i, key=f"k{i}", inputs={}, expected={}, prediction=None if i < raised else {"team": "x"},
            score=0.0 if i < raised else 1.0, error_kind="program" if i < raised else None,
            error="OpenAIError: Missing credentials" if i < raised else None,
        )
        for i in range(n)
    ]  # fmt: skip


def test_a_program_raising_beyond_the_budget_is_its_own_verdict_not_paired() -> None:
    result = EvaluationResult.from_records(_records(20, 20), program="p", metric="m")
    v = judge(result, threshold=0.5, golden_score=0.9, golden_outcomes={f"k{i}": 1.0 for i in range(20)})
    assert not v.passed and v.kind == "program_errors" and v.comparison is None
    assert v.reason == (
        "program raised on 20 of 20 examples: OpenAIError: Missing credentials — not a low score "
        "(over the error budget of 5%)"
    )
    assert v.headline("p", 20).startswith("dspex gate FAILED for 'p': program raised on 20 of 20 examples")
    # within the budget, a program error is a miss as before (scored 0, paired)
    v = judge(EvaluationResult.from_records(_records(40, 1), program="p", metric="m"), threshold=0.5,
              golden_outcomes={f"k{i}": 1.0 for i in range(40)})  # fmt: skip
    assert v.passed and v.comparison is not None and v.comparison.shared == 40


def test_a_function_that_raises_everywhere_says_so_and_the_way_through(
    pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]
) -> None:
    _compiled(pytester, server, mode)
    (pytester.path / "broken").write_text("")
    result = run(pytester, server, *mode)
    out = result.stdout.str()
    assert result.ret == 1
    for name in ("triage", "triage_each"):
        result.stdout.re_match_lines(
            [rf"dspex gate FAILED for '{name}( on data/dev.jsonl)?': program raised on 10 of 10 examples: "
             r"RuntimeError: Missing credentials: set OPENAI_API_KEY — not a low score \(over the error budget "
             r"of 5%\); it made no LM call through the session, so its LM calls did not reach the session's "
             r"endpoint: set dspex_openai_env = true .*dspex_endpoint.base_url.*"]
        )  # fmt: skip
    assert "below threshold" not in out and "regress" not in out and "vs golden" not in out
    result.stdout.fnmatch_lines(["triage *dataset *0.000 (0.00-0.*)  0.50 *n/a (program raised)*FAIL"])
    for row in _rows(pytester).values():
        assert row["verdict"]["kind"] == "program_errors" and not row["verdict"]["passed"]
        assert row["comparison"] is None


def test_a_threshold_and_a_tolerance_drop_both_named_the_comparison_said_alike(
    pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]
) -> None:
    _compiled(pytester, server, mode)
    # 3 examples went pass -> fail, 1 fail -> pass: 0.6 -> 0.4 on 10 (p=0.31, underpowered: needs 100)
    (pytester.path / "wrong.txt").write_text("1 2 3 4 5 6")
    said: dict[float, list[str]] = {}
    for threshold in (0.5, 0.2):
        _project(pytester, threshold)
        result = run(pytester, server, *mode, "--dspex-markdown=ci.md")
        out = result.stdout.str()
        assert result.ret == 1
        said[threshold] = sorted(line for line in out.splitlines() if " vs golden: " in line)
        assert len(said[threshold]) == 2, out
        for line in said[threshold]:
            assert "vs golden: regression by the tolerance: 0.400 vs golden 0.600 on 10 shared examples" in line
            assert "no change" not in line.split("the paired test alone would say")[0]
        rows = _rows(pytester)
        for row in rows.values():
            reason = row["verdict"]["reason"]
            assert "regression: 0.400 < golden 0.600 - tolerance 0.050 on the 10 shared examples" in reason
            assert ("below threshold (0.400 < 0.500)" in reason) == (threshold == 0.5)
        markdown = (pytester.path / "ci.md").read_text()
        both = "FAIL: below threshold (0.400 &lt; 0.50); regression: below the golden 0.600 − tolerance 0.05"
        assert (both in markdown) == (threshold == 0.5), markdown  # the report names every failed check
        assert "regression: below the golden 0.600 − tolerance 0.05 (the paired test is underpowered" in markdown
    assert said[0.5] == said[0.2]
