"""One run, one set of LM limits: the in-flight limit, back-pressure, breaker and budget are shared by
every xdist worker (the controller's coordinator), not multiplied by ``-n``."""

from __future__ import annotations

import json
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex._support import runtime as _runtime
from pytest_dspex.lm.coordinator import Coordinator
from pytest_dspex.lm.link import RunLink
from pytest_dspex.lm.types import LMRequest
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

from .conftest import PER_EXAMPLE, triage_examples


def _project(pytester: pytest.Pytester, n: int) -> None:
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(n)) + "\n"})
    pytester.makepyfile(test_limits=PER_EXAMPLE)


def _args(server: FakeLMServer, *more: str) -> list[str]:
    return [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off",
            "--dspex-missing-golden=zero-shot", *more]  # fmt: skip


@pytest.mark.parametrize("mode", [["-n", "4"], ["-p", "no:xdist"]], ids=["xdist-4", "no-xdist"])
def test_one_in_flight_limit_for_the_run(pytester, server_factory, monkeypatch, mode):
    """An endpoint that refuses above 8 in flight, --dspex-concurrency 8: with four workers the run
    still has 8 in flight at most, so nothing is refused (per process it would be up to 32)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.05, max_in_flight=8)
    _project(pytester, 120)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-concurrency=8"), *mode)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert server.counts["over_cap"] == 0, dict(server.counts)
    assert server.counts["ok"] == 120 and server.peak_in_flight <= 8


def test_budget_holds_for_the_run_across_workers(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.02)
    _project(pytester, 80)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-max-calls=20", "--dspex-max-error-rate=1"), "-n", "4")
    assert server.requests <= 20, dict(server.counts)
    assert server.requests >= 10  # the budget was used, not refused from the start
    out = result.stdout.str()
    assert "budget" in out.lower()


def test_dead_endpoint_under_workers_every_example_accounted(pytester, monkeypatch):
    """Nothing listens: every example ends as an LM error, the run does not hang."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    _project(pytester, 64)
    result = pytester.runpytest_subprocess(
        "--dspex-base-url=http://127.0.0.1:9/v1", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", "--dspex-retries=1", "-n", "4",
    )  # fmt: skip
    out = result.stdout.str()
    assert result.ret != 0
    assert "LM error" in out or "LM ERROR" in out, out[-3000:]
    # the workers found it dead together: one opening for the run, said in the summary
    assert "circuit breaker opened 1x for the run" in out, out[-3000:]


