"""A compile stops at its error budget, names the errors, and never hammers a refusing endpoint
(issue 19, item 7).

Measured before: a compile against a base URL answering 404 to everything made 75,960 requests for
250 examples and failed every test with "golden not written" without naming the 404.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.lm.resilience import Breaker
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage, team_matches, triage_examples
from .test_infra_verdicts import TESTS, project
from .test_plugin import MODES


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def _refuse(breaker: Breaker, n: int, status: int) -> None:
    for _ in range(n):
        ticket, exc = breaker.admit(), dspex.LMHTTPError(f"HTTP {status}", status=status)
        breaker.refused(ticket, exc)  # as the answer arrives (the client calls it)
        breaker.done(ticket, exc)


@pytest.mark.parametrize("status", [401, 403, 404, 405, 410])
def test_a_wrong_url_key_or_model_opens_the_breaker_after_fail_max_calls(status: int) -> None:
    b = Breaker("e", fail_max=5)
    _refuse(b, 4, status)
    assert b.state == "closed"
    _refuse(b, 1, status)
    assert b.state == "open"
    with pytest.raises(dspex.CircuitOpenError, match=f"refused 5 calls in a row with HTTP {status}"):
        b.admit()


def test_other_4xx_need_ten_times_as_many_and_any_answer_starts_the_count_again() -> None:
    b = Breaker("e", fail_max=5)
    _refuse(b, 49, 400)
    b.done(b.admit(), None)  # an answer: the endpoint takes some requests (a 400 was that request's own)
    _refuse(b, 4, 404)
    b.done(b.admit(), None)
    _refuse(b, 49, 400)
    _refuse(b, 5, 429)  # back-pressure, not a refusal
    b.done(b.admit(), dspex.LMResponseError("garbled"))  # an answer of sorts: not a refusal either
    _refuse(b, 4, 404)
    assert b.state == "closed"
    b.done(b.admit(), None)
    _refuse(b, 50, 422)
    assert b.state == "open"


def test_an_all_404_endpoint_gets_a_handful_of_requests(server_factory: Any, make_lm: Any) -> None:
    server = server_factory(faults=Faults(http_404=1.0))
    lm = make_lm(server)  # concurrency 16
    result = dspex.Evaluate(triage_examples(300), team_matches)(dspex.Predict(Triage, lm=lm))
    assert server.requests <= 20
    assert result.n == 300 and result.score == 0.0
    assert "HTTP 404 Not Found" in (result.records[0].error or "")
    assert "refused 5 calls in a row with HTTP 404" in (result.records[-1].error or "")


def _compile(server_url: str, tmp_path: Any, **kwargs: Any) -> Any:
    from pytest_dspex.optimize.compile import CompileSettings, compile_program

    lm = dspex.LM("fake-model", base_url=server_url, api_key="k", cache=None, backoff_base=0.01)
    try:
        with dspex.context(lm=lm):
            return compile_program(
                dspex.Predict(Triage), name="triage", metric=team_matches, trainset=triage_examples(60),
                valset=triage_examples(120), input_keys=("message",), path=tmp_path / "__dspex__" / "t" / "triage.json",
                settings=CompileSettings(**kwargs),
            )  # fmt: skip
    finally:
        lm.close()


def test_a_compile_against_a_404_endpoint_stops_at_its_budget_naming_the_404(server_factory: Any, tmp_path: Any) -> None:
    server = server_factory(faults=Faults(http_404=1.0))
    with pytest.raises(dspex.CompileStoppedError, match=r"compile stopped at its error budget.*HTTP 404 Not Found") as info:
        _compile(server.base_url, tmp_path)
    assert "5%" in str(info.value)
    assert server.requests <= 20
    assert not (tmp_path / "__dspex__" / "t" / "triage.json").exists()


def test_a_compile_against_a_dead_port_stops_naming_the_refused_connection(tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dspex.CompileStoppedError, match="connection refused"):
        _compile(f"http://127.0.0.1:{port}/v1", tmp_path)


def test_errors_within_the_budget_do_not_stop_the_compile(server_factory: Any, tmp_path: Any) -> None:
    server = server_factory(faults=Faults(http_500=0.2, seed=1))  # retried: nearly every call succeeds
    done = _compile(server.base_url, tmp_path, max_error_rate=0.05)
    assert done.outcome == "created" and done.result.validation.score > 0.9


def test_pytest_compile_against_a_404_endpoint_says_it_once_with_few_requests(
    pytester: pytest.Pytester, server_factory: Any, mode: list[str]
) -> None:
    server = server_factory(faults=Faults(http_404=1.0))
    project(pytester, n=40)
    pytester.makefile(".jsonl", **{"data/train": (pytester.path / "data/dev.jsonl").read_text()})
    pytester.makepyfile(test_triage=TESTS.replace('")\n@pytest.mark.dspex_metric', '", trainset="data/train.jsonl")\n@pytest.mark.dspex_metric'))
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, *mode, "--dspex-compile", timeout=300)
    out = result.stdout.str()
    assert result.ret == 1
    assert "compile stopped at its error budget" in out and "HTTP 404 Not Found" in out
    assert "During handling of the above exception" not in out
    workers = 2 if "-n" in mode else 1
    assert result.parseoutcomes()["failed"] <= 2 * workers  # said once per program (and worker), not per item
    assert server.requests <= 20 * workers  # each worker's LM has its own breaker


def test_the_half_open_trial_refused_again_opens_the_breaker_again() -> None:
    b = Breaker("e", fail_max=5, reset_timeout=0.0)
    _refuse(b, 5, 404)
    assert b.state == "open" and b.trips == 1
    _refuse(b, 1, 404)  # the trial, once the reset timeout passed
    assert b.state == "open" and b.trips == 2
    trial = b.admit()
    b.done(trial, None)  # the endpoint answers again (the URL was fixed)
    assert b.state == "closed" and b.refusals == 0


def test_a_404_from_a_base_url_without_v1_hints_at_it(server_factory: Any) -> None:
    """Trial 6 #10: ``--dspex-base-url=http://127.0.0.1:8911`` (no /v1) gave the right verdict but no hint."""
    server = server_factory()
    bare = server.base_url.removesuffix("/v1")
    lm = dspex.LM("fake-model", base_url=bare, api_key="k", cache=None, backoff_base=0.01)
    try:
        result = dspex.Evaluate(triage_examples(3), team_matches)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    assert "HTTP 404" in (result.records[0].error or "")
    assert "has no /v1: OpenAI-compatible servers answer at <host>/v1/chat/completions" in (result.records[0].error or "")
    # a 404 from a /v1 URL (a wrong model, say) gets no such hint
    lm = dspex.LM("fake-model", base_url=server_factory(faults=Faults(http_404=1.0)).base_url, api_key="k", cache=None)
    try:
        result = dspex.Evaluate(triage_examples(1), team_matches)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    assert "HTTP 404" in (result.records[0].error or "") and "has no /v1" not in (result.records[0].error or "")
    assert "provider prefix" not in (result.records[0].error or "")


def test_a_404_for_a_model_name_with_a_litellm_provider_prefix_hints_at_it(server_factory: Any) -> None:
    """Trial 9: ``dspex.LM("openai/gpt-4o-mini", ...)``, DSPy's spelling, is sent as given: a 404 says so.
    A name whose first part is no LiteLLM provider (``meta-llama/Llama-3-8B``) gets no such hint."""
    url = server_factory(faults=Faults(http_404=1.0)).base_url
    for model, hinted in (("openai/gpt-4o-mini", True), ("meta-llama/Llama-3-8B", False)):
        lm = dspex.LM(model, base_url=url, api_key="k", cache=None)
        try:
            result = dspex.Evaluate(triage_examples(1), team_matches)(dspex.Predict(Triage, lm=lm))
        finally:
            lm.close()
        error = result.records[0].error or ""
        assert "HTTP 404" in error
        said = f"(the model name {model!r} has LiteLLM's provider prefix 'openai/': pytest-dspex sends the name as given; try --dspex-model=gpt-4o-mini)"
        assert (said in error) is hinted, error
