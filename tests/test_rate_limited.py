"""An endpoint that answers nothing but 429 (a spent quota) ends the run as "rate limited", fast;
one that is rate limited for a while, then answers, still completes (TRIAL finding 2).

429s are back-pressure: retried after their ``Retry-After`` under a hold, excluded from the
breaker's count. Left at that, a key whose quota is spent kept a run waiting for 10+ minutes.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

import pytest_dspex as dspex
from pytest_dspex.lm import Breaker
from pytest_dspex.programs.adapters import LMRequest
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .test_plugin import MODES, make_responder, rows
from .test_plugin_evaluation import source

REFUSED = dspex.LMHTTPError("HTTP 429 Too Many Requests: slow down", status=429, retry_after=2.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr("pytest_dspex.lm.resilience.time.monotonic", lambda: now[0])
    return now


def test_nothing_but_429_for_the_patience_opens_the_breaker_rate_limited(clock):
    b = Breaker("e", fail_max=3, reset_timeout=30, throttle_patience=10)
    for _ in range(20):  # a burst: many 429s, but not for long
        b.refused(b.admit(), REFUSED)
    assert b.state == "closed" and b.throttled_in_row == 20
    clock[0] += 9
    b.refused(b.admit(), REFUSED)
    assert b.state == "closed"
    clock[0] += 1
    b.refused(b.admit(), REFUSED)
    assert b.state == "open"
    with pytest.raises(dspex.CircuitOpenError, match="rate limited: the endpoint answered every request with HTTP 429 for 10s") as info:
        b.admit()
    assert info.value.kind == "rate_limited"
    assert "quota" in str(info.value) and "--dspex-rate-limit-patience" in str(info.value)


def test_one_answer_starts_the_count_again(clock):
    b = Breaker("e", fail_max=3, reset_timeout=30, throttle_patience=10)
    for _ in range(4):
        b.refused(b.admit(), REFUSED)
        clock[0] += 3
    b.done(b.admit(), None)  # the endpoint answered: a rate limit that clears, not a spent quota
    assert b.throttled_in_row == 0
    for _ in range(3):
        b.refused(b.admit(), REFUSED)
        clock[0] += 3
    assert b.state == "closed"


def test_a_few_429s_over_a_long_time_are_not_enough(clock):
    """A long Retry-After: the patience needs ``fail_max`` refusals too, not one long wait."""
    b = Breaker("e", fail_max=5, reset_timeout=30, throttle_patience=10)
    for _ in range(4):
        b.refused(b.admit(), REFUSED)
        clock[0] += 60
    assert b.state == "closed"
    b.refused(b.admit(), REFUSED)
    assert b.state == "open"


def test_a_trial_answered_429_reopens_at_once_and_does_not_retry(clock):
    b = Breaker("e", fail_max=2, reset_timeout=5, throttle_patience=1)
    for _ in range(2):
        b.refused(b.admit(), REFUSED)
        clock[0] += 1
    assert b.state == "open" and b.trips == 1
    clock[0] += 5.1
    trial = b.admit()
    assert trial.trial and b.may_retry(trial)
    b.refused(trial, REFUSED)
    assert b.state == "open" and b.trips == 2 and not b.may_retry(trial)
    b.done(trial, REFUSED)
    assert b.state == "open"
    with pytest.raises(dspex.CircuitOpenError) as info:
        b.admit()
    assert info.value.kind == "rate_limited"
    clock[0] += 5.1
    trial = b.admit()
    b.done(trial, None)  # the quota came back
    assert b.state == "closed" and b.throttled_in_row == 0
    _ = b.admit()


def test_a_5xx_outage_still_opens_as_unavailable(clock):
    b = Breaker("e", fail_max=2, reset_timeout=5, throttle_patience=1)
    for _ in range(2):
        b.done(b.admit(), dspex.LMHTTPError("boom", status=500))
    with pytest.raises(dspex.CircuitOpenError) as info:
        b.admit()
    assert info.value.kind == "lm_unavailable"


def test_an_lm_against_a_spent_quota_fails_fast_after_the_patience():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return httpx.Response(429, text="quota exceeded", headers={"Retry-After": "0.02"})

    lm = dspex.LM("m", base_url="http://mock/v1", api_key="k", cache=None, transport=httpx.MockTransport(handler),
                  rate_limit_patience=0.2, concurrency=4)  # fmt: skip
    request = LMRequest(messages=[{"role": "user", "content": "hi"}])
    errors = []
    for _ in range(30):
        try:
            lm.complete(request)
        except dspex.LMError as exc:
            errors.append(exc)
    assert lm.breaker.state == "open" and lm.breaker.trips == 1
    assert {e.kind for e in errors} == {"rate_limited"}
    assert isinstance(errors[-1], dspex.CircuitOpenError)
    made = len(seen)
    assert made <= 11 + 11  # the call running when it opened, and the one before: no more requests after
    for _ in range(10):
        with pytest.raises(dspex.CircuitOpenError):
            lm.complete(request)
    assert len(seen) == made
    lm.close()


# -- through pytest: the user's run -------------------------------------------------------------
N = 60


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".jsonl", **{"data/dev": rows(N)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=source())
    return pytester


def _run(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
            "--dspex-missing-golden=zero-shot", "-p", "no:cacheprovider", "--dspex-report=r.json"]  # fmt: skip
    return pytester.runpytest_subprocess(*opts, *mode, *args, timeout=300)  # a hang guard, not a timing


@pytest.mark.parametrize("mode", list(MODES))
def test_an_endpoint_refusing_everything_with_429_ends_the_run_as_rate_limited(project, server_factory, mode):
    server = server_factory(make_responder(zero_shot_ok=True), faults=Faults(http_429=1.0, retry_after=0.2))
    result = _run(project, server, MODES[mode], "--dspex-rate-limit-patience=1")
    assert result.ret == 1
    reason = f"LM errors: {N} of {N} examples could not be answered (rate_limited: {N})"
    result.stdout.fnmatch_lines([f"*dspex gate FAILED for 'triage'*{reason}*rate limited: the endpoint answered HTTP 429 "
                                 "(a spent quota or a rate limit)*not a low score*"])  # fmt: skip
    report = json.loads((project.path / "r.json").read_text())
    assert all(r["errors_by_kind"] == {"rate_limited": N} for r in report["programs"])
    assert {r["verdict"]["kind"] for r in report["programs"]} == {"lm_errors"}
    # two programs (dataset and per-example) of 60 examples each: the breaker stops nearly all of them
    assert server.requests < 2 * N, server.counts


@pytest.mark.parametrize("mode", list(MODES))
def test_an_endpoint_rate_limited_for_a_while_still_completes(project, server_factory, mode):
    """Nothing but 429 for the first 40 requests, then answers: not a spent quota (default patience)."""
    server = server_factory(make_responder(zero_shot_ok=True), faults=Faults(http_429=1.0, retry_after=0.05))
    done = threading.Event()

    def clear() -> None:
        while not done.wait(0.01):
            if server.counts["http_429"] >= 40:
                server.set_faults(Faults())
                return

    watcher = threading.Thread(target=clear, daemon=True)
    watcher.start()
    try:
        result = _run(project, server, MODES[mode])
    finally:
        done.set()
    result.assert_outcomes(passed=1 + N)
    report = json.loads((project.path / "r.json").read_text())
    assert all(r["errors_by_kind"] == {} for r in report["programs"]), [r["errors_by_kind"] for r in report["programs"]]
    assert server.counts["http_429"] >= 40 and server.counts["ok"] >= 2 * N
