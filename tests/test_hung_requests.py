"""Hung requests cost a fraction of the stall at the defaults, in both test modes (issue 19, item 8).

Before: with 5% of requests stalling 30 s, 200 examples took 34x the fault-free time as one
whole-dataset test and 69x as per-example items (each chunk waited for its stalled example): the
duplicate allowance (5% of the requests) was used up by the stalls themselves, and a stall near
the end of a run, where no new request earns allowance, waited the whole stall. A request that
later answers have overtaken is now hedged without allowance. No timing is asserted: a stall is
60 s, a normal answer well under a second; an example that waited out a stall shows in its latency.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.lm.sharing import AutoHedge, WireMark
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage, team_matches, triage_examples
from .test_infra_verdicts import project
from .test_plugin import MODES

STALL_S = 60.0


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def test_a_request_overtaken_by_later_ones_is_hedged_without_allowance() -> None:
    auto = AutoHedge(overtake=5)
    auto.sent()
    stuck = WireMark(auto.on_wire().seq, time.monotonic() - 10.0)  # on the wire for 10 s
    assert not auto.ready(stuck) and not auto.take(stuck)  # no allowance yet (0.1 of a token)
    for _ in range(4):
        auto.observe(0.05, auto.on_wire())
    assert not auto.ready(stuck)
    auto.observe(0.05, auto.on_wire())  # five requests sent after it answered: the endpoint answers
    assert auto.ready(stuck) and auto.take(stuck)
    assert not auto.ready(auto.on_wire())  # a request sent now is not overtaken


def test_an_endpoint_slow_across_the_board_overtakes_nothing() -> None:
    auto = AutoHedge(overtake=5)
    first = WireMark(auto.on_wire().seq, time.monotonic() - 0.3)  # waiting 0.3 s...
    for _ in range(20):
        auto.observe(0.3, auto.on_wire())  # ...as long as everything sent after it took
    assert not auto.overtaken(first)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stalled_requests_are_hedged_at_the_defaults_to_the_last_one(server_factory: Any, seed: int) -> None:
    server = server_factory(latency=0.02, faults=Faults(stall=0.05, stall_s=STALL_S, seed=seed))
    server.keep_bodies = False
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache=None)  # library defaults
    try:
        result = dspex.Evaluate(triage_examples(100), team_matches)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    assert server.counts["stall"] > 0
    assert result.score == 1.0 and not result.errors
    assert result.usage.hedges >= server.counts["stall"]  # every stall got a duplicate...
    assert max(r.latency_s for r in result.records) < STALL_S / 2  # ...and no example waited it out
    assert server.requests <= 100 + 3 * server.counts["stall"] + 10  # not a duplicate for every request


def test_stalls_at_the_end_of_a_run_are_hedged_too(server_factory: Any) -> None:
    """Eight of the last examples' first requests hang: more than the duplicate allowance holds (5),
    and no request comes after them to earn more. The answers that overtake them show they are stuck."""

    def last_ones_hang(body: dict[str, Any], seen: int) -> bool:
        text = str(body["messages"][-1]["content"])
        return seen == 0 and any(f"({i})" in text for i in range(92, 100))

    server = server_factory(latency=0.02, faults=Faults(stall_s=STALL_S), stall_if=last_ones_hang)
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache=None)
    try:
        result = dspex.Evaluate(triage_examples(100), team_matches)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    assert server.counts["stall"] == 8
    assert result.score == 1.0 and result.usage.hedges >= 8
    assert max(r.latency_s for r in result.records) < STALL_S / 2


def test_a_healthy_endpoint_is_not_hedged(server_factory: Any) -> None:
    server = server_factory(latency=0.02)
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache=None)
    try:
        dspex.Evaluate(triage_examples(100), team_matches)(dspex.Predict(Triage, lm=lm))
    finally:
        lm.close()
    assert server.requests <= 105


def test_both_test_modes_hedge_stalled_requests(pytester: pytest.Pytester, server_factory: Any, mode: list[str]) -> None:
    server = server_factory(latency=0.02, faults=Faults(stall=0.05, stall_s=STALL_S, seed=4))
    server.keep_bodies = False
    project(pytester, n=120)
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*opts, *mode, "--dspex-report=report.json", timeout=600)
    assert result.ret == 0, result.stdout.str()
    assert server.counts["stall"] > 0
    for row in json.loads((pytester.path / "report.json").read_text())["programs"]:
        assert row["n"] == 120 and row["errors"] == 0
        assert max(r["latency_s"] for r in row["records"]) < STALL_S / 2, row["mode"]
