"""The loopback endpoint with the real ``openai`` SDK (sync, async, streaming) in front of a fake upstream.

What a user's code sees (answers, OpenAI-shaped errors, statuses) and what the session's LM does
behind it (cache and replay, budget, retries, accounting per caller, the key never passed on).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.loopback import LoopbackEndpoint
from pytest_dspex.testing.fake_server import FakeLMServer, Faults

openai = pytest.importorskip("openai")

CANARY = "sk-canary-4f1d2a9b7c"  # the upstream key: must reach the upstream and nothing else


def answer(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    return "billing" if "charge" in text else "technical team here"


@pytest.fixture
def upstream(server_factory: Any) -> FakeLMServer:
    return server_factory(answer)


def make_lm(upstream: FakeLMServer, tmp_path: Path, **kwargs: Any) -> dspex.LM:
    kwargs.setdefault("cache", dspex.ResponseCache(tmp_path / "cache", kwargs.pop("cache_mode", "on")))
    kwargs.setdefault("backoff_base", 0.01)
    return dspex.LM("fake-model", base_url=upstream.base_url, api_key=CANARY, **kwargs)


@pytest.fixture(params=[True, False], ids=["in-process", "over-tcp"])
def endpoint(upstream: FakeLMServer, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """httpx clients are answered in the process; ``in_process=False`` sends them over the socket."""
    lm = make_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm, in_process=request.param) as ep:
        yield ep
    lm.close()


_clients: list[Any] = []


def sync_client(**kwargs: Any) -> Any:
    client = openai.OpenAI(**kwargs)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def ask(client: Any, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kwargs)


def test_sync_client_gets_the_upstream_answer_and_the_app_key_goes_nowhere(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    client = sync_client(base_url=endpoint.base_url, api_key="sk-app-key-never-forwarded")
    reply = ask(client, "I was charged twice")
    assert reply.choices[0].message.content == "billing"
    assert reply.model == "fake-model"  # the session's model answers, whatever the code names
    assert reply.usage.completion_tokens == 1
    assert upstream.requests == 1
    assert upstream.bodies[0]["model"] == "fake-model"
    assert upstream.headers[0]["Authorization"] == f"Bearer {CANARY}"
    assert "sk-app-key-never-forwarded" not in repr(upstream.headers) + repr(upstream.bodies)
    assert "gpt-4o-mini" not in repr(upstream.bodies)


def test_same_request_twice_is_one_upstream_call(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    client = sync_client(base_url=endpoint.base_url, api_key="x")
    first, second = ask(client, "the app crashes"), ask(client, "the app crashes")
    assert first.choices[0].message.content == second.choices[0].message.content == "technical team here"
    assert upstream.requests == 1
    assert endpoint.counts["cache_hits"] == 1


def test_sampling_fields_reach_upstream_and_key_the_cache(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    client = sync_client(base_url=endpoint.base_url, api_key="x")
    ask(client, "the app crashes", temperature=0.7, max_completion_tokens=2, stop=["\n"], seed=3, user="someone")
    ask(client, "the app crashes", temperature=0.2, max_completion_tokens=2, stop=["\n"], seed=3, user="someone else")
    assert upstream.requests == 2  # another temperature: another answer; `user` changes nothing
    body = upstream.bodies[0]
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (0.7, 2, ["\n"], 3)
    assert "user" not in body and "stream" not in body


def test_async_client(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="x")
        replies = await asyncio.gather(*(client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"charge {i}"}]) for i in range(5)))  # fmt: skip
        await client.close()
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(main()) == ["billing"] * 5
    assert upstream.requests == 5


def test_streaming_is_recorded_whole_and_replayed_as_chunks(upstream: FakeLMServer, tmp_path: Path) -> None:
    def stream(base_url: str) -> tuple[str, list[Any], Any]:
        client = sync_client(base_url=base_url, api_key="x")
        chunks = list(ask(client, "the app crashes", stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks, chunks[-1].usage

    lm = make_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm) as ep:
        text, chunks, usage = stream(ep.base_url)
        plain = ask(sync_client(base_url=ep.base_url, api_key="x"), "the app crashes")  # the same cache entry
    lm.close()
    assert text == "technical team here"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3  # word by word
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert usage.completion_tokens == 3
    assert plain.choices[0].message.content == text
    assert upstream.requests == 1
    replay = make_lm(upstream, tmp_path, cache_mode="replay")
    with LoopbackEndpoint(replay) as ep:
        assert stream(ep.base_url)[0] == text
    replay.close()
    assert upstream.requests == 1  # replay: nothing upstream


def test_replay_answers_from_the_recording_and_a_miss_is_a_503_without_retries(upstream: FakeLMServer, tmp_path: Path) -> None:
    lm = make_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm) as ep:
        recorded = ask(sync_client(base_url=ep.base_url, api_key="x"), "I was charged")
    lm.close()
    replay = make_lm(upstream, tmp_path, cache_mode="replay")
    with LoopbackEndpoint(replay) as ep:
        client = sync_client(base_url=ep.base_url, api_key="x")  # default: the SDK retries twice on a 503
        assert ask(client, "I was charged").choices[0].message.content == recorded.choices[0].message.content
        with pytest.raises(openai.InternalServerError) as info:
            ask(client, "never recorded")
        assert ep.counts["errors"] == 1  # asked once: x-should-retry: false
    replay.close()
    assert info.value.status_code == 503
    assert info.value.code == "dspex_replay_miss"
    assert "replay mode" in info.value.message
    assert upstream.requests == 1


def test_budget_spent_is_a_429_insufficient_quota_and_nothing_more_goes_upstream(upstream: FakeLMServer, tmp_path: Path) -> None:
    lm = make_lm(upstream, tmp_path, cache=None, budget=dspex.Budget(max_calls=2))
    with LoopbackEndpoint(lm) as ep:
        client = sync_client(base_url=ep.base_url, api_key="x")
        ask(client, "one")
        ask(client, "two")
        with pytest.raises(openai.RateLimitError) as info:
            ask(client, "three")
        assert ep.counts["errors"] == 1
    lm.close()
    assert info.value.code == "insufficient_quota"
    assert upstream.requests == 2


@pytest.mark.parametrize(
    ("fault", "status", "error", "attempts"),
    [("http_429", 429, "RateLimitError", 11), ("http_500", 500, "InternalServerError", 3)],  # 429s: their own allowance of 10
)
def test_upstream_failure_reaches_the_client_as_its_status_after_the_lm_retries(
    upstream: FakeLMServer, tmp_path: Path, fault: str, status: int, error: str, attempts: int
) -> None:
    upstream.set_faults(Faults(**{fault: 1.0}, retry_after=0.01))
    lm = make_lm(upstream, tmp_path, cache=None, retries=2, breaker_fail_max=100)
    with LoopbackEndpoint(lm) as ep:
        with pytest.raises(getattr(openai, error)) as info:
            ask(sync_client(base_url=ep.base_url, api_key="x"), "hello")
        assert ep.counts["errors"] == 1  # x-should-retry: false — the SDK did not multiply the LM's retries
    lm.close()
    assert info.value.status_code == status
    assert upstream.requests == attempts
    assert CANARY not in str(info.value)


def test_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    lm = dspex.LM("fake-model", base_url="http://127.0.0.1:9/v1", api_key=CANARY, cache=None, retries=0)
    with LoopbackEndpoint(lm) as ep, pytest.raises(openai.APIStatusError) as info:
        ask(sync_client(base_url=ep.base_url, api_key="x", max_retries=0), "hello")
    lm.close()
    assert info.value.status_code == 502
    assert CANARY not in str(info.value.body)


def test_bad_requests_get_openai_shaped_400s_and_unknown_paths_404(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    import httpx

    client = sync_client(base_url=endpoint.base_url, api_key="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[])
    assert info.value.body == {"message": "'messages' must be a non-empty array of messages", "type": "invalid_request_error", "param": "messages", "code": None}
    raw = httpx.post(endpoint.base_url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.post(endpoint.base_url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "max_tokens"
    missing = httpx.get(endpoint.base_url + "/embeddings")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert upstream.requests == 0


def test_models_lists_the_session_model(endpoint: LoopbackEndpoint) -> None:
    client = sync_client(base_url=endpoint.base_url, api_key="x")
    assert [m.id for m in client.models.list().data] == ["fake-model"]


def test_each_calling_thread_is_charged_its_own_calls(endpoint: LoopbackEndpoint) -> None:
    """Eight threads share one client; each thread's usage tracker sees exactly its own calls."""
    client = sync_client(base_url=endpoint.base_url, api_key="x")
    seen: dict[int, dspex.Usage] = {}

    def work(i: int) -> None:
        with dspex.track_usage() as usage:
            for j in range(i % 3 + 1):
                ask(client, f"charge {i}-{j}")
        seen[i] = usage

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: u.calls for i, u in seen.items()} == {i: i % 3 + 1 for i in range(8)}
    assert all(u.completion_tokens == u.calls for u in seen.values())  # one-word answers


