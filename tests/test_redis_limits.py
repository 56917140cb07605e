"""An endpoint's Retry-After hold and breaker shared through Redis, for processes no coordinator
reaches (remote xdist workers, the shards of a job), against a real redis-server on a loopback port."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex._support import runtime as _runtime
from pytest_dspex.lm.redis_limits import RedisLimits
from pytest_dspex.lm.types import LMRequest
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .conftest import PER_EXAMPLE, triage_examples
from .redis_server import RedisServer, free_port

pytest.importorskip("redis", reason="the shared limits need the [redis] extra (redis-py)")


def _until(condition: Any, poke: Any = None) -> bool:
    """Poll ``condition`` (Redis is read in the background); no timing is asserted."""
    for _ in range(250):
        if poke is not None:
            poke()
        if condition():
            return True
        time.sleep(0.02)
    return False


def _ask(lm: dspex.LM, n: int, tag: str = "q") -> list[Any]:
    import asyncio

    async def main() -> list[Any]:
        return await asyncio.gather(*(lm.acomplete(LMRequest(messages=[{"role": "user", "content": f"{tag}{i}"}])) for i in range(n)),
                                    return_exceptions=True)  # fmt: skip

    return _runtime.run_sync(main())


def _check(lm: dspex.LM) -> None:
    async def poke() -> None:
        assert lm.shared_limits is not None
        lm.shared_limits.check(lm.base_url)

    _runtime.run_sync(poke())


_MADE: list[dspex.LM] = []


@pytest.fixture(autouse=True)
def _close_lms() -> Iterator[None]:
    yield
    while _MADE:
        lm = _MADE.pop()
        lm.close()
        if lm.shared_limits is not None:
            _runtime.run_sync(lm.shared_limits.aclose())


def _process_lm(server: FakeLMServer, url: str, **kwargs: Any) -> dspex.LM:
    """An LM as a separate process (a remote worker, a shard) would have: its own everything, Redis shared."""
    kwargs.setdefault("breaker_fail_max", 2)
    lm = dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, retries=0, hedge_after=None,
                  shared_limits=RedisLimits(url, every=0.0), **kwargs)  # fmt: skip
    _MADE.append(lm)
    return lm


def test_a_breaker_opening_reaches_processes_through_redis(redis_server: RedisServer) -> None:
    with FakeLMServer(faults=Faults(http_500=1.0)) as server:
        first, second = _process_lm(server, redis_server.url), _process_lm(server, redis_server.url)
        assert all(isinstance(o, dspex.LMError) for o in _ask(first, 2))  # two 500s open the first breaker
        assert first.breaker.state == "open"
        assert _until(lambda: second.breaker.state == "open", lambda: _check(second))
        before = server.requests
        (outcome,) = _ask(second, 1, "after")
        assert isinstance(outcome, dspex.CircuitOpenError)
        assert server.requests == before  # failed fast: the dead endpoint was not asked again
        assert first.breaker.trips == 1 and second.breaker.failures == 0  # found once, by the first


def test_a_retry_after_holds_other_processes_through_redis(redis_server: RedisServer) -> None:
    """The first process's 429 says Retry-After: 5; the second, told through Redis, sends nothing
    until then: its request waits, and arrives after the time is up."""
    import asyncio

    with FakeLMServer(hold_at=1, faults=Faults(retry_after=5)) as server:
        first, second = _process_lm(server, redis_server.url), _process_lm(server, redis_server.url)

        async def one(lm: dspex.LM, tag: str) -> Any:
            return await lm.acomplete(LMRequest(messages=[{"role": "user", "content": tag}]))

        held = asyncio.run_coroutine_threadsafe(one(first, "a"), _runtime.get_loop())  # a 429, Retry-After 5: it waits
        assert _until(lambda: second.limiter.held_until > 0, lambda: _check(second))
        waiting = asyncio.run_coroutine_threadsafe(one(second, "b"), _runtime.get_loop())
        time.sleep(0.3)
        assert server.requests == 1 and not waiting.done()  # held: nothing reached the endpoint
        assert waiting.result(timeout=60).text == "ok" and held.result(timeout=60).text == "ok"
        assert server.early == 0 and server.counts["ok"] == 2  # both waited the 5 s out


def test_a_lost_redis_is_one_warning_and_nothing_hangs(caplog: pytest.LogCaptureFixture) -> None:
    with FakeLMServer() as server:
        lm = _process_lm(server, f"redis://127.0.0.1:{free_port()}/0")
        with caplog.at_level(logging.WARNING, logger="pytest_dspex.lm"):
            for _ in range(3):
                assert all(not isinstance(o, BaseException) for o in _ask(lm, 5))
                _until(lambda: lm.shared_limits is not None and lm.shared_limits.lost is not None)
        said = [r.getMessage() for r in caplog.records if "LM limits in Redis" in r.getMessage()]
        assert len(said) == 1, said
        assert server.counts["ok"] == 15



NO_COORDINATOR = (
    "import pytest\n"
    "@pytest.hookimpl(trylast=True)\n"
    "def pytest_configure_node(node):\n"
    "    node.workerinput['dspex_limits'] = '127.0.0.1:9 not-the-token'  # as a remote worker: no coordinator\n"
)


def test_workers_without_the_coordinator_hold_together_through_redis(
    pytester: pytest.Pytester, server_factory: Any, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    """Two workers that cannot reach the coordinator (as remote workers): one gets a 429 with
    Retry-After: 3 (the 30th request). With the Redis URL the other holds too, within a read or two
    (0.25 s); alone, it keeps sending for the 3 s (measured: 46 requests arrived early; with Redis, 6)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.2, hold_at=30, faults=Faults(retry_after=3))
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(128)) + "\n"})
    pytester.makepyfile(test_limits=PER_EXAMPLE)
    pytester.makeconftest(NO_COORDINATOR)
    args = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-concurrency=4",
            "--dspex-missing-golden=zero-shot", "-n", "2", f"--dspex-cache-url={redis_server.url}"]  # fmt: skip
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert server.counts["hold"] == 1 and server.counts["ok"] == 128, dict(server.counts)
    assert server.early <= 24, (server.early, dict(server.counts))