def test_lm_error_items_pass_without_a_traceback_and_pdb_does_not_stop_there(pytester, monkeypatch):
    """An LM ERROR item passes (the aggregate gate decides): no failure is formatted for it, so
    ``--pdb`` does not open the debugger at each one (it did: one prompt per LM error)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    _project(pytester, 6)
    result = pytester.runpytest_subprocess(
        "--dspex-base-url=http://127.0.0.1:9/v1", "--dspex-model=fake-model", "--dspex-cache=off",
        "--dspex-missing-golden=zero-shot", "--dspex-retries=0", "-p", "no:xdist", "--pdb", "-rA",
    )  # fmt: skip
    out = result.stdout.str()
    assert "6 lm_error" in out, out[-3000:]
    assert "PDB post_mortem" not in out and "NotAnswered" not in out, out[-3000:]
    assert "connection refused" in out  # -rA still shows each LM error (expected vs got)


def _lms(server: FakeLMServer, links: list[RunLink | None], concurrency: int) -> list[dspex.LM]:
    return [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, concurrency=concurrency, limits=link, hedge_after=None)
            for link in links]  # fmt: skip


def _ask_all(lms: list[dspex.LM], n: int) -> list[Any]:
    import asyncio

    async def main() -> list[Any]:
        async def one(i: int) -> Any:
            return await lms[i % len(lms)].acomplete(LMRequest(messages=[{"role": "user", "content": f"q{i}"}]))

        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    return _runtime.run_sync(main())


def test_four_clients_share_one_limit_and_one_budget():
    with FakeLMServer(latency=0.02, max_in_flight=12) as server:
        coordinator = Coordinator(max_calls=150)
        address = coordinator.start()
        try:
            links = [RunLink(address, coordinator.token) for _ in range(4)]
            lms = _lms(server, links, 12)
            for lm, link in zip(lms, links, strict=True):
                lm.budget = link.budget(None, 150)
            outcomes = _ask_all(lms, 200)
            assert server.counts["over_cap"] == 0 and server.peak_in_flight <= 12
            answered = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, dspex.BudgetExceededError)]
            assert len(answered) == 150 and len(refused) == 50
            assert coordinator.stats()["calls"] == 150
        finally:
            coordinator.stop()


def test_a_lost_coordinator_falls_back_to_own_limits(caplog):
    with FakeLMServer(latency=0.01) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        link = RunLink(address, coordinator.token)
        (lm,) = _lms(server, [link], 4)
        assert all(not isinstance(o, BaseException) for o in _ask_all([lm], 10))
        coordinator.stop(bye=False)  # lost as a crashed controller loses it (trial3 T4: stop() now says bye)
        outcomes = _ask_all([lm], 20)  # nothing hangs: the process carries on under its own limit
        assert all(not isinstance(o, BaseException) for o in outcomes)
        assert link.state == "lost"
        said = [r.getMessage() for r in caplog.records if "keeps its own LM limits" in r.getMessage()]
        assert sum(address in m for m in said) == 1, said  # this link's: one warning, however many calls


def test_a_coordinator_stopped_with_the_run_is_no_warning(caplog):
    # trial3 T4: Ctrl-C under xdist stops the controller's coordinator while the workers still run; each
    # warned that it had lost the coordinator
    with FakeLMServer(latency=0.01) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        link = RunLink(address, coordinator.token)
        (lm,) = _lms(server, [link], 4)
        assert all(not isinstance(o, BaseException) for o in _ask_all([lm], 10))
        coordinator.stop()
        outcomes = _ask_all([lm], 20)  # nothing hangs: the process carries on under its own limit
        assert all(not isinstance(o, BaseException) for o in outcomes)
        assert link.state == "lost"
        assert not [r.getMessage() for r in caplog.records if "keeps its own LM limits" in r.getMessage()]


def test_an_unreachable_coordinator_is_one_warning(caplog):
    with FakeLMServer() as server:
        link = RunLink("127.0.0.1:9", "token")
        (lm,) = _lms(server, [link], 4)
        assert all(not isinstance(o, BaseException) for o in _ask_all([lm], 10))
        assert sum("cannot reach the run's coordinator" in r.getMessage() for r in caplog.records) == 1


def test_a_breaker_opening_is_the_runs():
    coordinator = Coordinator()
    address = coordinator.start()
    try:
        links = [RunLink(address, coordinator.token) for _ in range(3)]
        lms = [dspex.LM("m", base_url="http://127.0.0.1:9/v1", api_key="k", cache=None, retries=0, limits=link, breaker_fail_max=2)
               for link in links]  # fmt: skip
        for lm in lms[1:]:
            _ask_all([lm], 0)
            _runtime.run_sync(lm.limits.ensure())  # type: ignore[union-attr]
        outcomes = _ask_all([lms[0]], 2)  # two refused connections open the first breaker
        assert all(isinstance(o, dspex.LMError) for o in outcomes)
        assert lms[0].breaker.state == "open"
        import time

        for _ in range(100):  # the others hear of it (no timing asserted: polled until told)
            if all(lm.breaker.state == "open" for lm in lms):
                break
            time.sleep(0.02)
        assert all(lm.breaker.state == "open" for lm in lms)
        assert isinstance(_ask_all([lms[2]], 1)[0], dspex.CircuitOpenError)
        assert coordinator.stats()["endpoints"]["http://127.0.0.1:9/v1"]["trips"] == 1
    finally:
        coordinator.stop()


def test_a_worker_starting_after_the_opening_sends_nothing():
    """A worker whose first request comes after another's breaker opened is told before it sends:
    it fails fast, no connection of its own (it would retry each call into the dead endpoint)."""
    with FakeLMServer(faults=Faults(http_500=1.0)) as server:  # every request fails
        coordinator = Coordinator()
        address = coordinator.start()
        try:
            early, late = RunLink(address, coordinator.token), RunLink(address, coordinator.token)
            first, second = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, retries=0, limits=link,
                                      breaker_fail_max=2, hedge_after=None) for link in (early, late)]  # fmt: skip
            assert all(isinstance(o, dspex.LMError) for o in _ask_all([first], 2))  # two failed calls
            assert first.breaker.state == "open"
            seen = server.requests
            outcomes = _ask_all([second], 3)  # its first words to the coordinator: told the breaker is open
            assert all(isinstance(o, dspex.CircuitOpenError) for o in outcomes), outcomes
            assert server.requests == seen
            assert coordinator.stats()["endpoints"][server.base_url]["trips"] == 1
        finally:
            coordinator.stop()


def test_a_worker_without_the_coordinator_carries_on_with_one_warning(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.01)
    _project(pytester, 20)
    pytester.makeconftest(
        "import pytest\n"
        "@pytest.hookimpl(trylast=True)\n"
        "def pytest_configure_node(node):\n"
        "    node.workerinput['dspex_limits'] = '127.0.0.1:9 not-the-token'  # nothing listens there\n"
    )
    result = pytester.runpytest_subprocess(*_args(server), "-n", "2")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert server.counts["ok"] == 20
    out = result.stdout.str()
    # said as a warning, once (the one worker that made calls: 20 examples are one chunk), not once per call
    assert out.count("cannot reach the run's coordinator at 127.0.0.1:9") == 1, out[-3000:]
    assert "1 warning" in out


def _until(condition: Any) -> bool:
    """Poll ``condition`` (messages cross a socket); no timing is asserted."""
    import time

    for _ in range(200):
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_one_trial_call_for_the_run_closes_every_breaker():
    from pytest_dspex.testing.fake_server import Faults

    with FakeLMServer(faults=Faults(http_500=1.0)) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        try:
            links = [RunLink(address, coordinator.token) for _ in range(3)]
            lms = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, retries=0, limits=link,
                            breaker_fail_max=1, breaker_reset_timeout=0.2, hedge_after=None) for link in links]  # fmt: skip
            for lm in lms:
                _runtime.run_sync(lm.limits.ensure())  # type: ignore[union-attr]
            assert isinstance(_ask_all([lms[0]], 1)[0], dspex.LMError)  # a 500: the first breaker opens
            assert _until(lambda: all(lm.breaker.state == "open" for lm in lms))
            server.set_faults(Faults())  # the endpoint recovers
            assert _until(lambda: not isinstance(_ask_all([lms[0]], 1)[0], dspex.CircuitOpenError))  # its trial call
            assert lms[0].breaker.state == "closed"
            assert _until(lambda: all(lm.breaker.state == "closed" for lm in lms))  # the others close without a call
            assert server.requests == 2
            stats = coordinator.stats()["endpoints"][lms[0].base_url]
            assert stats["trips"] == 1 and stats["trials"] == 1
        finally:
            coordinator.stop()


def test_the_runs_budget_in_redis_holds_across_processes(server_factory):
    """Workers on other machines cannot reach the coordinator: with a Redis cache, every worker counts the
    run's budget there (two budgets of one run id stand for two workers)."""
    pytest.importorskip("redis")
    from pytest_dspex.lm.redis_budget import RedisBudget

    from .needs import REDIS_INSTALL, need
    from .redis_server import RedisServer, redis_server_binary

    binary = redis_server_binary()
    need("redis-server", "not installed" if binary is None else None, REDIS_INSTALL)
    assert binary is not None
    redis = RedisServer(binary).start()
    try:
        server = server_factory()
        budgets = [RedisBudget(redis.url, "run-1", None, 30) for _ in range(2)]
        lms = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, budget=b) for b in budgets]
        outcomes = _ask_all(lms, 50)
        assert server.requests == 30
        assert sum(isinstance(o, dspex.BudgetExceededError) for o in outcomes) == 20
        other_run = RedisBudget(redis.url, "run-2", None, 30)  # another run's budget is its own
        (lm,) = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, budget=other_run)]
        assert not isinstance(_ask_all([lm], 1)[0], BaseException)
        for b in [*budgets, other_run]:
            _runtime.run_sync(b.aclose())
    finally:
        redis.stop()