def test_a_sync_function_evaluated_concurrently_gets_per_example_usage_and_lm_error_kinds(upstream: FakeLMServer, tmp_path: Path) -> None:
    lm = make_lm(upstream, tmp_path, cache=None, budget=dspex.Budget(max_calls=6))
    with LoopbackEndpoint(lm) as ep:
        client = sync_client(base_url=ep.base_url, api_key="x")

        def triage(message: str) -> str:
            return ask(client, message).choices[0].message.content

        examples = [dspex.Example(message=f"charge {i}", team="billing").with_inputs("message") for i in range(10)]
        result = dspex.Evaluate(examples, metric=lambda e, p, t=None: e.team == p.team, concurrency=4)(
            dspex.program(triage, outputs=["team"])
        )
    lm.close()
    answered = [r for r in result.records if r.error_kind is None]
    assert len(answered) == 6 and all(r.usage["calls"] == 1 and r.usage["completion_tokens"] == 1 for r in answered)
    assert sorted(r.error_kind or "" for r in result.records if r.error_kind) == ["budget"] * 4  # not "program"
    assert upstream.requests == 6


def test_an_async_function_with_the_async_client(endpoint: LoopbackEndpoint, upstream: FakeLMServer) -> None:
    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="x")

    async def triage(message: str) -> dict[str, str]:
        reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
        return {"team": reply.choices[0].message.content}

    examples = [dspex.Example(message=f"crash {i}", team="technical team here").with_inputs("message") for i in range(8)]
    result = dspex.Evaluate(examples, metric=lambda e, p, t=None: e.team == p.team, concurrency=8)(dspex.program(triage))
    dspex_loop_close(client)
    assert result.score == 1.0
    assert [r.usage["calls"] for r in result.records] == [1] * 8
    assert upstream.requests == 8