def test_processes_share_the_in_flight_limit_through_redis(redis_server: RedisServer) -> None:
    """Three processes at concurrency 6 against an endpoint that refuses above 6 in flight: each
    counts the live processes in Redis and keeps a fair share (2), so together they stay within 6
    (each on its own would allow 18)."""
    import asyncio

    with FakeLMServer(latency=0.05, max_in_flight=6) as server:
        lms = [_process_lm(server, redis_server.url, concurrency=6) for _ in range(3)]
        assert _until(lambda: all(lm.limiter.maximum == 2 for lm in lms), lambda: [_check(lm) for lm in lms])

        async def main() -> list[Any]:
            return await asyncio.gather(*(lms[i % 3].acomplete(LMRequest(messages=[{"role": "user", "content": f"s{i}"}]))
                                          for i in range(90)), return_exceptions=True)  # fmt: skip

        outcomes = _runtime.run_sync(main())
        assert all(not isinstance(o, BaseException) for o in outcomes)
        assert server.counts["over_cap"] == 0 and server.peak_in_flight <= 6, (dict(server.counts), server.peak_in_flight)


def test_429s_without_retry_after_halve_other_processes_limits_through_redis(redis_server: RedisServer) -> None:
    """The first process's requests are all answered 429 without a Retry-After: its limit comes down
    (AIMD). The second, which has not sent anything yet, halves its own once through Redis instead of
    finding the provider over capacity with a full share of requests of its own."""
    with FakeLMServer(faults=Faults(http_429=1.0, retry_after=0)) as server:
        first, second = _process_lm(server, redis_server.url, concurrency=8), _process_lm(server, redis_server.url, concurrency=8)
        both = [first, second]
        assert _until(lambda: all(lm.limiter.maximum == 4 for lm in both), lambda: [_check(lm) for lm in both])  # a fair share each
        assert all(isinstance(o, dspex.LMHTTPError) for o in _ask(first, 8))
        assert first.limiter.decreases >= 1
        seen = server.requests
        assert _until(lambda: second.limiter.decreases == 1, lambda: _check(second))
        assert second.limiter.limit == 2 and server.requests == seen  # halved once, with no 429 of its own
        for _ in range(5):
            _check(second)
            time.sleep(0.02)
        assert second.limiter.decreases == 1  # the same cut is applied once


def test_processes_at_the_probing_default_share_its_start_and_do_not_probe(redis_server: RedisServer) -> None:
    """The plugin's default (from 6 here, up to 24) in three processes sharing through Redis: each
    keeps a fair share of the start (2), not of the ceiling, and none grows past it — a process cannot
    see the others' requests, so probing would overshoot the endpoint's 6."""
    import asyncio

    with FakeLMServer(latency=0.02, max_in_flight=6) as server:
        lms = [_process_lm(server, redis_server.url, concurrency=24, concurrency_start=6) for _ in range(3)]
        assert _until(lambda: all(lm.limiter.maximum == 2 for lm in lms), lambda: [_check(lm) for lm in lms])

        async def main() -> list[Any]:
            return await asyncio.gather(*(lms[i % 3].acomplete(LMRequest(messages=[{"role": "user", "content": f"p{i}"}]))
                                          for i in range(150)), return_exceptions=True)  # fmt: skip

        outcomes = _runtime.run_sync(main())
        assert all(not isinstance(o, BaseException) for o in outcomes)
        assert server.counts["over_cap"] == 0 and server.peak_in_flight <= 6, (dict(server.counts), server.peak_in_flight)
        assert all(lm.limiter.limit <= 2 for lm in lms)
