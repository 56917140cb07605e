"""The LM client against a real HTTP server on 127.0.0.1 with injected faults, and a mock transport."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx
import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.adapters import LMRequest
from pytest_dspex.testing.fake_server import Faults

from .conftest import Triage

REQ = LMRequest(messages=[{"role": "user", "content": "Message: hi\nTeam:"}], stop=("\n\n",))


def test_sends_model_max_tokens_stop_and_bearer_key(server, make_lm):
    lm = make_lm(server, max_tokens=32, stop=("###",))
    lm.complete(REQ)
    body, headers = server.bodies[0], server.headers[0]
    assert body["model"] == "fake-model" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["stop"] == ["\n\n", "###"]
    assert headers["Authorization"] == "Bearer sk-test-key"


def test_usage_and_cost_are_counted(server, make_lm):
    lm = make_lm(server, price_per_1m_input=1_000_000, price_per_1m_output=2_000_000)
    c = lm.complete(REQ)
    assert c.prompt_tokens > 0 and c.completion_tokens > 0
    assert c.cost == pytest.approx(c.prompt_tokens * 1 + c.completion_tokens * 2)
    assert lm.usage.calls == 1 and lm.usage.cost == pytest.approx(c.cost)


def test_retries_500_then_succeeds(server, make_lm):
    server.set_faults(Faults(http_500=0.6, seed=3))
    lm = make_lm(server, retries=8)
    for _ in range(10):
        assert lm.complete(REQ).text.strip() in ("billing", "technical")
    assert server.counts["http_500"] > 0
    assert lm.usage.retries == server.counts["http_500"]


def test_429_honours_retry_after(server, make_lm):
    server.set_faults(Faults(http_429=1.0, retry_after=0.05))
    lm = make_lm(server, retries=1)
    t0 = time.perf_counter()
    # 429 is back-pressure: it has its own allowance of retries (10), not `retries`
    with pytest.raises(dspex.LMHTTPError, match="HTTP 429.*after 10 retries") as info:
        lm.complete(REQ)
    assert time.perf_counter() - t0 >= 10 * 0.05
    assert info.value.status == 429 and server.requests == 11
    assert lm.breaker.state == "closed" and lm.breaker.failures == 0


def test_stall_past_the_timeout_is_a_timeout_error(server, make_lm):
    server.set_faults(Faults(stall=1.0, stall_s=3))
    lm = make_lm(server, timeout=0.3, retries=1)
    t0 = time.perf_counter()
    with pytest.raises(dspex.LMTimeoutError, match="no answer within 0.3s"):
        lm.complete(REQ)
    assert time.perf_counter() - t0 < 2.5


@pytest.mark.parametrize("fault", ["garbled", "bad_shape"])
def test_garbled_and_non_chat_bodies_are_response_errors(server, make_lm, fault):
    server.set_faults(Faults(**{fault: 1.0}))
    lm = make_lm(server, retries=2)
    with pytest.raises(dspex.LMResponseError, match="not a chat completion"):
        lm.complete(REQ)
    assert server.requests == 3  # retried


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_connection_opens_the_breaker_which_then_fails_fast():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    lm = dspex.LM("m", base_url=url, api_key="k", cache=None, backoff_base=0.01)
    for _ in range(5):
        with pytest.raises(dspex.LMUnavailableError, match=r"connection refused \(after 3 retries\)"):
            lm.complete(REQ)
    assert lm.breaker.state == "open"
    with pytest.raises(dspex.CircuitOpenError, match="circuit breaker open after 5 consecutive failed calls"):
        lm.complete(REQ)
    lm.close()


def test_breaker_half_opens_after_the_reset_timeout_and_closes_on_success(server, make_lm):
    server.set_faults(Faults(http_500=1.0))
    lm = make_lm(server, retries=0, breaker_reset_timeout=0.3)
    for _ in range(5):
        with pytest.raises(dspex.LMHTTPError):
            lm.complete(REQ)
    with pytest.raises(dspex.CircuitOpenError):
        lm.complete(REQ)
    server.set_faults(Faults())
    time.sleep(0.35)
    assert lm.complete(REQ).text
    assert lm.breaker.state == "closed"


def test_cache_hit_on_rerun_and_key_excludes_the_api_key(server, tmp_path):
    cache_dir = tmp_path / "cache"
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="sk-CANARY-123", cache_dir=cache_dir)
    first = lm.complete(REQ)
    lm.close()
    again = dspex.LM("fake-model", base_url=server.base_url, api_key="sk-other", cache_dir=cache_dir)
    second = again.complete(REQ)
    again.close()
    assert second.cached and second.text == first.text
    assert server.requests == 1
    again.cache.close()
    lm.cache.close()
    for f in cache_dir.rglob("*"):
        if f.is_file():
            assert b"sk-CANARY-123" not in f.read_bytes()


def test_cache_key_includes_the_endpoint_and_sampling_parameters(server_factory, make_lm):
    a, b = server_factory(), server_factory()
    cache = dspex.ResponseCache(None, "on")
    lm_a = make_lm(a, cache=cache)
    lm_b = make_lm(b, cache=cache)
    lm_a.complete(REQ)
    lm_b.complete(REQ)  # other endpoint: a miss
    lm_a.complete(REQ, temperature=0.7)  # other temperature: a miss
    lm_a.complete(REQ)  # hit
    assert (a.requests, b.requests) == (2, 1)


def test_replay_mode_fails_clearly_on_a_miss(server, tmp_path):
    (tmp_path / "c").mkdir()  # a recording folder without this answer
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache_dir=tmp_path / "c", cache_mode="replay")
    with pytest.raises(dspex.CacheMissError, match=r"replay mode: no cached answer.*--dspex-cache=on"):
        lm.complete(REQ)
    assert server.requests == 0
    lm.close()


def test_replay_from_a_folder_that_does_not_exist_names_it(server, tmp_path):
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache_dir=tmp_path / "typo", cache_mode="replay")
    with pytest.raises(dspex.CacheMissError, match=r"the answer cache folder \S*typo does not exist.*--dspex-cache=on --dspex-cache-dir="):
        lm.complete(REQ)
    assert server.requests == 0 and not (tmp_path / "typo").exists()
    lm.close()


def test_read_only_mode_never_writes(server, tmp_path):
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache_dir=tmp_path / "c", cache_mode="read-only")
    lm.complete(REQ)
    lm.complete(REQ)
    assert server.requests == 2
    lm.close()


def test_corrupted_cache_is_moved_aside_with_a_warning(server, tmp_path):
    cache_dir = tmp_path / "c"
    lm = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache_dir=cache_dir)
    lm.complete(REQ)
    lm.close()
    lm.cache.close()
    for db in cache_dir.rglob("cache.db"):
        db.write_bytes(b"this is not sqlite" * 100)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        lm2 = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache_dir=cache_dir)
    assert lm2.complete(REQ).text
    lm2.close()
    lm2.cache.close()
    assert list(tmp_path.glob("c.corrupt-*"))


def test_api_key_is_absent_from_repr_and_errors(server, make_lm):
    server.set_faults(Faults(http_500=1.0))
    lm = make_lm(server, api_key="sk-CANARY-999", retries=0)
    assert "CANARY" not in repr(lm)
    with pytest.raises(dspex.LMHTTPError) as info:
        lm.complete(REQ)
    assert "CANARY" not in str(info.value) and "CANARY" not in repr(info.value)


def test_mock_transport_unit(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": " billing"}}], "usage": {}})

    lm = dspex.LM("m", base_url="http://mock/v1", api_key="k", cache=None, transport=httpx.MockTransport(handler))
    assert dspex.Predict(Triage, lm=lm)(message="refund please").team == "billing"
    assert seen[0]["messages"][-1]["content"].endswith("Team:")


def test_concurrency_limit_is_respected(server_factory, make_lm):
    in_flight = {"now": 0, "max": 0}

    def responder(body):
        return "x"

    server = server_factory(responder, latency=0.05)
    orig = server._handle

    async def counting(request):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            return await orig(request)
        finally:
            in_flight["now"] -= 1

    server._handle = counting  # type: ignore[method-assign]
    server.stop()
    server.start()
    lm = make_lm(server, concurrency=3)

    async def many():
        await asyncio.gather(*(lm.acomplete(LMRequest(messages=[{"role": "user", "content": str(i)}])) for i in range(12)))

    asyncio.run(many())
    assert in_flight["max"] == 3


def test_budget_stops_new_calls(server, make_lm):
    budget = dspex.Budget(max_calls=2)
    lm = make_lm(server, budget=budget)
    lm.complete(LMRequest(messages=[{"role": "user", "content": "1"}]))
    lm.complete(LMRequest(messages=[{"role": "user", "content": "2"}]))
    with pytest.raises(dspex.BudgetExceededError, match="2 of 2 calls"):
        lm.complete(LMRequest(messages=[{"role": "user", "content": "3"}]))
    assert server.requests == 2


def test_events_are_emitted_for_calls(server, make_lm):
    got = []
    unsubscribe = dspex.events.subscribe(got.append)
    try:
        lm = make_lm(server)
        lm.complete(REQ)
    finally:
        unsubscribe()
    calls = [e for e in got if isinstance(e, dspex.events.LMCallEvent)]
    assert len(calls) == 1 and calls[0].model == "fake-model" and calls[0].breaker_state == "closed"


def test_hedged_request_beats_a_stalled_connection(server, make_lm):
    server.set_faults(Faults(stall_s=3))
    seen = iter(range(1000))
    server._pick_fault = lambda: "stall" if next(seen) % 2 == 0 else None  # every first attempt stalls 3 s
    lm = make_lm(server, timeout=10, hedge_after=0.1, retries=0)
    t0 = time.perf_counter()
    for i in range(6):
        assert lm.complete(LMRequest(messages=[{"role": "user", "content": f"Message: refund {i}"}])).text
    assert time.perf_counter() - t0 < 6
    assert lm.usage.hedges == 6 and server.counts["stall"] == 6


@pytest.mark.parametrize(("url", "problem"), [("htp:/nowhere", "is not an http(s) URL"), ("http:///v1", "has no host"), ("127.0.0.1:8080/v1", "is not an http(s) URL")])
def test_a_base_url_that_is_not_http_is_a_config_error_before_any_request(url, problem, server, make_lm):
    with pytest.raises(dspex.ConfigError, match=re.escape(f"LM base_url: {url!r} {problem}")):
        dspex.LM("m", base_url=url, api_key="k", cache=None)
    lm = make_lm(server)
    with pytest.raises(dspex.ConfigError, match=re.escape(f"LM base_url: {url!r} {problem}")):
        lm.copy(base_url=url)
    assert server.bodies == []



def test_a_cache_mode_by_name_works_and_bad_arguments_are_clear_errors(server, tmp_path):
    """``LM(..., cache="off")`` used to fail every call with 'str' object has no attribute 'reads' (issue 23)."""
    off = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache="off")
    assert off.cache is None
    assert off("Message: case 1 charged").strip() and off("Message: case 1 charged").strip()
    assert server.requests == 2  # nothing cached
    off.close()
    replay = dspex.LM("fake-model", base_url=server.base_url, api_key="k", cache="replay", cache_dir=tmp_path / "none")
    assert replay.cache is not None and replay.cache.mode == "replay"
    replay.close()
    for kwargs, message in [
        ({"cache": "of"}, r"LM cache='of': a cache mode is one of on, off, read-only, replay"),
        ({"cache": 3}, r"LM cache=3: expected a ResponseCache, True, False, None or a mode"),
        ({"temperature": "hot"}, r"LM temperature='hot': expected a number >= 0"),
        ({"max_tokens": 0}, r"LM max_tokens=0: expected an integer >= 1"),
        ({"max_tokens": 12.5}, r"LM max_tokens=12.5: expected an integer >= 1"),
        ({"retries": -1}, r"LM retries=-1: expected an integer >= 0"),
        ({"timeout": 0}, r"LM timeout=0: expected a number > 0"),
        ({"concurrency": 0}, r"LM concurrency=0: expected an integer >= 1"),
    ]:
        with pytest.raises(dspex.ConfigError, match=message):
            dspex.LM("fake-model", base_url=server.base_url, api_key="k", **kwargs)
    with pytest.raises(dspex.ConfigError, match="model must be a model name"):
        dspex.LM(None, base_url=server.base_url, api_key="k")  # type: ignore[arg-type]


def test_cache_keys_are_those_earlier_versions_wrote():
    """A cache recorded by an earlier version keeps hitting: the key is the SHA-256 of the request's
    canonical JSON (keys sorted, compact, non-ASCII as it is, other objects as their str)."""
    import datetime
    import hashlib

    from pytest_dspex.lm.cache import cache_key

    request = {
        "endpoint": "http://127.0.0.1:8000/v1",
        "body": {"model": "m", "messages": [{"role": "user", "content": "héllo ☃"}], "temperature": 0.0, "when": datetime.date(2026, 1, 2)},
        "rollout": None,
    }
    canonical = '{"body":{"messages":[{"content":"héllo ☃","role":"user"}],"model":"m","temperature":0.0,"when":"2026-01-02"},"endpoint":"http://127.0.0.1:8000/v1","rollout":null}'
    assert cache_key(request) == hashlib.sha256(canonical.encode()).hexdigest()
