"""Usage is counted once per logical call, alike in both test modes, and a compile's spend is shown
(issue 19, item 6).

A call whose attempts failed and were retried while the evaluation lent its slot to another example
was counted in both examples: per-example mode (which adds up the records) reported 253 calls for
200 answered examples, and no retries at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .conftest import Triage, team_matches, triage_examples
from .test_infra_verdicts import TESTS, project
from .test_plugin import MODES


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def test_each_record_counts_its_own_calls_and_retries(server_factory: Any) -> None:
    server = server_factory(faults=Faults(http_500=0.3, seed=3))
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache=None, backoff_base=0.01, retries=6)
    try:
        result = dspex.Evaluate(triage_examples(120), team_matches, concurrency=8)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    answered = sum(1 for r in result.records if r.error_kind is None)
    assert all(r.usage["calls"] == (r.error_kind is None) for r in result.records)  # one call per example
    assert result.usage.calls == answered
    summed = dspex.EvaluationResult.from_records(result.records).usage  # what per-example mode reports
    assert (summed.calls, summed.tokens, summed.retries) == (result.usage.calls, result.usage.tokens, result.usage.retries)
    assert result.usage.retries > 0
    # every request the server saw is an answered call, a retry, a failed call's last attempt or a hedge
    assert server.requests == result.usage.calls + result.usage.retries + len(result.errors) + result.usage.hedges


def test_both_modes_report_the_same_calls_tokens_and_retries(pytester: pytest.Pytester, server_factory: Any, mode: list[str]) -> None:
    server = server_factory(faults=Faults(http_500=0.3, seed=5))
    server.keep_bodies = False
    project(pytester, n=60)
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=6"]
    result = pytester.runpytest_subprocess(*opts, *mode, "-p", "no:cacheprovider", "--dspex-report=report.json", timeout=300)
    assert result.ret == 0, result.stdout.str()
    rows = {r["mode"]: r for r in json.loads((pytester.path / "report.json").read_text())["programs"]}
    total = 0
    for row in rows.values():
        usage = row["usage"]
        answered = sum(1 for r in row["records"] if r["error_kind"] is None)
        assert usage["calls"] == answered == sum(r["usage"]["calls"] for r in row["records"])
        assert usage["tokens"] == sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in row["records"])
        assert usage["retries"] > 0
        total += usage["calls"] + usage["retries"] + row["infra_errors"] + usage.get("hedges", 0)
    assert server.requests == total  # nothing counted twice, nothing left out


def test_a_compiles_spend_is_in_the_terminal_summary(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]) -> None:
    project(pytester, n=12)
    pytester.makefile(".jsonl", **{"data/train": (pytester.path / "data/dev.jsonl").read_text()})
    source = TESTS.replace('name="triage")', 'name="triage", trainset="data/train.jsonl")')
    pytester.makepyfile(test_triage=source)
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off"]
    result = pytester.runpytest_subprocess(*opts, *mode, "-p", "no:cacheprovider", "--dspex-compile", "-k", "not each",
                                           "--dspex-report=report.json", timeout=300)  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    (golden,) = json.loads((pytester.path / "report.json").read_text())["goldens"].values()
    usage = golden["compile_usage"]
    assert usage["calls"] > 0
    out = result.stdout.str()
    assert f"compile spent {usage['calls']} LM calls" in out
    assert f"{usage['tokens']} tokens" in out
    row = json.loads((pytester.path / "report.json").read_text())["programs"][0]["usage"]
    assert f"(gates and compile): {usage['calls'] + row['calls']} LM calls" in out
