"""The loopback endpoint (issue 22): ``python cases_loopback.py CASE JSON_ARGS`` prints one JSON line.

* ``hop``: one caller, calls one after the other against the fake endpoint: client CPU per call
  (this process, every thread: the ``openai`` SDK, the loopback server and the LM client) and p50
  latency, cache miss and cache hit, through the loopback with the ``openai`` SDK and straight
  through ``LM.complete``.
* ``throughput``: ``n`` examples of a plain function calling the ``openai`` SDK (sync client,
  one shared by every thread), evaluated at ``concurrency``; records into ``cache_dir``.
* ``replay``: the same examples in a new process, ``replay`` mode on that cache: upstream calls.
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


def _evaluate(url: str, n: int, concurrency: int, cache_dir: str, mode: str, client: str = "sync") -> dict[str, Any]:
    import openai

    import pytest_dspex as dspex
    from pytest_dspex.programs.loopback import LoopbackEndpoint

    examples = [
        dspex.Example(message=_messages(i)[0]["content"], team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(n)
    ]
    lm = _lm(url, concurrency, cache_dir, mode)
    with LoopbackEndpoint(lm) as endpoint:
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
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = dspex.Evaluate(examples, lambda e, p, t=None: e.team == p.team, concurrency=concurrency)(program)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if client == "sync":
            sdk.close()
        else:
            from pytest_dspex._support import runtime as _runtime

            _runtime.run_sync(asdk.close())  # the async client lives on the loop that used it
        counts = dict(endpoint.counts)
    usage = lm.usage
    lm.close()
    return {
        "wall_s": wall, "ex_per_s": n / wall, "cpu_ms_per_example": cpu / n * 1e3, "score": result.score,
        "errors": len(result.errors), "upstream_calls": usage.calls - usage.cache_hits, "cache_hits": usage.cache_hits,
        "attributed_calls": sum(int(r.usage.get("calls", 0)) for r in result.records), "endpoint": counts,
    }  # fmt: skip


def case_throughput(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    return _evaluate(url, n, concurrency, cache_dir, "on", client)


def case_replay(url: str, n: int, concurrency: int, cache_dir: str, client: str = "sync") -> dict[str, Any]:
    return _evaluate(url, n, concurrency, cache_dir, "replay", client)


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
    finally:
        server.kill()
    return lines


if __name__ == "__main__":
    case, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"case_{case}"](**args)))