def dspex_loop_close(client: Any) -> None:
    """An async client lives on the loop that used it: pytest-dspex's, where async programs run."""
    from pytest_dspex._support import runtime as _runtime

    _runtime.run_sync(client.close())


def test_the_canary_key_is_in_no_cache_file(endpoint: LoopbackEndpoint, tmp_path: Path) -> None:
    client = sync_client(base_url=endpoint.base_url, api_key="sk-app-key-0000")
    for i in range(3):
        ask(client, f"charge {i}")
        list(ask(client, f"crash {i}", stream=True))
    endpoint._lm.cache.flush()  # type: ignore[union-attr]
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert CANARY.encode() not in data and b"sk-app-key-0000" not in data, path
    assert CANARY not in repr(endpoint) + repr(endpoint._lm)


def test_a_client_that_is_not_httpx_is_attributed_by_its_socket(endpoint: LoopbackEndpoint) -> None:
    """``http.client`` (what urllib, requests and DSPy's own transport sit on): each thread keeps one
    connection and sends several requests on it; each thread's tracker sees its own calls only."""
    import http.client
    import json
    from urllib.parse import urlsplit

    where = urlsplit(endpoint.base_url)
    seen: dict[int, dspex.Usage] = {}

    def work(i: int) -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port)
        with dspex.track_usage() as usage:
            for j in range(i % 3 + 1):
                body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"charge {i}-{j}"}]})
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                assert json.loads(conn.getresponse().read())["choices"][0]["message"]["content"] == "billing"
        conn.close()
        seen[i] = usage

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: u.calls for i, u in seen.items()} == {i: i % 3 + 1 for i in range(6)}
    assert endpoint.counts["unattributed"] == 0