def test_a_lost_redis_budget_is_one_warning_and_the_processs_own(server_factory, caplog):
    from pytest_dspex.lm.redis_budget import RedisBudget

    pytest.importorskip("redis")
    server = server_factory()
    budget = RedisBudget("redis://127.0.0.1:9/0", "run-x", None, 5, timeout=0.5)
    lm = dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, budget=budget)
    outcomes = _ask_all([lm], 8)
    assert server.requests == 5 and sum(isinstance(o, dspex.BudgetExceededError) for o in outcomes) == 3
    assert sum("budget in Redis" in r.getMessage() for r in caplog.records) == 1


def test_workers_with_a_redis_cache_count_the_budget_there(pytester, server_factory, monkeypatch):
    pytest.importorskip("redis")
    from .needs import REDIS_INSTALL, need
    from .redis_server import RedisServer, redis_server_binary

    binary = redis_server_binary()
    need("redis-server", "not installed" if binary is None else None, REDIS_INSTALL)
    assert binary is not None
    redis = RedisServer(binary).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        server = server_factory(latency=0.01)
        _project(pytester, 40)
        args = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", f"--dspex-cache-url={redis.url}",
                "--dspex-missing-golden=zero-shot", "--dspex-max-calls=10", "--dspex-max-error-rate=1", "-n", "2"]  # fmt: skip
        pytester.runpytest_subprocess(*args)
        assert server.requests == 10, dict(server.counts)
        client = redis.client()
        try:
            assert [k for k in client.keys("dspex:run:*:calls")], "the budget was counted in Redis"
        finally:
            client.close()
    finally:
        redis.stop()


