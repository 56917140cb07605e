"""The loopback endpoint (issue 22): ``python cases_loopback.py CASE JSON_ARGS`` prints one JSON line.

* ``hop``: one caller, calls one after the other against the fake endpoint: client CPU per call
  (this process, every thread: the ``openai`` SDK, the loopback server and the LM client) and p50
  latency, cache miss and cache hit, through the loopback with the ``openai`` SDK and straight
  through ``LM.complete``.
* ``throughput``: ``n`` examples of a plain function calling the ``openai`` SDK (sync client,
  one shared by every thread), evaluated at ``concurrency``; records into ``cache_dir``.
* ``replay``: the same examples in a new process, ``replay`` mode on that cache: upstream calls.
* ``floor`` / ``split`` / ``piped``: where the evaluating process's CPU goes (``where_the_cpu_goes``).
* ``served_hop``: the served hop alone (no SDK): the evaluating process's CPU per call, in blocks
  (not in the section: ``python bench/cases_loopback.py served_hop '{"url": ..., "per": 1280,
  "blocks": 6, "cache_dir": ...}'`` against a 50 ms fake endpoint; bench/RESULTS-issue22.md).
* ``pytest``: the same function gated by pytest itself (``--dspex-openai-env``, the application's
  module-level ``OpenAI()``), in per-example or dataset mode, in one process or under ``-n 2``:
  examples per second from the first test's start to the last one's end, CPU of every process of
  the run (pytest's, its workers') per example, upstream calls and the verdict.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any


def _messages(i: int) -> list[dict[str, str]]:
    text = "I was charged twice" if i % 2 else "the app crashes"
    return [{"role": "user", "content": f"Message: case {i}: {text}"}]


def _lm(url: str, concurrency: int, cache_dir: str | None = None, mode: str = "on") -> Any:
    import pytest_dspex as dspex

    cache = dspex.ResponseCache(cache_dir, mode) if cache_dir else dspex.ResponseCache(None)  # type: ignore[arg-type]
    return dspex.LM("fake", base_url=url, api_key="bench", cache=cache, concurrency=concurrency, retries=0, hedge_after=None)


def case_hop(url: str, n: int) -> dict[str, Any]:
    import openai

    from pytest_dspex.lm.types import LMRequest
    from pytest_dspex.programs.loopback import LoopbackEndpoint

    out: dict[str, Any] = {}
    lm = _lm(url, 16)
    lm.complete(LMRequest(messages=_messages(-1)))  # connection and loop set up outside the timers
    for tier, offset in (("miss", 0), ("hit", 0)):
        lat, cpu0 = [], time.process_time()
        for i in range(offset, offset + n):
            t0 = time.perf_counter()
            lm.complete(LMRequest(messages=_messages(i)))
            lat.append(time.perf_counter() - t0)
        out[f"direct_{tier}_cpu_ms"] = (time.process_time() - cpu0) / n * 1e3
        out[f"direct_{tier}_p50_ms"] = statistics.median(lat) * 1e3
    lm.close()
    with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:  # the SDK alone, straight to the endpoint
        client.chat.completions.create(model="m", messages=_messages(-1))  # type: ignore[arg-type]
        lat, cpu0 = [], time.process_time()
        for i in range(n):
            t0 = time.perf_counter()
            client.chat.completions.create(model="m", messages=_messages(i))  # type: ignore[arg-type]
            lat.append(time.perf_counter() - t0)
        out["sdk_miss_cpu_ms"] = (time.process_time() - cpu0) / n * 1e3
        out["sdk_miss_p50_ms"] = statistics.median(lat) * 1e3
    for path, in_process in (("loopback", True), ("loopback_tcp", False)):
        lm = _lm(url, 16)
        with LoopbackEndpoint(lm, in_process=in_process) as endpoint, openai.OpenAI(base_url=endpoint.base_url, api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="m", messages=_messages(-1))  # type: ignore[arg-type]
            for tier in ("miss", "hit"):
                lat, cpu0 = [], time.process_time()
                for i in range(n):
                    t0 = time.perf_counter()
                    client.chat.completions.create(model="m", messages=_messages(i))  # type: ignore[arg-type]
                    lat.append(time.perf_counter() - t0)
                out[f"{path}_{tier}_cpu_ms"] = (time.process_time() - cpu0) / n * 1e3
                out[f"{path}_{tier}_p50_ms"] = statistics.median(lat) * 1e3
            assert endpoint.counts["cache_hits"] == n, endpoint.counts
        lm.close()
    return out


def _evaluate(url: str, n: int, concurrency: int, cache_dir: str, mode: str, client: str = "sync", served: bool = False) -> dict[str, Any]:
    """``served``: the product's ``--dspex-loopback-process=on`` path — the run's coordinator in this
    process, the evaluating LM linked to it, the loopback's LM work in a serving process linked to it
    too, every call attributed to its example."""
    import openai

    import pytest_dspex as dspex
    from pytest_dspex.programs.loopback import LoopbackEndpoint

    examples = [
        dspex.Example(message=_messages(i)[0]["content"], team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(n)
    ]
    serving = coordinator = None
    if served:
        from pytest_dspex.lm.coordinator import Coordinator
        from pytest_dspex.lm.link import RunLink
        from pytest_dspex.programs.piped import ServingProcess

        coordinator = Coordinator()
        coordinator.start()
        cache = dspex.ResponseCache(cache_dir, mode)  # type: ignore[arg-type]
        lm = dspex.LM("fake", base_url=url, api_key="bench", cache=cache, concurrency=concurrency, retries=0, hedge_after=None,
                      limits=RunLink(coordinator.address, coordinator.token))  # fmt: skip
        config = {"model": "fake", "url": url, "api_key": "bench", "env_key": None, "budget": None,
                  "settings": {"concurrency": concurrency, "retries": 0, "hedge_after": None},
                  "cache": {"mode": mode, "directory": cache_dir}, "limits": f"{coordinator.address} {coordinator.token}"}  # fmt: skip
        serving = ServingProcess(lambda: config)
    else:
        lm = _lm(url, concurrency, cache_dir, mode)
    with LoopbackEndpoint(lm, serving=serving) as endpoint:
        if client == "sync":
            sdk = openai.OpenAI(base_url=endpoint.base_url, api_key="x", max_retries=0)

            def triage(message: str) -> str:
                reply = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
                return (reply.choices[0].message.content or "").strip()

            program = dspex.program(triage, outputs=["team"])
        else:
            asdk = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key="x", max_retries=0)

            async def atriage(message: str) -> str:
                reply = await asdk.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
                return (reply.choices[0].message.content or "").strip()

            program = dspex.program(atriage, outputs=["team"])
        serve0 = 0.0
        if serving is not None:  # started (and its imports paid) before the timers, as the prototype's
            warm = openai.OpenAI(base_url=endpoint.base_url, api_key="x", max_retries=0)
            try:
                warm.chat.completions.create(model="m", messages=_messages(-1))  # type: ignore[arg-type]
            except openai.APIStatusError:
                pass  # a replay miss: the process is up all the same
            warm.close()
            serve0 = _cpu_of(serving.pid)  # type: ignore[arg-type]
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = dspex.Evaluate(examples, lambda e, p, t=None: e.team == p.team, concurrency=concurrency)(program)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        serve_cpu = _cpu_of(serving.pid) - serve0 if serving is not None else None  # type: ignore[arg-type]
        if client == "sync":
            sdk.close()
        else:
            from pytest_dspex._support import runtime as _runtime

            _runtime.run_sync(asdk.close())  # the async client lives on the loop that used it
        counts = dict(endpoint.counts)
        lost = serving.lost if serving is not None else None
    usage = lm.usage
    lm.close()
    upstream = usage.calls - usage.cache_hits
    if served:
        coordinator.stop()  # type: ignore[union-attr]
        upstream = counts.get("answered", 0) - counts.get("cache_hits", 0)  # the serving process's LM made them
    out = {
        "wall_s": wall, "ex_per_s": n / wall, "cpu_ms_per_example": cpu / n * 1e3, "score": result.score,
        "errors": len(result.errors), "upstream_calls": upstream, "cache_hits": counts.get("cache_hits", usage.cache_hits),
        "attributed_calls": sum(int(r.usage.get("calls", 0)) for r in result.records),
        "attributed_cache_hits": sum(int(r.usage.get("cache_hits", 0)) for r in result.records), "endpoint": counts, "lost": lost,
    }  # fmt: skip
    if serve_cpu is not None:
        out["serve_cpu_ms_per_example"] = serve_cpu / n * 1e3
    return out


def case_throughput(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    return _evaluate(url, n, concurrency, cache_dir, "on", client)


def case_replay(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    return _evaluate(url, n, concurrency, cache_dir, "replay", client)


def case_served(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync", mode: str = "on") -> dict[str, Any]:
    """The product's serving process (``--dspex-loopback-process=on``): ``throughput`` (``mode`` on) or
    ``replay`` (``mode`` replay, a new process) with the loopback's LM work in a process of its own."""
    return _evaluate(url, n, concurrency, cache_dir, mode, client, served=True)