def test_a_sync_client_on_the_loop_itself_is_an_error_not_a_hang(endpoint: LoopbackEndpoint) -> None:
    if not endpoint.in_process:
        pytest.skip("over the socket a sync client would block the loop that answers it")
    client = sync_client(base_url=endpoint.base_url, api_key="x", max_retries=0)

    async def wrong(message: str) -> str:  # an async function calling the sync client
        return ask(client, message).choices[0].message.content

    result = dspex.Evaluate([dspex.Example(message="hi", team="x").with_inputs("message")], metric=lambda e, p, t=None: 1.0)(
        dspex.program(wrong, outputs=["team"])
    )
    assert "use the async client" in (result.records[0].error or "")


def test_the_session_lm_is_built_once_when_two_threads_ask_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The endpoint's first requests (sync clients in worker threads) may ask for the session's LM
    at the same moment: one LM (one cache, one budget) for both, not one each."""
    import time

    from pytest_dspex.plugin.lms import SessionLMs
    from pytest_dspex.plugin.options import DspexOptions

    built: list[object] = []

    class SlowLM:
        def __init__(self, model: str, **kwargs: Any) -> None:
            built.append(self)
            time.sleep(0.2)  # widens the window in which a second thread would build its own

    monkeypatch.setattr("pytest_dspex.lm.LM", SlowLM)
    options = DspexOptions(
        model="m", base_url="http://127.0.0.1:9/v1", api_key_env="OPENAI_API_KEY", temperature=0.0, max_tokens=64, concurrency=4,
        timeout=60.0, retries=3, cache_dir=tmp_path, cache="off", teacher_model=None, demos=2, labeled_demos=2, rounds=1,
        candidates=2, seed=0, tolerance=0.05, max_cost=None, max_calls=10, missing_golden="fail", max_error_rate=0.02,
        example_timeout=None, alpha=0.05, repeats=1, compile=None, force=False,
    )  # fmt: skip
    lms = SessionLMs(options, "run", 1, is_worker=False)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append((lms.lm, lms.budget))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert len({id(lm) for lm, _ in got}) == 1 and len({id(budget) for _, budget in got}) == 1


@pytest.mark.parametrize("flavour", ["httpx", "httpx2"])
def test_an_in_process_answer_is_the_response_httpx_would_build_from_its_bytes(flavour: str) -> None:
    """The in-process hop builds its ``Response`` without httpx's generic read (~22 µs a call less); what a
    client gets is what ``Response(content=body)`` gives: status, headers in order with ``Content-Length``,
    body, read and closed, the raw stream consumed; replies with their own content headers or no body
    are built by httpx itself."""
    import importlib

    from pytest_dspex.lm import callers

    module = pytest.importorskip(flavour)
    request = module.Request("POST", "http://127.0.0.1:9/v1/chat/completions", content=b"{}")
    assert callers._builder(module).__name__ == "direct"  # the probe found both ways the same here
    for reply in [
        (200, {"content-type": "application/json", "x-dspex-cache": "miss"}, b'{"id": "chatcmpl-1", "choices": []}'),
        (429, {"content-type": "application/json", "x-should-retry": "false", "retry-after": "2"}, b'{"error": {}}'),
        (200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, b"data: {}\n\ndata: [DONE]\n\n"),
        (200, {"content-type": "application/json"}, b""),
        (200, {"Content-Length": "3", "content-type": "application/json"}, b"{}\n"),
    ]:
        want = importlib.import_module(flavour).Response(reply[0], headers=reply[1], content=reply[2], request=request)
        got = callers._response(request, reply)
        assert type(got) is type(want)
        assert (got.status_code, got.headers.raw, got.content, got.text, got.request) == (want.status_code, want.headers.raw, want.content, want.text, want.request)
        assert (got.is_closed, got.is_stream_consumed, got.num_bytes_downloaded) == (want.is_closed, want.is_stream_consumed, want.num_bytes_downloaded)
        assert list(got.iter_bytes()) == list(want.iter_bytes()) and list(got.iter_lines()) == list(want.iter_lines())
        with pytest.raises(module.StreamConsumed):
            list(got.iter_raw())