@pytest.mark.parametrize("mode", [["-n", "4"], ["-p", "no:xdist"]], ids=["xdist-4", "no-xdist"])
def test_a_retry_after_holds_every_worker(pytester, server_factory, monkeypatch, mode):
    """One 429 with Retry-After: 1.5 (the 40th request): no worker sends a new request to the
    endpoint before that time is up. The server counts the requests that arrive too early: at most
    the few already leaving as the news spread (at 4 in flight and 0.1 s an answer, ignoring it
    would be some 60)."""
    from pytest_dspex.testing.fake_server import Faults

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.1, hold_at=40, faults=Faults(retry_after=1.5))
    _project(pytester, 128)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-concurrency=4"), *mode)
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    assert server.counts["hold"] == 1 and server.counts["ok"] == 128, dict(server.counts)
    assert server.early <= 8, (server.early, dict(server.counts))
    if mode[0] == "-n":
        assert "held 1x for the endpoint's Retry-After" in out, out[-3000:]


def test_the_limits_line_counts_one_worker_in_the_singular() -> None:
    from pytest_dspex.lm.coordinator import describe

    endpoint = {"peak_lent": 2, "maximum": 16, "throttled": 3, "answered": 10, "limit": 8, "trips": 0}
    one = describe({"clients": 1, "endpoints": {"e": endpoint}})
    assert one is not None and one.startswith("dspex: LM limits shared by 1 worker: in flight at most 2 of 16")
    two = describe({"clients": 2, "endpoints": {"e": endpoint}})
    assert two is not None and two.startswith("dspex: LM limits shared by 2 workers: ")


def test_the_runs_failures_open_every_breaker_at_the_runs_fail_max():
    """Three workers, one failed call each: the run's third failure in a row opens every breaker
    (each worker's own count is 1 of 3); the fourth call sends nothing."""
    with FakeLMServer(faults=Faults(http_500=1.0)) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        try:
            links = [RunLink(address, coordinator.token) for _ in range(3)]
            lms = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, retries=0, limits=link,
                            breaker_fail_max=3, hedge_after=None) for link in links]  # fmt: skip
            for lm in lms:
                assert isinstance(_ask_all([lm], 1)[0], dspex.LMHTTPError)
                assert lm.breaker.fail_counter == 1  # its own count: far from opening alone
            assert _until(lambda: all(lm.breaker.state == "open" for lm in lms))
            assert isinstance(_ask_all([lms[0]], 1)[0], dspex.CircuitOpenError)
            assert "3 failed calls in a row across the run's workers" in str(_ask_all([lms[1]], 1)[0])
            assert server.requests == 3
            assert coordinator.stats()["endpoints"][server.base_url]["trips"] == 1
        finally:
            coordinator.stop()


