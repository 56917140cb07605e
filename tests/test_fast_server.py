"""``python -m pytest_dspex.testing.fake_server`` (the fast server, ``fast_server``) in a process of its
own, as the benchmarks run it: the clients they use get their answers, the cap, the faults and the counts
are what aiohttp's server (``--aiohttp``) gives, and bad bytes on one connection do not stop it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.adapters import LMRequest

CHAT = "[[ ## message ## ]]\n{message}\n\n[[ ## team ## ]]\n{team}\n\n[[ ## completed ## ]]"


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pytest_dspex.testing.fake_server", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["READY"], line
    return proc, line[1]


@pytest.fixture
def serve() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def run(*args: str) -> str:
        proc, url = start(*args)
        procs.append(proc)
        return url

    yield run
    for proc in procs:
        assert proc.poll() is None, "the server died"
        proc.terminate()
        proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def body(i: int, **extra: Any) -> dict[str, Any]:
    text = "I was charged twice" if i % 2 else "the app crashes"
    return {"model": "fake-model", "messages": [{"role": "system", "content": CHAT},
                                                {"role": "user", "content": f"[[ ## message ## ]]\ncase {i}: {text}"}], **extra}  # fmt: skip


def expected(i: int) -> str:
    return f"[[ ## team ## ]]\n{'billing' if i % 2 else 'technical'}\n\n[[ ## completed ## ]]"


def counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/_counts") as resp:
        return json.loads(resp.read())


def post(url: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url + "/chat/completions", data=payload, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_request(i: int, *, close: bool = False) -> bytes:
    payload = json.dumps(body(i)).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + payload


def read_response(f: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_the_lm_client_gets_its_answers_64_at_once_over_aiohttp_and_httpx(serve):
    url = serve("--latency", "0.05")
    for transport in (None, httpx.AsyncHTTPTransport()):
        lm = dspex.LM("fake-model", base_url=url, api_key="k", cache=None, concurrency=64, concurrency_start=64, hedge_after=None,
                      transport=transport)  # fmt: skip

        async def all_of_them() -> list[Any]:
            requests = [LMRequest(messages=body(i)["messages"]) for i in range(128)]
            return await asyncio.gather(*(lm.acomplete(r) for r in requests))

        try:
            answers = asyncio.run(all_of_them())
        finally:
            lm.close()
        assert [a.text for a in answers] == [expected(i) for i in range(128)]
        assert answers[0].prompt_tokens > 0 and answers[0].completion_tokens == 11
    seen = counts(url)
    assert seen["ok"] == seen["requests"] == 256 and seen["peak_in_flight"] > 16


def test_the_openai_sdk_sync_and_async_get_their_answers_64_at_once(serve):
    import openai

    url = serve("--latency", "0.05")
    sync = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with ThreadPoolExecutor(64) as pool:
        texts = list(pool.map(lambda i: sync.chat.completions.create(**body(i)).choices[0].message.content, range(128)))
    assert texts == [expected(i) for i in range(128)]
    sync.close()

    async def async_sdk() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        try:
            return await asyncio.gather(*(client.chat.completions.create(**body(i), max_tokens=5) for i in range(128)))
        finally:
            await client.close()

    answers = asyncio.run(async_sdk())
    assert {a.choices[0].message.content for a in answers} == {"[[ ## team ## ]]"}  # cut at max_tokens
    assert {a.choices[0].finish_reason for a in answers} == {"length"}
    seen = counts(url)
    assert seen["ok"] == 256 and seen["peak_in_flight"] > 16
    with urllib.request.urlopen(url + "/models") as resp:
        models = json.loads(resp.read())
    assert models == {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}


def test_above_the_cap_a_429_with_retry_after(serve):
    url = serve("--latency", "0.5", "--max-in-flight", "2", "--faults", '{"retry_after": 0.25}')
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: post(url, json.dumps(body(i)).encode()), range(6)))
    refused = [r for r in results if r[0] == 429]
    assert len(refused) == 4 and {r[1]["Retry-After"] for r in refused} == {"0.25"}
    assert {r[2] for r in refused} == {b"too many requests in flight"}
    assert counts(url) == {"ok": 2, "over_cap": 4, "requests": 6, "peak_in_flight": 2, "early": 0}


def test_faults_counts_and_bodies_are_what_the_aiohttp_server_gives(serve):
    faults = json.dumps({"http_500": 0.1, "http_429": 0.1, "garbled": 0.1, "bad_shape": 0.1, "refusal": 0.1, "http_404": 0.1, "seed": 3})
    answers = []
    for flag in ((), ("--aiohttp",)):
        url = serve("--faults", faults, "--pass-every", "2", *flag)
        got = [post(url, json.dumps(body(i, max_tokens=3 + i % 4)).encode()) for i in range(60)]
        answers.append(([(s, h.get("Retry-After"), h["Content-Type"], b) for s, h, b in got], counts(url)))
    assert answers[0] == answers[1]
    statuses = {s for s, *_ in answers[0][0]}
    assert statuses == {200, 404, 429, 500}
    assert set(answers[0][1]) == {"ok", "http_500", "http_429", "garbled", "bad_shape", "refusal", "http_404", "requests",
                                  "peak_in_flight", "early"}  # fmt: skip


def test_a_stall_answers_after_stall_s(serve):
    url = serve("--faults", '{"stall": 1.0, "stall_s": 0.3}')
    t = time.monotonic()
    status, _, answer = post(url, json.dumps(body(1)).encode())
    assert time.monotonic() - t >= 0.3
    assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == expected(1)
    assert counts(url)["stall"] == 1


def test_keep_alive_and_pipelined_requests_are_answered_in_order_on_one_connection(serve):
    url = serve("--faults", '{"stall": 0.5, "stall_s": 0.2, "seed": 1}')
    with socket.create_connection(("127.0.0.1", port_of(url))) as sock, sock.makefile("rb") as f:
        for i in range(3):  # one after the other, one connection
            sock.sendall(raw_request(i))
            status, _, answer = read_response(f)
            assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == expected(i)
        sock.sendall(b"".join(raw_request(i) for i in range(3, 11)))  # pipelined: some stall, the others wait their turn
        texts = [json.loads(read_response(f)[2])["choices"][0]["message"]["content"] for _ in range(3, 11)]
        assert texts == [expected(i) for i in range(3, 11)]
        sock.sendall(raw_request(11, close=True))
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close" and f.read() == b""  # closed after it
    seen = counts(url)
    assert seen["requests"] == 12 and 0 < seen["stall"] < 12


def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(serve):
    url = serve()
    head, payload = raw_request(1).split(b"\r\n\r\n", 1)
    with socket.create_connection(("127.0.0.1", port_of(url))) as sock, sock.makefile("rb") as f:
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        sock.sendall(payload)
        status, _, answer = read_response(f)
    assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == expected(1)


def test_bad_bytes_on_one_connection_do_not_stop_the_server(serve):
    url = serve()
    port = port_of(url)
    for bad in (b"GARBAGE\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nno colon here\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: many\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"):  # fmt: skip
        with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as f:
            sock.sendall(bad)
            status, headers, _ = read_response(f)
            assert status in (400, 501) and headers["connection"] == "close" and f.read() == b""
    for partial in (b"POST /v1/chat/comp", raw_request(1)[:-10]):  # the client goes away mid-request
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(partial)
    status, _, answer = post(url, b"{not json")
    assert status == 400 and b"not a JSON object" in answer
    assert post(url, b'{"model": "m"}')[0] == 500  # no messages: the responder fails, as under aiohttp
    status, _, answer = post(url, json.dumps(body(1)).encode())
    assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == expected(1)
    with urllib.request.urlopen(url + "/models") as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError, match="404") as info:
        urllib.request.urlopen(url + "/nowhere")
    info.value.close()