def _triage(sdk: Any, client: str) -> Any:
    """The function under the gate, on ``sdk`` (an ``openai`` client built by the caller)."""
    if client == "sync":

        def triage(message: str) -> str:
            reply = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
            return (reply.choices[0].message.content or "").strip()

        return triage

    async def atriage(message: str) -> str:
        reply = await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
        return (reply.choices[0].message.content or "").strip()

    return atriage


def _examples(n: int) -> list[Any]:
    import pytest_dspex as dspex

    return [dspex.Example(message=_messages(i)[0]["content"], team="billing" if i % 2 else "technical").with_inputs("message") for i in range(n)]


def case_floor(n: int, concurrency: int, client: str = "sync", latency: float = 0.05) -> dict[str, Any]:
    """The SDK and the evaluation alone: the in-process hop answered after ``latency`` from pre-built
    bytes, no LM client, no cache. What the evaluating process spends whatever the endpoint does."""
    import asyncio

    import openai

    import pytest_dspex as dspex
    from pytest_dspex.lm import callers

    def body(team: str) -> bytes:
        return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": team}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}).encode()  # fmt: skip

    answers = {team: body(team) for team in ("billing", "technical")}

    async def respond(method: str, path: str, raw: bytes) -> callers.Reply:
        await asyncio.sleep(latency)
        return 200, {"content-type": "application/json"}, answers["billing" if b"charged" in raw else "technical"]

    with callers.open_address("127.0.0.1", 9, respond):  # nothing listens there: every request is answered in process
        base = "http://127.0.0.1:9/v1"
        sdk = (openai.OpenAI if client == "sync" else openai.AsyncOpenAI)(base_url=base, api_key="x", max_retries=0)
        program = dspex.program(_triage(sdk, client), outputs=["team"])
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = dspex.Evaluate(_examples(n), lambda e, p, t=None: e.team == p.team, concurrency=concurrency)(program)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"wall_s": wall, "ex_per_s": n / wall, "cpu_ms_per_example": cpu / n * 1e3, "score": result.score}