def test_an_answer_in_any_worker_starts_the_runs_count_again():
    """Failures in a row across the run: an answer in between (another worker's) starts the count again,
    as one process's breaker does; a healthy run sends the coordinator nothing for it."""
    with FakeLMServer(faults=Faults(http_500=1.0)) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        try:
            links = [RunLink(address, coordinator.token) for _ in range(2)]
            a, b = [dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, retries=0, limits=link,
                             breaker_fail_max=3, hedge_after=None) for link in links]  # fmt: skip
            _runtime.run_sync(b.limits.ensure())  # type: ignore[union-attr]
            _ask_all([a], 1)
            _ask_all([a], 1)  # the run's count: 2 of 3
            assert _until(lambda: b.breaker.run_failing)  # b was told the count is rising
            server.set_faults(Faults())
            assert not isinstance(_ask_all([b], 1)[0], BaseException)  # b's answer: the run's count starts again
            assert _until(lambda: coordinator.stats()["endpoints"][server.base_url]["failing"] == 0)
            server.set_faults(Faults(http_500=1.0))
            _ask_all([b], 1)
            _ask_all([b], 1)  # 2 in a row again, not 4
            assert _until(lambda: coordinator.stats()["endpoints"][server.base_url]["failing"] == 2)
            assert a.breaker.state == b.breaker.state == "closed"
            assert coordinator.stats()["endpoints"][server.base_url]["trips"] == 0
        finally:
            coordinator.stop()


@pytest.mark.parametrize("workers", ["2", "4"])
def test_a_dead_endpoint_gets_the_runs_fail_max_calls_not_each_workers(pytester, server_factory, monkeypatch, workers):
    """Every request answered 500, one request in flight for the run, no retries: the run's fifth
    failed call opens the breaker of every worker, so about five requests reach the endpoint (with
    each worker counting its own, every worker needed five: up to five times -n)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(faults=Faults(http_500=1.0))
    _project(pytester, 200)
    result = pytester.runpytest_subprocess(*_args(server, "--dspex-concurrency=1", "--dspex-retries=0"), "-n", workers)
    out = result.stdout.str()
    assert "200 lm_error" in out, out[-3000:]  # every example accounted
    assert "circuit breaker opened 1x for the run" in out, out[-3000:]
    # the run's fail_max (5), plus the few requests that leave while the run's count reaches the
    # workers (measured 5-8 at -n 2 and -n 4); each worker counting on its own let 9 (-n 2) and 17
    # (-n 4) through
    assert 5 <= server.requests <= 10, dict(server.counts)


@pytest.mark.parametrize("mode", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist-2"])
def test_the_shards_of_one_run_share_its_budget_in_redis(pytester, server_factory, monkeypatch, redis_server, mode):
    """Two shards of one GitHub Actions run (the same GITHUB_RUN_ID), --dspex-max-calls=20, 60 examples:
    together they make 20 calls, not 20 each (each shard counted its own budget before); the shards of
    the next run (another GITHUB_RUN_ID) have a budget of their own."""
    pytest.importorskip("redis")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "1")
    server = server_factory(latency=0.01)
    _project(pytester, 60)

    def shard(k: int, run: str) -> None:
        monkeypatch.setenv("GITHUB_RUN_ID", run)
        pytester.runpytest_subprocess(*_args(server, f"--dspex-cache-url={redis_server.url}", "--dspex-max-calls=20",
                                             "--dspex-max-error-rate=1", f"--dspex-shard={k}/2"), *mode)  # fmt: skip

    shard(1, "4242")
    shard(2, "4242")
    assert server.requests == 20, dict(server.counts)
    shard(1, "4243")  # another run: its own budget (shard 1 has about 30 examples)
    assert server.requests == 40, dict(server.counts)


# -- trial7 T7-2: every worker's last good answers are counted --------------------------------------
def test_a_workers_last_answers_short_of_a_batch_are_counted_when_it_closes():
    """Each worker tells the coordinator its good answers 16 at a time: the last partial batch was never
    said, so the limits line's 'k of n answers' was 2-17 short of the requests made (-n 2, 600 requests).
    A link closing now says them."""
    import time

    with FakeLMServer(latency=0.005) as server:
        coordinator = Coordinator()
        address = coordinator.start()
        try:
            links = [RunLink(address, coordinator.token) for _ in range(2)]
            lms = _lms(server, links, 4)
            assert all(not isinstance(o, BaseException) for o in _ask_all(lms, 2 * 16 + 2 * 5))  # 21 each: 5 short
            for link in links:
                _runtime.run_sync(link.aclose())
            deadline = time.monotonic() + 10  # (a count awaited, not a time measured)
            while time.monotonic() < deadline:
                (endpoint,) = coordinator.stats()["endpoints"].values()
                if endpoint["answered"] >= server.requests:
                    break
                time.sleep(0.05)
            assert endpoint["answered"] == server.requests == 42, (endpoint, server.requests)
        finally:
            coordinator.stop()


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_the_limits_line_counts_every_answer(pytester, server_factory, monkeypatch, mode):
    """The limits line's 'k of n answers were 429' against the endpoint's own count of requests."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.01, faults=Faults(http_429=0.05, retry_after=0.01, seed=5))
    _project(pytester, 150)
    result = pytester.runpytest_subprocess(*_args(server, *mode))
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    said = __import__("re").search(r"(\d+) of (\d+) answers were 429", out)
    assert said, out[-2000:]
    # (a hedged duplicate of a slow request, cancelled once the first answer is back, may reach the
    # endpoint unanswered to the client: a margin of 2; before, each worker's last batch of up to 15 was lost)
    assert server.counts["http_429"] - 2 <= int(said[1]) <= server.counts["http_429"], (said[0], dict(server.counts))
    assert server.requests - 2 <= int(said[2]) <= server.requests, (said[0], dict(server.counts))


