"""The shared Redis response cache, against a real redis-server on a loopback port."""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.errors import CacheMissError, ConfigError
from pytest_dspex.lm.cache import ResponseCache, cache_key
from pytest_dspex.lm.redis_cache import KEY_PREFIX, RedisResponseCache, RedisStorage, open_response_cache, redact_url
from pytest_dspex.testing.fake_server import FakeLMServer

from .conftest import Triage, team_matches, triage_examples
from .redis_server import RedisServer, free_port

pytest.importorskip("redis", reason="the Redis cache needs the [redis] extra (redis-py)")

CACHE_LOGGER = "pytest_dspex.cache"


@pytest.fixture
def caches() -> Iterator[Callable[..., RedisResponseCache]]:
    made: list[RedisResponseCache] = []

    def make(url: str, mode: Any = "on", **kwargs: Any) -> RedisResponseCache:
        c = RedisResponseCache(url, mode, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def evaluate(lm: dspex.LM, n: int, metric: Callable[..., Any] = team_matches) -> Any:
    return dspex.Evaluate(triage_examples(n), metric, concurrency=1)(dspex.Predict(Triage, lm=lm))


def stored(redis_server: RedisServer) -> dict[str, bytes]:
    client = redis_server.client()
    try:
        return {k.decode(): client.get(k) for k in client.scan_iter(match="*")}
    finally:
        client.close()


def test_answers_are_shared_through_redis_between_caches(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any]
) -> None:
    first = caches(redis_server.url)
    res = evaluate(make_lm(server, cache=first), 6)
    first.flush()
    assert res.score == 1.0 and server.requests == 6
    assert len(first) == 6

    # another process or machine: an empty memory tier, the same Redis
    second = caches(redis_server.url)
    res2 = evaluate(make_lm(server, cache=second), 6)
    assert res2.score == 1.0
    assert res2.usage.cache_hits == 6
    assert server.requests == 6  # nothing new was asked of the LM


def test_keys_are_the_disk_cache_keys_and_values_are_whole_json(
    redis_server: RedisServer,
    server: FakeLMServer,
    make_lm: Callable[..., dspex.LM],
    caches: Callable[..., Any],
    tmp_path: Any,
) -> None:
    disk = ResponseCache(tmp_path / "disk")
    disk_keys: set[str] = set()
    disk_set = disk.set
    disk.set = lambda key, value: (disk_keys.add(key), disk_set(key, value))[1]  # type: ignore[method-assign]
    try:
        evaluate(make_lm(server, cache=disk), 4)
        rc = caches(redis_server.url)
        evaluate(make_lm(server, cache=rc), 4)
        rc.flush()
    finally:
        disk.close()
    assert len(disk_keys) == 4
    entries = stored(redis_server)
    assert {k.removeprefix(KEY_PREFIX) for k in entries} == disk_keys
    for key, raw in entries.items():
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 64
        assert "choices" in json.loads(raw)


def test_no_secret_in_any_key_or_value(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any]
) -> None:
    secret = "sk-very-secret-0123456789"
    rc = caches(redis_server.url)
    lm = dspex.LM("fake-model", base_url=server.base_url, cache=rc, api_key=secret)
    try:
        evaluate(lm, 3)
    finally:
        lm.close()
    rc.flush()
    entries = stored(redis_server)
    assert len(entries) == 3
    for key, raw in entries.items():
        assert secret not in key and secret.encode() not in raw


@pytest.mark.parametrize("mode", ["off", "read-only"])
def test_off_and_read_only_never_write(
    mode: str,
    redis_server: RedisServer,
    server: FakeLMServer,
    make_lm: Callable[..., dspex.LM],
    caches: Callable[..., Any],
) -> None:
    rc = caches(redis_server.url, mode)
    evaluate(make_lm(server, cache=rc), 3)
    rc.flush()
    assert stored(redis_server) == {}
    assert server.requests == 3


def test_read_only_and_replay_read_what_another_run_recorded(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any]
) -> None:
    writer = caches(redis_server.url)
    evaluate(make_lm(server, cache=writer), 4)
    writer.flush()
    for mode in ("read-only", "replay"):
        res = evaluate(make_lm(server, cache=caches(redis_server.url, mode)), 4)
        assert res.score == 1.0 and res.usage.cache_hits == 4
    assert server.requests == 4


def test_replay_miss_is_a_cache_miss_error_naming_redis(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any]
) -> None:
    res = evaluate(make_lm(server, cache=caches(redis_server.url, "replay")), 2)
    assert [r.error_kind for r in res.records] == ["cache_miss", "cache_miss"]
    assert redis_server.url in (res.records[0].error or "")
    assert server.requests == 0