def case_served_hop(url: str, per: int, blocks: int, cache_dir: str, concurrency: int = 64) -> dict[str, Any]:
    """The served hop alone, as the evaluating process pays for it: an httpx request handed to the
    (wrapped) transport, answered by the serving process, the httpx ``Response`` back — no SDK, no
    evaluation. ``concurrency`` tasks at once, ``blocks`` blocks of ``per`` calls after a warm-up;
    CPU of this process (every thread: the loop, the coordinator) per call of each block."""
    import asyncio

    import httpx

    import pytest_dspex as dspex
    from pytest_dspex._support import runtime
    from pytest_dspex.lm.coordinator import Coordinator
    from pytest_dspex.lm.link import RunLink
    from pytest_dspex.lm.usage import track_usage
    from pytest_dspex.programs.loopback import LoopbackEndpoint
    from pytest_dspex.programs.piped import ServingProcess

    coordinator = Coordinator()
    coordinator.start()
    lm = dspex.LM("fake", base_url=url, api_key="bench", cache=dspex.ResponseCache(cache_dir, "on"), concurrency=concurrency, retries=0,
                  hedge_after=None, limits=RunLink(coordinator.address, coordinator.token))  # fmt: skip
    config = {"model": "fake", "url": url, "api_key": "bench", "env_key": None, "budget": None,
              "settings": {"concurrency": concurrency, "retries": 0, "hedge_after": None},
              "cache": {"mode": "on", "directory": cache_dir}, "limits": f"{coordinator.address} {coordinator.token}"}  # fmt: skip
    serving = ServingProcess(lambda: config)
    count = iter(range(10**9))
    with LoopbackEndpoint(lm, serving=serving) as endpoint:
        transport, target = httpx.AsyncHTTPTransport(), endpoint.base_url + "/chat/completions"

        async def call() -> None:
            body = json.dumps({"model": "m", "messages": _messages(next(count))}).encode()
            with track_usage() as usage:
                response = await transport.handle_async_request(httpx.Request("POST", target, content=body))
            assert response.status_code == 200 and usage.calls == 1, (response.status_code, usage)

        async def block(n: int) -> None:
            async def worker() -> None:
                for _ in range(n // concurrency):
                    await call()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        runtime.run_sync(block(2 * concurrency))  # starts the serving process (these are answered in process)
        while not serving.ready:
            time.sleep(0.05)
        runtime.run_sync(block(4 * concurrency))
        cpu = []
        for _ in range(blocks):
            cpu0 = time.process_time()
            runtime.run_sync(block(per))
            cpu.append((time.process_time() - cpu0) / per * 1e6)
        forwarded, lost = serving.forwarded, serving.lost
    lm.close()
    coordinator.stop()
    return {"cpu_us_per_call": cpu, "median_us": statistics.median(cpu), "forwarded": forwarded, "lost": lost}


def case_split(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    """Option (b)'s best case: the loopback endpoint and its LM in a process of their own, the SDK
    in the evaluating one, over TCP (no attribution to examples). CPU of each process per example."""
    import os
    import subprocess

    serve = f"""
import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import cases_loopback as cl
from pytest_dspex.programs.loopback import LoopbackEndpoint
with LoopbackEndpoint(cl._lm({url!r}, {concurrency}, {cache_dir!r}, "on"), in_process=False) as endpoint:
    print("READY", endpoint.base_url, flush=True)
    sys.stdin.read()
"""
    server = subprocess.Popen([sys.executable, "-c", serve], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = server.stdout.readline().split()[1]
        return _sdk_run(base, client, n, concurrency, server.pid)
    finally:
        server.kill()


def _cpu_of(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from /proc."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sdk_run(base: str, client: str, n: int, concurrency: int, serving_pid: int) -> dict[str, Any]:
    """An ``openai``-SDK program evaluated on ``n`` examples through ``base``: wall, this process's CPU
    and the serving process's CPU per example."""
    import openai

    import pytest_dspex as dspex

    cpu_of = _cpu_of
    sdk = (openai.OpenAI if client == "sync" else openai.AsyncOpenAI)(base_url=base, api_key="x", max_retries=0)
    program = dspex.program(_triage(sdk, client), outputs=["team"])
    serve0, cpu0, t0 = cpu_of(serving_pid), time.process_time(), time.perf_counter()
    result = dspex.Evaluate(_examples(n), lambda e, p, t=None: e.team == p.team, concurrency=concurrency)(program)
    wall, cpu, serve_cpu = time.perf_counter() - t0, time.process_time() - cpu0, cpu_of(serving_pid) - serve0
    return {"wall_s": wall, "ex_per_s": n / wall, "cpu_ms_per_example": cpu / n * 1e3, "serve_cpu_ms_per_example": serve_cpu / n * 1e3,
            "score": result.score, "errors": len(result.errors)}  # fmt: skip


_PIPED_SERVE = """
import asyncio, json, struct, sys
sys.path.insert(0, {here!r})
import cases_loopback as cl
from pytest_dspex.programs.loopback import LoopbackEndpoint

endpoint = LoopbackEndpoint(cl._lm({url!r}, {concurrency}, {cache_dir!r}, "on"))


async def serve(reader, writer):
    out = []

    def flush():
        writer.write(b"".join(out))
        out.clear()

    async def one(rid, method, path, body):
        status, headers, content = await endpoint.respond(method, path, body)
        head = json.dumps(headers).encode()
        if not out:  # the replies ready in one turn of the loop go in one write
            asyncio.get_running_loop().call_soon(flush)
        out.append(struct.pack("!IHII", rid, status, len(head), len(content)) + head + content)

    tasks = set()
    while True:
        try:
            rid, size = struct.unpack("!II", await reader.readexactly(8))
        except asyncio.IncompleteReadError:
            return
        method, path, body = (await reader.readexactly(size)).split(b"\\0", 2)
        task = asyncio.ensure_future(one(rid, method.decode(), path.decode(), body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def main():
    from pytest_dspex._support import runtime
    server = await asyncio.start_unix_server(serve, {sock!r})
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

from pytest_dspex._support import runtime
runtime.run_sync(main())
"""


def case_piped(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    """The design not built: the in-process hop kept (the SDK's request answered in the process), its
    raw bytes forwarded over one unix-socket pipe to a helper process that owns the endpoint and its
    LM (cache, upstream call), the reply's bytes sent back; no attribution to examples. CPU of each
    process per example: what moving the hop's work out of the evaluating process would leave it."""
    import asyncio
    import itertools
    import os
    import struct
    import subprocess
    import tempfile

    from pytest_dspex._support import runtime as _runtime
    from pytest_dspex.lm import callers

    sock = os.path.join(tempfile.mkdtemp(prefix="dspex-pipe-"), "s")
    serve = _PIPED_SERVE.format(here=os.path.dirname(os.path.abspath(__file__)), url=url, concurrency=concurrency, cache_dir=cache_dir, sock=sock)
    server = subprocess.Popen([sys.executable, "-c", serve], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("READY")
        waiting: dict[int, asyncio.Future[callers.Reply]] = {}
        ids = itertools.count()
        conn: dict[str, Any] = {}

        async def connect() -> None:
            reader, writer = await asyncio.open_unix_connection(sock)
            conn["writer"] = writer

            async def read() -> None:
                while True:
                    try:
                        rid, status, hlen, blen = struct.unpack("!IHII", await reader.readexactly(14))
                    except asyncio.IncompleteReadError:  # the helper is gone: whoever waits fails, nothing hangs
                        for fut in waiting.values():
                            if not fut.done():
                                fut.set_exception(RuntimeError("the serving process is gone"))
                        return
                    rest = await reader.readexactly(hlen + blen)
                    waiting.pop(rid).set_result((status, json.loads(rest[:hlen]), rest[hlen:]))

            conn["reader"] = asyncio.ensure_future(read())

        _runtime.run_sync(connect())

        out: list[bytes] = []

        def flush() -> None:
            conn["writer"].write(b"".join(out))
            out.clear()

        async def respond(method: str, path: str, raw: bytes) -> callers.Reply:
            if conn["reader"].done():
                raise RuntimeError("the serving process is gone")
            rid = next(ids)
            fut = asyncio.get_running_loop().create_future()
            waiting[rid] = fut
            payload = method.encode() + b"\0" + path.encode() + b"\0" + raw
            if not out:  # the requests sent in one turn of the loop go in one write
                asyncio.get_running_loop().call_soon(flush)
            out.append(struct.pack("!II", rid, len(payload)) + payload)
            return await fut

        with callers.open_address("127.0.0.1", 9, respond):
            base = "http://127.0.0.1:9/v1"
            return _sdk_run(base, client, n, concurrency, server.pid)
    finally:
        server.kill()


APP = '''
import os, time
import openai

client = openai.OpenAI(max_retries=0)  # the application's client: OPENAI_BASE_URL / OPENAI_API_KEY


def triage(message: str) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    return (reply.choices[0].message.content or "").strip()
'''

TESTS = '''
import pytest
from app import triage

team = lambda e, p, t=None: e.team == p.team


@pytest.mark.dspex_program(triage, outputs=["team"], name="triage_each")
@pytest.mark.dspex_metric(team, threshold=0.9)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)


@pytest.mark.dspex_program(triage, outputs=["team"], name="triage_all")
@pytest.mark.dspex_metric(team, threshold=0.9)
def test_all(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''

CONFTEST = '''
import os, time

def pytest_runtest_setup(item):
    _mark("start")

def pytest_runtest_teardown(item):
    _mark("end")

def _mark(what):
    with open(os.environ["DSPEX_BENCH_TIMES"], "a") as f:
        f.write(f"{what} {time.monotonic()}\\n")
'''


def _project(n: int) -> str:
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="dspex-bench-loopback-pytest-"))
    (folder / "data").mkdir()
    rows = [{"message": _messages(i)[0]["content"], "team": "billing" if i % 2 else "technical"} for i in range(n)]
    (folder / "data" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "app.py").write_text(APP)
    (folder / "test_app.py").write_text(TESTS)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "pytest.ini").write_text("[pytest]\ndspex_openai_env = true\n")
    return str(folder)


def case_pytest(url: str, n: int, concurrency: int, folder: str, mode: str, workers: int, cache: str, cache_dir: str, serving: str = "off") -> dict[str, Any]:
    """One pytest run of ``folder``'s ``test_each`` (``mode="each"``) or ``test_all``, ``workers`` 0: one process;
    the response cache in ``cache_dir`` (a new folder: cold); ``serving``: ``--dspex-loopback-process``
    (its serving process's CPU is in the run's: waited for, it counts in the children's)."""
    import os
    import re
    import resource
    import subprocess
    import urllib.request
    from pathlib import Path

    times = Path(folder) / "times.txt"
    times.unlink(missing_ok=True)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OPENAI_API_KEY": "bench", "DSPEX_BENCH_TIMES": str(times)}
    with urllib.request.urlopen(url + "/_counts") as resp:
        before = json.loads(resp.read()).get("requests", 0)
    spread_args = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--dspex-base-url={url}", "--dspex-model=fake-model",
         f"--dspex-cache={cache}", f"--dspex-cache-dir={cache_dir}", f"--dspex-concurrency={concurrency}",
         "--dspex-missing-golden=zero-shot", "--tb=short", f"--dspex-loopback-process={serving}", *spread_args, f"test_app.py::test_{mode}"],
        cwd=folder, env=env, capture_output=True, text=True,
    )  # fmt: skip
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime - cpu0
    with urllib.request.urlopen(url + "/_counts") as resp:
        after = json.loads(resp.read()).get("requests", 0)
    marks = [line.split() for line in times.read_text().splitlines()] if times.exists() else []
    starts, ends = [float(v) for k, v in marks if k == "start"], [float(v) for k, v in marks if k == "end"]
    tests_s = max(ends) - min(starts) if starts and ends else float("nan")
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0:
        raise RuntimeError(f"pytest failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
    return {"tests_s": tests_s, "ex_per_s": n / tests_s, "cpu_ms_per_example": cpu / n * 1e3, "upstream_calls": after - before,
            "summary": re.sub(r" in [0-9.]+s.*", "", last.strip("= "))}  # fmt: skip


def section(ctx: Any) -> list[str]:
    """bench/run.py's ``loopback`` section: the hop's cost, and 1,000 examples of an openai-SDK function."""
    import tempfile

    from common import run_case, spread, start_server

    n_hop = 200 if ctx.fast else 1000
    runs = 1 if ctx.fast else 3
    lines = ["The loopback endpoint's cost: one caller, calls one after the other, against the fake endpoint with",
             "no latency; CPU is the calling process's (the `openai` SDK, the endpoint and the LM client; the fake",
             "endpoint is another process). `direct`: `LM.complete` on the same LM, no SDK and no hop.", "",
             "| path | CPU per call, miss | p50, miss | CPU per call, hit | p50, hit |", "|---|---|---|---|---|"]  # fmt: skip
    server, url = start_server(0.0)
    try:
        hops = [run_case(ctx.py, "cases_loopback.py", "hop", url=url, n=n_hop) for _ in range(runs)]
    finally:
        server.kill()
    labels = {
        "direct": "`LM.complete` (no SDK, no hop)",
        "sdk": "`openai` SDK straight to the endpoint (no LM client, no cache)",
        "loopback": "`openai` SDK → loopback (in process) → `LM`",
        "loopback_tcp": "`openai` SDK → loopback over TCP → `LM`",
    }
    for path, label in labels.items():
        cells = [spread([h[f"{path}_{tier}_{what}"] for h in hops], "{:.3f}") + " ms" if f"{path}_{tier}_{what}" in hops[0] else "-"
                 for tier in ("miss", "hit") for what in ("cpu_ms", "p50_ms")]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # what the hop itself adds: the loopback path minus the SDK's own cost and the LM client's (direct)
    for path in ("loopback", "loopback_tcp"):
        added = statistics.median([h[f"{path}_miss_cpu_ms"] - h["sdk_miss_cpu_ms"] - h["direct_miss_cpu_ms"] for h in hops])
        ctx.target(f"loopback: CPU the hop adds per call beyond the SDK and the LM client ({'in process' if path == 'loopback' else 'TCP'}, miss)",
                   f"{added:.3f} ms", "figure", None)  # fmt: skip
    n, c, latency = (300 if ctx.fast else 1000), 64, 0.05
    limit = c / latency
    lines += ["", f"A plain function calling the `openai` SDK (one client shared by every example), N={n}, C={c},",
              f"{latency * 1e3:.0f} ms endpoint (limit {limit:.0f} ex/s); then the same in a new process with `replay`.",
              "CPU per example is the evaluating process's (SDK, loopback, LM client, evaluation).", "",
              "| client | run | ex/s | share of the limit | CPU per example | upstream calls | calls attributed to examples |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    server, url = start_server(latency)
    try:
        for client in ("sync", "async"):
            rows = []
            for _ in range(runs):
                cache_dir = tempfile.mkdtemp(prefix="dspex-bench-loopback-")
                args = {"url": url, "n": n, "concurrency": c, "cache_dir": cache_dir, "client": client}
                rows.append((run_case(ctx.py, "cases_loopback.py", "throughput", **args),
                             run_case(ctx.py, "cases_loopback.py", "replay", **args)))  # fmt: skip
            cold, replay = [r[0] for r in rows], [r[1] for r in rows]
            for label, rs in (("record (cache on, cold)", cold), ("replay (new process)", replay)):
                lines.append(f"| `{'OpenAI' if client == 'sync' else 'AsyncOpenAI'}` | {label} | {spread([r['ex_per_s'] for r in rs], '{:.0f}')} | "
                             f"{spread([r['ex_per_s'] / limit for r in rs])} | {spread([r['cpu_ms_per_example'] for r in rs], '{:.3f}')} ms | "
                             f"{spread([r['upstream_calls'] for r in rs], '{:.0f}')} | {spread([r['attributed_calls'] for r in rs], '{:.0f}')} |")  # fmt: skip
            if client == "sync":
                share = statistics.median(r["ex_per_s"] for r in cold) / limit
                upstream = max(r["upstream_calls"] for r in replay)
                ok = all(r["score"] == 1.0 and r["errors"] == 0 and r["attributed_calls"] == n for r in cold + replay)
                ctx.target(f"loopback: {n} openai-SDK examples, C={c}, 50 ms: share of the limit", f"{share:.2f}", "≥ 0.7", share >= 0.7 and ok)
                ctx.target(f"loopback: replay of the {n}: upstream calls", str(upstream), "0", upstream == 0 and ok)
        lines += where_the_cpu_goes(ctx, url, n, c, limit, runs)
        lines += under_pytest(ctx, url, n, c, limit)
    finally:
        server.kill()
    return lines


def where_the_cpu_goes(ctx: Any, url: str, n: int, c: int, limit: float, runs: int) -> list[str]:
    """Issue 22's options, measured in one run: what the SDK and the evaluation cost alone (the floor),
    and the loopback endpoint with its LM moved to a process of their own (option b)."""
    import tempfile

    from common import run_case, spread

    lines = ["", f"Where the evaluating process's CPU goes (N={n}, C={c}, 50 ms): the same function, first with the hop",
             "answered in 50 ms from pre-built bytes (no LM client, no cache: the `openai` SDK and the evaluation alone),",
             "then with the loopback endpoint and its LM in a process of their own, the SDK reaching it over TCP,",
             "then with the in-process hop kept and the request's bytes forwarded over one unix-socket pipe to that",
             "process (no attribution to examples in either: the best cases of moving the serving out).", "",
             "| client | path | ex/s | share of the limit | CPU per example, evaluating process | CPU per example, serving process |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for client in ("sync", "async"):
        floor = [run_case(ctx.py, "cases_loopback.py", "floor", n=n, concurrency=c, client=client) for _ in range(runs)]
        split = [run_case(ctx.py, "cases_loopback.py", "split", url=url, n=n, concurrency=c, client=client,
                          cache_dir=tempfile.mkdtemp(prefix="dspex-bench-loopback-")) for _ in range(runs)]  # fmt: skip
        name = "OpenAI" if client == "sync" else "AsyncOpenAI"
        piped = [run_case(ctx.py, "cases_loopback.py", "piped", url=url, n=n, concurrency=c, client=client,
                          cache_dir=tempfile.mkdtemp(prefix="dspex-bench-loopback-")) for _ in range(runs)]  # fmt: skip
        served = [run_case(ctx.py, "cases_loopback.py", "served", url=url, n=n, concurrency=c, client=client,
                           cache_dir=tempfile.mkdtemp(prefix="dspex-bench-loopback-")) for _ in range(runs)]  # fmt: skip
        for label, rs in (("SDK + evaluation only (floor)", floor), ("endpoint + LM in another process, SDK over TCP", split),
                          ("hop in process, its bytes piped to endpoint + LM in another process", piped),
                          ("the product's serving process (`--dspex-loopback-process=on`: run-wide limits, attributed)", served)):  # fmt: skip
            serving = spread([r["serve_cpu_ms_per_example"] for r in rs], "{:.3f}") + " ms" if "serve_cpu_ms_per_example" in rs[0] else "-"
            lines.append(f"| `{name}` | {label} | {spread([r['ex_per_s'] for r in rs], '{:.0f}')} | {spread([r['ex_per_s'] / limit for r in rs])} | "
                         f"{spread([r['cpu_ms_per_example'] for r in rs], '{:.3f}')} ms | {serving} |")  # fmt: skip
        ctx.target(f"loopback: `{name}` SDK + evaluation alone (no LM), N={n}: CPU per example", f"{statistics.median(r['cpu_ms_per_example'] for r in floor):.3f} ms",
                   "figure", None)  # fmt: skip
        ctx.target(f"loopback: `{name}`, hop piped to a serving process, N={n}: share of the limit", f"{statistics.median(r['ex_per_s'] for r in piped) / limit:.2f}",
                   "figure", None)  # fmt: skip
        share = statistics.median(r["ex_per_s"] for r in served) / limit
        attributed = all(r["attributed_calls"] == n and r["errors"] == 0 and r["lost"] is None for r in served)
        ctx.target(f"loopback: {n} `{name}` examples, C={c}, 50 ms, serving process (product): share of the limit", f"{share:.2f}",
                   "≥ 0.7" if client == "async" else "figure", (share >= 0.7 and attributed) if client == "async" else None)  # fmt: skip
    return lines


def under_pytest(ctx: Any, url: str, n: int, c: int, limit: float) -> list[str]:
    """The same function gated by pytest (``--dspex-openai-env``): each test mode, one process and ``-n 2``."""
    import tempfile

    folder = _project(n)
    lines = ["", f"Through pytest (`dspex_openai_env = true`, the application's module-level `OpenAI()`), N={n},",
             f"`--dspex-concurrency={c}` (run-wide under `-n 2`), 50 ms endpoint: examples per second from the first test's",
             "start to the last one's end; CPU of every process of the run per example (pytest's start-up included);",
             "a cold run (new cache), then `--dspex-cache=replay` on it.", "",
             "| test mode | processes | run | ex/s | share of the limit | CPU per example, whole run | upstream calls | pytest says |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode, label in (("all", "dataset (`dspex_evaluate`)"), ("each", "per-example")):
        for workers in (0, 2):
            cache_dir = tempfile.mkdtemp(prefix="dspex-bench-loopback-")
            for cache in ("on", "replay"):
                from common import run_case

                r = run_case(ctx.py, "cases_loopback.py", "pytest", url=url, n=n, concurrency=c, folder=folder, mode=mode,
                             workers=workers, cache=cache, cache_dir=cache_dir)  # fmt: skip
                lines.append(f"| {label} | {'-n 2' if workers else 'one'} | {'cold' if cache == 'on' else 'replay'} | {r['ex_per_s']:.0f} | "
                             f"{r['ex_per_s'] / limit:.2f} | {r['cpu_ms_per_example']:.2f} ms | {r['upstream_calls']} | {r['summary']} |")  # fmt: skip
                if cache == "on":
                    ctx.target(f"loopback through pytest, {label}, {'-n 2' if workers else 'one process'}, cold: share of the limit",
                               f"{r['ex_per_s'] / limit:.2f}", "figure", None)  # fmt: skip
    return lines


if __name__ == "__main__":
    case, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"case_{case}"](**args)))
