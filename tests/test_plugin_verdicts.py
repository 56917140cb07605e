"""Verdicts that never lie (issue 19, part A), through pytest.

A loopback endpoint answers every even-numbered case right and every odd one wrong (score 0.5); a
threshold of 0.4 passes, 0.7 fails. Each scenario runs with ``-n 2`` and with ``-p no:xdist``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_dspex.fake_server import FakeLMServer, triage_responder

from .test_plugin import MODES, TRIAGE_PROGRAM

N = 40

EACH_TEST = (
    TRIAGE_PROGRAM
    + """
@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_solve_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)

def test_other():
    pass
"""
)

DATASET_TEST = (
    TRIAGE_PROGRAM
    + """
@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
def test_solve(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
"""
)


def dev_rows(n: int = N) -> str:
    out = []
    for i in range(n):
        billing = bool(i % 2)
        message = f"I was charged twice, case {i}" if billing else f"the app crashes, case {i}"
        out.append({"id": f"dev-{i:04d}", "message": message, "team": "billing" if billing else "technical"})
    return "\n".join(json.dumps(r) for r in out) + "\n"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def server(server_factory: Any) -> FakeLMServer:
    s: FakeLMServer = server_factory(lambda body: triage_responder(body, pass_every=2))
    s.keep_bodies = False
    return s


def project(pytester: pytest.Pytester, *, threshold: float = 0.4, source: str = EACH_TEST, n: int = N) -> None:
    pytester.makefile(".jsonl", **{"data/dev": dev_rows(n)})
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n"
    )
    pytester.makepyfile(test_triage=source.replace("THRESHOLD", str(threshold)))


def run(pytester: pytest.Pytester, server: FakeLMServer, *args: str, cache: str = "off") -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", f"--dspex-cache={cache}"]
    opts += ["--dspex-retries=0"]
    return pytester.runpytest_subprocess(*opts, *args, timeout=300)


def report(pytester: pytest.Pytester, name: str = "r.json") -> dict[str, Any]:
    return json.loads((pytester.path / name).read_text())  # type: ignore[no-any-return]


class TestBudgetAndCache:
    def test_max_cost_without_a_price_is_a_usage_error_naming_the_price_option(self, pytester, server, mode):
        """Issue 19: --dspex-max-cost=0.001 on a model with no known price passed with ``cost $0.0000``."""
        project(pytester)
        result = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-max-cost=0.001")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([
            "*--dspex-max-cost=0.001: no price is known for model 'fake-model'*--dspex-price=INPUT,OUTPUT*"
            "price_per_1m_input=*--dspex-max-calls*"
        ])  # fmt: skip
        assert server.requests == 0
        bad = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-price=cheap")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--dspex-price*'cheap' is not a price; write INPUT,OUTPUT*"])
        # with a price the budget stops the run: past it no new calls, and the verdict says "budget"
        priced = run(
            pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-report=r.json",
            "--dspex-max-cost=0.0000001", "--dspex-price=0.15,0.60", "--dspex-concurrency=1",
        )  # fmt: skip
        assert priced.ret == pytest.ExitCode.TESTS_FAILED
        row = report(pytester)["programs"][0]
        assert row["errors_by_kind"].get("budget", 0) > 0 and row["verdict"]["kind"] == "lm_errors"
        assert row["usage"]["cost"] > 0
        assert server.requests < N

    def test_the_lm_refuses_a_cost_budget_it_cannot_count(self):
        import pytest_dspex as dspex

        with pytest.raises(dspex.ConfigError, match="price_per_1m_input= and price_per_1m_output="):
            dspex.LM("m", base_url="http://127.0.0.1:9/v1", api_key="k", budget=dspex.Budget(max_cost=1.0))
        lm = dspex.LM(
            "m", base_url="http://127.0.0.1:9/v1", api_key="k", budget=dspex.Budget(max_cost=1.0), price_per_1m_input=1.0
        )
        lm.close()

    def test_a_run_answered_entirely_from_the_cache_says_so(self, pytester, server, mode):
        """Issue 19: a run whose every answer came from the cache (0 requests) passed without a word."""
        project(pytester)
        first = run(pytester, server, *mode, "-p", "no:cacheprovider", cache="on")
        assert first.ret == 0, first.stdout.str()
        assert "every answer came from the LM cache" not in first.stdout.str()
        sent = server.requests
        second = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-report=r.json", cache="on")
        assert second.ret == 0 and server.requests == sent
        second.stdout.fnmatch_lines([
            f"triage [[]per-example]: every answer came from the LM cache ({N} cached, 0 requests): "
            "the endpoint was not asked; --dspex-cache=off measures it as it answers now"
        ])  # fmt: skip
        assert report(pytester)["programs"][0]["cache_only"] is True
