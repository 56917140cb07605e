"""The budget said up front: with --dspex-max-calls set, a run whose estimate (cache lookups, no LM
call) exceeds it says so once, after collection and before any LM call."""

from __future__ import annotations

import json

import pytest

from .conftest import PER_EXAMPLE, triage_examples

NOTICE = "dspex: over the budget: this run is estimated to make about"


def _project(pytester: pytest.Pytester, n: int) -> None:
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(n)) + "\n"})
    pytester.makepyfile(test_limits=PER_EXAMPLE)


def _args(server, *more: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-missing-golden=zero-shot", *more]


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_a_run_over_its_budget_says_so_before_any_call(pytester, server_factory, monkeypatch, mode):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.01)
    _project(pytester, 40)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-cache=off", "--dspex-max-calls=10"), *mode)
    out = result.stdout.str()
    assert out.count(NOTICE) == 1, out[-3000:]
    line = next(li for li in out.splitlines() if NOTICE in li)
    assert "about 40 LM calls" in line and "--dspex-max-calls=10" in line and "infrastructure errors" in line
    # said before the tests ran: ahead of the progress and of the verdict, which names the budget
    assert out.index(NOTICE) < out.index("test_limits.py" if mode[0] == "-p" else "[100%]") < out.index("LM budget spent")
    assert result.ret != 0  # 30 of 40 examples unanswered: the gate has no verdict, and says why
    assert server.requests <= 10, dict(server.counts)


def test_within_the_budget_or_cached_nothing_is_said(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.01)
    _project(pytester, 30)
    cache = f"--dspex-cache-dir={pytester.path / 'cache'}"
    within = pytester.runpytest_subprocess(*_args(server, cache, "--dspex-max-calls=40"), "-p", "no:xdist")
    assert within.ret == 0 and NOTICE not in within.stdout.str(), within.stdout.str()[-3000:]
    assert server.requests == 30  # the estimate made none
    cached = pytester.runpytest_subprocess(*_args(server, cache, "--dspex-max-calls=5"), "-p", "no:xdist")
    assert cached.ret == 0 and NOTICE not in cached.stdout.str(), cached.stdout.str()[-3000:]  # the cache answers all 30
    assert server.requests == 30


DATASET_IN_THE_CALL = """
import pytest
import pytest_dspex as dspex

triage = dspex.Predict("message -> team")

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl", limit=30)
"""


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_a_dataset_named_in_the_dspex_evaluate_call_is_estimated_too(pytester, server_factory, monkeypatch, mode):
    """Trial finding F19: only a dspex_dataset marker's dataset was estimated; the README's main pattern,
    dspex_evaluate("data/dev.jsonl"), never got the notice."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory()
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(40)) + "\n"})
    pytester.makepyfile(test_limits=DATASET_IN_THE_CALL)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-cache=off", "--dspex-max-calls=10"), *mode)
    out = result.stdout.str()
    assert out.count(NOTICE) == 1, out[-3000:]
    line = next(li for li in out.splitlines() if NOTICE in li)
    assert "about 30 LM calls" in line and "--dspex-max-calls=10" in line  # the call's limit=30 of the 40
    assert server.requests <= 10
