"""The default in-flight limit probes what the endpoint takes: without ``--dspex-concurrency`` the run's
LM limit starts at 16 and grows while a remote endpoint answers without a 429 (up to 64); the first 429
above 16 fixes it there. A number given by the user stays a fixed limit; the embedded model never probes."""

from __future__ import annotations

import json

import pytest

from pytest_dspex.lm.coordinator import _Endpoint
from pytest_dspex.lm.resilience import AdaptiveLimiter
from pytest_dspex.plugin.options import resolve

from .conftest import PER_EXAMPLE, triage_examples


def _project(pytester: pytest.Pytester, n: int) -> None:
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(n)) + "\n"})
    pytester.makepyfile(test_limits=PER_EXAMPLE)


def _run(pytester: pytest.Pytester, server, *more: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", *more,
    )  # fmt: skip


def test_workers_at_the_default_grow_past_16_to_the_endpoints_cap_with_few_429s(pytester, server_factory, monkeypatch):
    """-n 4, no --dspex-concurrency, an endpoint refusing above 24 in flight: the run uses more than
    the old fixed 16 and stops at the cap after at most 1% of requests refused."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.03, max_in_flight=24)
    _project(pytester, 800)
    result = _run(pytester, server, "-n", "4")
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    assert server.counts["ok"] == 800, dict(server.counts)
    assert server.peak_in_flight > 16, server.peak_in_flight  # grew past the start
    assert server.counts["over_cap"] <= 0.01 * server.requests, dict(server.counts)
    assert "(from 16; the endpoint refused above it: kept to " in out, out[-2000:]  # the run says where it stopped


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_a_concurrency_given_stays_a_fixed_limit(pytester, server_factory, monkeypatch, mode):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.02, max_in_flight=64)
    _project(pytester, 200)
    result = _run(pytester, server, "--dspex-concurrency=6", *mode)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert server.counts["ok"] == 200 and server.peak_in_flight <= 6, dict(server.counts)


def test_one_process_at_the_default_keeps_16_examples_in_flight(pytester, server_factory, monkeypatch):
    """Without xdist the default evaluates 16 examples at a time, as before: an endpoint that takes
    16 refuses nothing (at most one request: a hedged duplicate of a slow request may be a 17th, whose
    429 then fixes the limit at 16)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.02, max_in_flight=16)
    _project(pytester, 200)
    result = _run(pytester, server, "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert server.counts["ok"] == 200 and server.counts["over_cap"] <= 1, dict(server.counts)


@pytest.mark.parametrize(
    ("args", "start", "grows_to"),
    [
        (["--dspex-base-url=http://127.0.0.1:9/v1", "--dspex-model=m"], 16, 64),
        (["--dspex-base-url=http://127.0.0.1:9/v1", "--dspex-model=m", "--dspex-concurrency=32"], 32, None),
        (["--dspex-model=local"], 16, None),  # the embedded server queues what it cannot run: no probing
    ],
    ids=["remote-default", "given", "embedded"],
)
def test_which_runs_probe(pytester, args, start, grows_to):
    options = resolve(pytester.parseconfig(*args))
    assert (options.concurrency, options.concurrency_grows_to) == (start, grows_to)


# -- the rule, in one process and in the run's coordinator ------------------------------------------
def test_a_limit_from_a_start_grows_while_used_and_a_429_above_the_start_fixes_it():
    limiter = AdaptiveLimiter(64, start=16)
    assert limiter.limit == 16
    for _ in range(16):
        limiter.observe(throttled=False)  # nothing in flight: the limit is not what holds anything back
    assert limiter.limit == 17  # up to the start, the limit regrows regardless (as without a start)
    for _ in range(200):
        limiter.observe(throttled=False)
    assert limiter.limit == 17  # above the start only while at least half of it is in use
    limiter.in_flight = 17
    for _ in range(17 + 18 + 19):
        limiter.observe(throttled=False)
    assert limiter.limit == 20
    limiter.in_flight = 19  # the refused request gave its slot back; 19 still out
    limiter.observe(throttled=True)
    assert limiter.limit == limiter.maximum == limiter.probed == 17  # 90% of 19: headroom
    limiter.observe(throttled=True)  # the same overshoot's other 429s: no second cut
    assert limiter.limit == 17
    for _ in range(500):
        limiter.observe(throttled=False)
    assert limiter.limit == 17  # it grows no more


def test_a_429_at_or_below_the_start_is_the_usual_back_pressure():
    limiter = AdaptiveLimiter(64, start=16)
    limiter.observe(throttled=True)  # one 429 among good answers: no change
    assert limiter.limit == 16 and limiter.probed is None
    for _ in range(16):
        limiter.observe(throttled=True)
    assert limiter.limit == 8  # halved while 429s keep coming


def test_the_runs_limit_grows_from_its_start_and_stops_at_the_first_429_above_it():
    ep = _Endpoint(maximum=64, limit=16, start=16)
    ep.lent = 16
    ep.observe(16, 0)
    assert ep.limit == 17
    ep.lent = 17
    ep.observe(17 + 18, 0)
    assert ep.limit == 19
    ep.lent = 31  # (as if grown to 31)
    ep.limit = 31
    ep.observe(3, 1)
    assert ep.limit == ep.maximum == ep.probed == 27  # 90% of what was lent less the refused one
    ep.observe(0, 2)  # more 429s of the same overshoot: no second cut
    assert ep.limit == 27
    ep.observe(1000, 0)
    assert ep.limit == 27  # grows no more
    ep.observe(0, 1)  # a 429 again, much later: the endpoint took less meanwhile
    assert ep.limit == 23
    idle = _Endpoint(maximum=64, limit=16, start=16)
    idle.lent = 16
    idle.observe(16, 0)
    idle.lent = 2  # most of the limit unused: growing it would only make a later burst bigger
    idle.observe(500, 0)
    assert idle.limit == 17


def test_an_endpoint_taking_fewer_than_the_limit_is_said_with_what_to_do(pytester, server_factory, monkeypatch):
    """trial5 T5-2: an endpoint refusing above 8 in flight, the default limit of 16: ~30% of requests are
    refused all run long (the limit halves only when 429s are half the answers), and the summary said
    only "kept to 16 … 579 of 1979 answers were 429". It now says the share and what to set. (Without
    xdist and without a serving process no limits line is printed: under -n 2 only.)"""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.03, max_in_flight=8)
    _project(pytester, 300)
    result = _run(pytester, server, "-n", "2")
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    assert server.counts["over_cap"] * 5 >= server.requests, dict(server.counts)  # the premise: not a scattering
    assert "refused, so the endpoint takes fewer requests at once than that; a lower --dspex-concurrency (below " in out, out[-2000:]