def test_redis_killed_mid_run_degrades_to_no_cache_with_one_warning(
    redis_server: RedisServer,
    server: FakeLMServer,
    make_lm: Callable[..., dspex.LM],
    caches: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rc = caches(redis_server.url)
    calls = 0

    def metric_that_kills_redis(example: Any, prediction: Any, trace: Any = None) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            rc.flush()
            redis_server.kill()
        return team_matches(example, prediction)

    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        res = evaluate(make_lm(server, cache=rc), 10, metric_that_kills_redis)
        rc.flush()
    assert res.n == 10 and res.score == 1.0
    assert [r.error_kind for r in res.records] == [None] * 10
    warnings = [r for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unavailable" in warnings[0].getMessage() and redis_server.url in warnings[0].getMessage()
    assert not rc.available

    # answers already in memory still hit; the rest are asked of the LM again
    before = server.requests
    res2 = evaluate(make_lm(server, cache=rc), 12)
    assert res2.score == 1.0 and res2.usage.cache_hits == 10
    assert server.requests == before + 2


def test_a_hung_redis_costs_one_timeout_then_no_cache(
    redis_server: RedisServer,
    server: FakeLMServer,
    make_lm: Callable[..., dspex.LM],
    caches: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that stops answering (SIGSTOP) is given up on at the first timeout, not per request."""
    import signal

    rc = caches(redis_server.url)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
            res = evaluate(make_lm(server, cache=rc), 6)
            rc.flush()
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert res.score == 1.0 and [r.error_kind for r in res.records] == [None] * 6
    warnings = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER]
    assert len(warnings) == 1 and "Timeout" in warnings[0], warnings
    assert not rc.available


def test_replay_after_redis_died_reports_why(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    writer = caches(redis_server.url)
    evaluate(make_lm(server, cache=writer), 2)
    writer.flush()
    replay = caches(redis_server.url, "replay")
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        res = evaluate(make_lm(server, cache=replay), 2)
    assert [r.error_kind for r in res.records] == ["cache_miss", "cache_miss"]
    assert "Redis cache is unavailable" in (res.records[0].error or "")
    assert server.requests == 2  # only the recording run


def test_unreachable_redis_at_start_is_no_cache_with_one_warning(
    server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        rc = caches(url)
        res = evaluate(make_lm(server, cache=rc), 4)
        rc.flush()
    assert res.score == 1.0 and server.requests == 4
    messages = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER]
    assert len(messages) == 1
    assert "hunter2" not in messages[0] and "hunter2" not in repr(rc)


def test_corrupt_entry_is_a_miss_and_is_rewritten(
    redis_server: RedisServer, server: FakeLMServer, make_lm: Callable[..., dspex.LM], caches: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    rc = caches(redis_server.url)
    evaluate(make_lm(server, cache=rc), 1)
    rc.flush()
    (key,) = stored(redis_server)
    client = redis_server.client()
    client.set(key, b"\xff{not json")
    client.close()
    fresh = caches(redis_server.url)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        res = evaluate(make_lm(server, cache=fresh), 1)
        fresh.flush()
    assert res.score == 1.0 and server.requests == 2
    assert "choices" in json.loads(stored(redis_server)[key])


def test_bad_urls_are_config_errors_without_the_password() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL") as err:
        RedisResponseCache("http://user:pw-secret@127.0.0.1:6379/0")
    assert "pw-secret" not in str(err.value)
    with pytest.raises(ConfigError):
        RedisStorage("redis://127.0.0.1:notaport/0")
    assert redact_url("redis://u:p@h:1/2") == "redis://u:***@h:1/2"
    assert redact_url("redis://h:1/2") == "redis://h:1/2"


def test_replay_miss_raises_from_the_cache_itself(redis_server: RedisServer, caches: Callable[..., Any]) -> None:
    rc = caches(redis_server.url, "replay")
    assert rc.get("0" * 64) is None
    with pytest.raises(CacheMissError, match="replay mode"):
        rc.miss("0" * 64, "m")


def _writer(url: str, worker: int, n: int, shared: int) -> None:
    storage = RedisStorage(url)
    for i in range(n):
        # every worker also writes the same `shared` keys (same value, as the same request gives)
        k = i if i < shared else 1_000_000 * (worker + 1) + i
        key = cache_key({"i": k})
        storage.set(key, json.dumps({"choices": [{"message": {"content": "x" * (k % 300)}}], "k": k}))
    storage.close()


def test_concurrent_writers_from_processes_lose_nothing(redis_server: RedisServer) -> None:
    workers, n, shared = 4, 1000, 200
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(redis_server.url, w, n, shared)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = stored(redis_server)
    assert len(entries) == shared + workers * (n - shared)
    for raw in entries.values():
        value = json.loads(raw)
        assert len(value["choices"][0]["message"]["content"]) == value["k"] % 300


def test_open_response_cache_picks_the_tier(redis_server: RedisServer, tmp_path: Any) -> None:
    assert open_response_cache("off", directory=tmp_path, url=redis_server.url) is None
    shared = open_response_cache("replay", directory=tmp_path, url=redis_server.url)
    local = open_response_cache("on", directory=tmp_path / "c")
    try:
        assert isinstance(shared, RedisResponseCache) and shared.mode == "replay" and shared.available
        assert type(local) is ResponseCache and local.directory == str(tmp_path / "c")
    finally:
        for c in (shared, local):
            assert c is not None
            c.close()