# -- trial7 T7-5: a cost budget is asked when the call has its slot, not while it queues ---------------
_WHOLE = """
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage_all")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.0)
def test_all(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
"""


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_a_cost_budget_is_overshot_by_the_calls_on_the_wire_not_the_queue(pytester, server_factory, monkeypatch, mode):
    """A budget three answers spend (--dspex-max-cost 0.5 at $10,000 per 1M tokens: ~$0.2 a call) against an
    endpoint refusing above 8: the calls made are about those in flight when the answers were charged.
    Before, each call was reserved before it waited for its slot: a worker's queued examples passed the
    cost check with nothing charged yet (trial7, -n 2: 48 calls, 32 without a cap; now 16)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(latency=0.05, max_in_flight=8)  # refusals and Retry-After holds: calls queue
    _project(pytester, 300)
    pytester.makepyfile(test_whole=_WHOLE)  # a whole-dataset test besides: two workers with calls queued
    args = _args(server, "--dspex-max-cost=0.5", "--dspex-price=10000,10000", "--dspex-max-error-rate=1", *mode)
    result = pytester.runpytest_subprocess(*args)
    out = result.stdout.str()
    assert "budget" in out, out[-2000:]
    # at most the calls holding a slot (the limit, 16) and those refused and waiting to retry (their slots
    # taken meanwhile: at most as many): 32. Measured 16-25 after; before, -n 2: 40 and 48 (each worker's
    # queued examples reserved with nothing charged yet)
    assert 1 <= server.counts["ok"] <= 32, dict(server.counts)


def test_a_cost_budget_stops_the_calls_queued_for_a_slot_once_an_answer_spent_it():
    """One process, 2 in flight, 20 calls at once, a budget the first answer spends: before, all 20 were
    reserved before they waited for a slot (20 calls made, $0.40 of $0.01); now each queued call is asked
    when its slot is free, after the answers before it were charged: the 2 in flight, no more."""
    from pytest_dspex.lm.usage import Budget

    with FakeLMServer(latency=0.01) as server:
        budget = Budget(max_cost=0.01)  # an answer costs $0.02 here (2 tokens)
        lm = dspex.LM("m", base_url=server.base_url, api_key="k", cache=None, concurrency=2, hedge_after=None,
                      price_per_1m_input=10_000, price_per_1m_output=10_000, budget=budget)  # fmt: skip
        outcomes = _ask_all([lm], 20)
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, dspex.BudgetExceededError)]
        assert len(answered) + len(refused) == 20, outcomes
        assert server.requests == len(answered) <= 2 and budget.calls == len(answered), (server.requests, budget.calls)
