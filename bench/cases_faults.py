"""Fault benchmarks (issue 9, DESIGN §9), run by hand; ``bench/run.py`` includes their rows.

    python bench/cases_faults.py                 # all three, prints the table rows
    python bench/cases_faults.py --only timing --repeat 3
    python bench/cases_faults.py CASE JSON_ARGS  # one case in this process (used by the driver)

* degraded: the endpoint of issue 9 (15% HTTP 500, 15% 429 with ``Retry-After: 0``, 5% garbled,
  20 ms), 1000 examples, ``Evaluate(concurrency=16)``, ``LM(concurrency=16)``, library defaults
  otherwise; one fake server per seed. Figure: the worst seed's infrastructure-error share.
* dead: 1000 examples against a port nobody listens on, library defaults: time until every example
  is accounted for.
* timing: 500 examples, 50 ms, concurrency 32, with 10% 500 + 10% 429 (Retry-After 50 ms) + 5%
  garbled + 2% requests hanging 10 s, against the same run fault-free. Library DEFAULTS: only the
  concurrency (32) is set — retries 3 with a 0.1 s full-jitter backoff base, ``hedge_after="auto"``
  (a request unanswered after max(0.1 s, 2 × the recent p95 latency) gets a duplicate), timeout 120 s.
  The hedge count of the fault-free run is reported too: it must be ~0.
* quota: 60 examples against an endpoint answering 429 (``Retry-After: 2``) to every request — a spent
  quota (TRIAL finding 2), library defaults: time and requests until every example is accounted for,
  and their error kinds (all ``rate_limited``; before, the run was still waiting after 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
INFRA = {"lm_unavailable", "lm_timeout", "lm_http", "rate_limited", "lm_response", "budget", "cache_miss", "timeout"}


def _dev(n: int):
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(n)
    ]  # fmt: skip


def _metric(example, prediction, trace=None):
    return example.team == prediction.team


def _run(lm, n: int, concurrency: int) -> tuple[float, object]:
    import pytest_dspex as dspex

    t0 = time.perf_counter()
    result = dspex.Evaluate(_dev(n), _metric, concurrency=concurrency)(dspex.Predict("message -> team", lm=lm))
    return time.perf_counter() - t0, result


def case_degraded(url: str, n: int) -> dict:
    import pytest_dspex as dspex

    lm = dspex.LM("fake", base_url=url, api_key="bench", cache=None, concurrency=16)
    wall, res = _run(lm, n, 16)
    infra = sum(1 for r in res.records if r.error_kind in INFRA)
    return {"wall_s": wall, "n": res.n, "infra": infra, "errors": res.errors_by_kind, "trips": lm.breaker.trips,
            "retries": res.usage.retries, "limit_decreases": lm.limiter.decreases}  # fmt: skip


def case_dead(n: int) -> dict:
    import pytest_dspex as dspex

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lm = dspex.LM("fake", base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", cache=None)
    wall, res = _run(lm, n, 16)
    return {"wall_s": wall, "n": res.n, "errors": res.errors_by_kind, "breaker_failures": lm.breaker.failures}


def case_timing(url: str, n: int) -> dict:
    import pytest_dspex as dspex

    lm = dspex.LM("fake", base_url=url, api_key="bench", cache=None, concurrency=32)  # defaults otherwise
    wall, res = _run(lm, n, 32)
    scored = sum(1 for r in res.records if r.error_kind is None)
    return {"wall_s": wall, "scored": scored, "n": res.n, "retries": res.usage.retries, "hedges": res.usage.hedges,
            "errors": res.errors_by_kind}  # fmt: skip


# -- driver ------------------------------------------------------------------------------------
def _case(name: str, **args: object) -> dict:
    sys.path.insert(0, str(HERE))
    from common import run_case

    return run_case(sys.executable, "cases_faults.py", name, **args)


def case_quota(url: str, n: int) -> dict:
    import urllib.request

    import pytest_dspex as dspex

    lm = dspex.LM("fake", base_url=url, api_key="bench", cache=None, concurrency=16)
    wall, res = _run(lm, n, 16)
    with urllib.request.urlopen(url + "/_counts") as answer:  # the bench server on 127.0.0.1
        counts = json.loads(answer.read())
    return {"n": res.n, "wall_s": wall, "kinds": res.errors_by_kind, "requests": counts["requests"], "trips": lm.breaker.trips}


def quota_row(n: int = 60) -> tuple[str, ...]:
    server, url = _server(0.0, {"http_429": 1.0, "retry_after": 2})
    try:
        r = _case("quota", url=url, n=n)
    finally:
        server.kill()  # type: ignore[attr-defined]
        server.wait()  # type: ignore[attr-defined]
    return (f"endpoint answering 429 (Retry-After 2 s) to everything, {n} examples, defaults",
            f"{r['n']} accounted in {r['wall_s']:.1f} s, {r['requests']} requests ({r['kinds']})",
            "-", "every example rate_limited, ≤ 90 s", f"breaker trips {r['trips']}; before: still waiting after 10 min")  # fmt: skip


def _server(latency: float, faults: dict) -> tuple[object, str]:
    sys.path.insert(0, str(HERE))
    from common import start_server

    return start_server(latency, faults=json.dumps(faults))


def degraded_row(seeds: int = 20, n: int = 1000) -> tuple[str, ...]:
    per_seed = []
    for seed in range(seeds):
        server, url = _server(0.02, {"http_500": 0.15, "http_429": 0.15, "retry_after": 0, "garbled": 0.05, "seed": seed})
        try:
            per_seed.append(_case("degraded", url=url, n=n))
        finally:
            server.kill()  # type: ignore[attr-defined]
            server.wait()  # type: ignore[attr-defined]
    worst = max(per_seed, key=lambda r: r["infra"])
    trips = sum(r["trips"] for r in per_seed)
    counts = ", ".join(str(r["infra"]) for r in per_seed)
    return (f"degraded endpoint (15% 500, 15% 429 Retry-After 0, 5% garbled, 20 ms), {n} examples, C=16, defaults, {seeds} seeds",
            f"worst seed {worst['infra'] / n:.1%} infra errors; breaker trips {trips}; per seed: {counts}",
            "-", "worst seed ≤ 1.5%", f"mean wall {sum(r['wall_s'] for r in per_seed) / seeds:.2f} s/seed")  # fmt: skip


def dead_row(n: int = 1000) -> tuple[str, ...]:
    r = _case("dead", n=n)
    return (f"dead endpoint (connection refused), {n} examples, defaults", f"{r['n']} accounted in {r['wall_s']:.2f} s ({r['errors']})",
            "-", "≤ 2 s", f"{r['breaker_failures']} failed calls reached the breaker")  # fmt: skip


def timing_row(n: int = 500, repeat: int = 3) -> tuple[str, ...]:
    faults = {"http_500": 0.1, "http_429": 0.1, "retry_after": 0.05, "garbled": 0.05, "stall": 0.02, "stall_s": 10}
    ratios, notes = [], []
    for _ in range(repeat):
        timings = {}
        for label, spec in (("clean", {}), ("faults", faults)):
            server, url = _server(0.05, spec)
            try:
                timings[label] = _case("timing", url=url, n=n)
            finally:
                server.kill()  # type: ignore[attr-defined]
                server.wait()  # type: ignore[attr-defined]
        f, c = timings["faults"], timings["clean"]
        ratios.append(f["wall_s"] / c["wall_s"])
        notes.append(f"{f['wall_s']:.2f}/{c['wall_s']:.2f} s, {f['scored']}/{f['n']} scored {f['errors'] or ''}, {f['retries']} retries, "
                     f"{f['hedges']} hedged (fault-free run: {c['hedges']} hedged, {c['scored']}/{c['n']} scored)")
    return (f"evaluate {n}, 50 ms, C=32: 10% 500 + 10% 429 (Retry-After 50 ms) + 5% garbled + 2% hanging 10 s, vs fault-free",
            " / ".join(f"x{r:.2f}" for r in ratios), "-", "≤ 1.5x fault-free time",
            "library defaults (retries 3, backoff 0.1 s base, hedge_after='auto', timeout 120 s), C=32; "
            "runs (faults/clean): " + "; ".join(notes))  # fmt: skip


def fault_rows(repeat: int = 3) -> list[tuple[str, ...]]:
    return [degraded_row(), dead_row(), timing_row(repeat=repeat)]


def main() -> None:
    if len(sys.argv) == 3 and not sys.argv[1].startswith("-"):
        print(json.dumps(globals()[f"case_{sys.argv[1]}"](**json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["degraded", "dead", "timing", "quota"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    rows = []
    if args.only in (None, "degraded"):
        rows.append(degraded_row(args.seeds))
    if args.only in (None, "dead"):
        rows.append(dead_row())
    if args.only in (None, "timing"):
        rows.append(timing_row(repeat=args.repeat))
    if args.only in (None, "quota"):
        rows.append(quota_row())
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the three fault rows, each target checked from its figures."""
    seeds, repeat = (5, 1) if ctx.fast else (20, 3)
    rows = [degraded_row(seeds), dead_row(), timing_row(repeat=repeat), quota_row()]
    deg, dead, timing, quota = rows
    worst = float(deg[1].split("worst seed ")[1].split("%")[0]) / 100
    ctx.target(f"degraded endpoint, worst of {seeds} seeds: infrastructure errors", f"{worst:.1%}", "≤ 1.5%", worst <= 0.015)
    dead_s = float(dead[1].split(" in ")[1].split(" s")[0])
    ctx.target("dead endpoint, 1000 examples accounted", f"{dead_s:.2f} s", "≤ 2 s", dead_s <= 2)
    ratios = [float(r) for r in timing[1].replace("x", "").split(" / ")]
    med = statistics.median(ratios)
    ctx.target("fault run vs fault-free (median)", f"x{med:.2f} ({timing[1]})", "≤ 1.5x", med <= 1.5)
    quota_s = float(quota[1].split(" in ")[1].split(" s")[0])
    only_rate_limited = quota[1].endswith("({'rate_limited': 60})")
    ctx.target("endpoint refusing everything with 429, 60 examples accounted", quota[1], "all rate_limited, ≤ 90 s",
               only_rate_limited and quota_s <= 90)  # fmt: skip
    return ["| what | pytest-dspex | target | notes |", "|---|---|---|---|"] + [
        f"| {r[0]} | {r[1]} | {r[3]} | {r[4]} |" for r in rows
    ]
