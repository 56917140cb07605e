"""Run-wide LM limits (issue 21): one in-flight limit, back-pressure, breaker and budget per run.

Each case is a real ``pytest`` run of a per-example test over N examples against the fake server
(50 ms) in another process that answers 429 to a request arriving while 32 are in flight; the
server counts what reached it (``GET /v1/_counts``). CPU is the pytest process tree's (controller
and workers: ``RUSAGE_CHILDREN``), the server's excluded; "CPU before the first test" is each worker's
own (interpreter, imports, collection, warm-up). Byte-code is cached as on a user's machine (an
installed wheel has its .pyc, pytest caches the plugins' rewritten modules): the runs use a private
``PYTHONPYCACHEPREFIX`` filled by untimed runs first, whatever ``PYTHONDONTWRITEBYTECODE`` says outside;
one row shows the same run under ``PYTHONDONTWRITEBYTECODE=1`` as this bench ran before (the installed
packages' byte-code only: pytest rewrites the plugins' modules, and an editable checkout without a
``__pycache__`` compiles this package, in every process). Wall time is noisy on a shared machine.

    python bench/cases_limits.py [N]         # prints the rows
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

LATENCY = 0.05
CAP = 32



@functools.cache
def pycache() -> str:
    """The runs' byte-code cache (see the module docstring): private to this bench process, filled by
    ``warm``, removed at exit (made on first use: the helper processes importing this module make none)."""
    folder = tempfile.mkdtemp(prefix="dspex-bench-pyc-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder

TEST = '''
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(lambda e, p, t=None: e.team == p.team, threshold=0.0)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


CONFTEST = '''
import os, time

_first = []

def pytest_configure(config):
    _mark("configured", time.process_time())

def pytest_collection_finish(session):
    _mark("collected", time.process_time())

def pytest_runtest_setup(item):
    if not _first:  # this process's CPU before its first test (a worker's start-up: interpreter, imports, collection)
        _first.append(1)
        _mark("cpu_first", time.process_time())
    _mark("start")

def pytest_runtest_teardown(item):
    _mark("end")

def _mark(what, value=None):
    path = os.environ.get("DSPEX_BENCH_TIMES")
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {time.monotonic() if value is None else value} {os.getpid()}\\n")
'''


def project(n: int) -> Path:
    from tests.conftest import triage_examples

    folder = Path(tempfile.mkdtemp(prefix="dspex-bench-limits-"))
    (folder / "data").mkdir()
    (folder / "data" / "dev.jsonl").write_text("\n".join(json.dumps(e.toDict()) for e in triage_examples(n)) + "\n")
    (folder / "test_limits.py").write_text(TEST)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text(CONFTEST)
    return folder


def _server(cap: int | None, faults: dict[str, float] | None = None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "pytest_dspex.testing.fake_server", "--latency", str(LATENCY)]
    if cap is not None:
        cmd += ["--max-in-flight", str(cap)]
    if faults:
        cmd += ["--faults", json.dumps(faults)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    return proc, line[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(folder: Path, *args: str, url: str | None = None, cap: int | None = CAP, faults: dict[str, float] | None = None,
        bytecode: bool = True) -> dict[str, Any]:  # fmt: skip
    """One pytest run against a fresh server; its counts, wall and CPU (``bytecode``: cached, see the docstring)."""
    server, base = _server(cap, faults) if url is None else (None, url)
    try:
        times = folder / "times.txt"
        times.unlink(missing_ok=True)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this checkout's package first
        env = {**os.environ, "PYTHONPATH": path, "OPENAI_API_KEY": "k", "DSPEX_BENCH_TIMES": str(times)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("PYTHONPYCACHEPREFIX", None)
        # without: the installed packages' own byte-code only (pytest rewrites the plugins' modules and this
        # checkout compiles from source, in every process, unless it has a __pycache__ of its own)
        env.update({"PYTHONPYCACHEPREFIX": pycache()} if bytecode else {"PYTHONDONTWRITEBYTECODE": "1"})
        cpu = _children_cpu()
        t = time.perf_counter()
        began = time.monotonic()  # the conftest's marks are on this clock
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--dspex-cache=off", f"--dspex-base-url={base}",
             "--dspex-model=fake-model", "--dspex-missing-golden=zero-shot", "-v", "--tb=no", *args],
            cwd=folder, env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t
        ended = time.monotonic()
        cpu = _children_cpu() - cpu
        marks = [line.split() for line in times.read_text().splitlines()] if times.exists() else []
        starts = [float(v) for k, v, _ in marks if k == "start"]
        ends = [float(v) for k, v, _ in marks if k == "end"]
        # each process's CPU before its first test: a worker's start-up (interpreter, imports, collection, warm-up)
        first_cpu = [float(v) for k, v, _ in marks if k == "cpu_first"]
        configured = [float(v) for k, v, _ in marks if k == "configured"]
        collected = [float(v) for k, v, _ in marks if k == "collected"]
        tests_s = max(ends) - min(starts) if starts and ends else 0.0
        # per process: its first test's start to its last one's end (a worker starts on its tests as soon as
        # its own collection is in, so the run's first-to-last span includes workers still starting)
        spans: dict[str, list[float]] = {}
        for k, v, pid in marks:
            if k in ("start", "end"):
                spans.setdefault(pid, []).append(float(v))
        worker_s = max((max(v) - min(v) for v in spans.values()), default=0.0)
        # where the wall time goes: before the first test starts (interpreters, imports, collection, xdist's
        # workers), the tests, after the last one ends (workers' shutdown, the controller's reports)
        phases = (min(starts) - began, tests_s, ended - max(ends)) if starts and ends else None
        counts: dict[str, Any] = {}
        if server is not None:
            with urllib.request.urlopen(base + "/_counts") as resp:
                counts = json.loads(resp.read())
    finally:
        if server is not None:
            server.kill()
            server.wait()
    text = out.stdout
    trips = re.search(r"circuit breaker opened (\d+)x", text)
    return {"wall": wall, "tests_s": tests_s, "worker_s": worker_s, "phases": phases, "cpu": cpu, "counts": counts, "ret": out.returncode, "trips": int(trips.group(1)) if trips else 0,
            "first_cpu": first_cpu, "configured_cpu": configured, "collected_cpu": collected, "passed": _count(text, "passed"), "lm_error": _count(text, "lm_error"), "tail": text[-1500:]}  # fmt: skip


def _count(text: str, outcome: str) -> int:
    """``N outcome`` from pytest's last line."""
    found = re.findall(rf"(\d+) {outcome}\b", text.strip().splitlines()[-1] if text.strip() else "")
    return int(found[-1]) if found else 0


def _phases(r: dict[str, Any]) -> str:
    p = r.get("phases")
    return f" (start-up {p[0]:.2f} s, tests {p[1]:.2f} s, end {p[2]:.2f} s)" if p else ""


def _first_cpu(r: dict[str, Any]) -> str:
    """The workers' CPU before their first test (mean), or the one process's."""
    cpu = r.get("first_cpu") or []
    return f"; CPU before the first test {sum(cpu) / len(cpu):.2f} s a process (x{len(cpu)})" if cpu else ""


def warm() -> None:
    """Untimed runs that fill the byte-code cache (``pycache()``): one process, and xdist workers."""
    folder = project(40)
    run(folder, "-p", "no:xdist")
    run(folder, "-n", "2")
    shutil.rmtree(folder, ignore_errors=True)


def _floor(n: int, in_flight: int) -> str:
    """The least time N requests of LATENCY take at this many in flight: what no client overhead explains."""
    return f"the endpoint's floor at {in_flight} in flight {n * LATENCY / in_flight:.2f} s"


def _share(r: dict[str, Any]) -> tuple[int, int, float]:
    c = r["counts"]
    requests = int(c.get("requests", 0))
    refused = int(c.get("over_cap", 0))
    return requests, refused, refused / requests if requests else 0.0


def rows(n: int = 1000) -> list[tuple[str, str, str, bool | None]]:
    """(what, figure, target, met) rows."""
    folder = project(n)
    warm()
    out: list[tuple[str, str, str, bool | None]] = []
    one = run(folder, "-p", "no:xdist", "--dspex-concurrency=32")
    req, ref, share = _share(one)
    out.append((f"one process, C=32, N={n}", f"{req} requests, {ref} refused ({share:.1%}); wall {one['wall']:.2f} s{_phases(one)}, CPU {one['cpu']:.2f} s "
                f"({1000 * one['cpu'] / n:.2f} ms/example{_first_cpu(one)}); {_floor(n, 32)}", "baseline", None))  # fmt: skip
    for workers in (4, 8):
        for conc in (None, 32):
            args = ["-n", str(workers)] + ([f"--dspex-concurrency={conc}"] if conc else [])
            r = run(folder, *args)
            req, ref, share = _share(r)
            label = f"-n {workers}, {'default concurrency (from 16, growing to 64 per run)' if conc is None else f'C={conc} per run'}"
            out.append((label, f"{req} requests, {ref} refused ({share:.1%}); wall {r['wall']:.2f} s = {r['wall'] / one['wall']:.2f}x one process{_phases(r)}; "
                        f"CPU {r['cpu']:.2f} s ({1000 * r['cpu'] / n:.2f} ms/example{_first_cpu(r)}); {r['passed']} passed; {_floor(n, conc or CAP)}", "≤ 1% refused, wall ≤ 1.2x",
                        share <= 0.01 and r["wall"] <= 1.2 * one["wall"] and r["passed"] == n))  # fmt: skip
    raw = run(folder, "-n", "8", "--dspex-concurrency=32", bytecode=False)
    out.append(("-n 8, C=32 per run, under PYTHONDONTWRITEBYTECODE=1 (as this bench ran before)",
                f"wall {raw['wall']:.2f} s = {raw['wall'] / one['wall']:.2f}x one process (with byte-code){_phases(raw)}; CPU {raw['cpu']:.2f} s"
                f"{_first_cpu(raw)}; {raw['passed']} passed", "(what byte-code not written costs)", None))  # fmt: skip
    r = run(folder, "-n", "4", "--dspex-max-calls=100", "--dspex-max-error-rate=1")
    req, _, _ = _share(r)
    out.append(("-n 4 --dspex-max-calls 100, cache off", f"{req} requests reached the endpoint", "≤ 100", req <= 100))
    dead = run(folder, "-n", "8", url="http://127.0.0.1:9/v1")
    out.append(("dead endpoint (nothing listens), -n 8",
                f"every example accounted: {dead['lm_error']} LM errors of {n}, the longest a worker spent on its tests "
                f"{dead['worker_s']:.2f} s ({dead['tests_s']:.2f} s from the run's first test to its last, workers still starting "
                f"meanwhile; whole run {dead['wall']:.2f} s, CPU {dead['cpu']:.2f} s); breaker opened {dead['trips']}x for the run",
                "≤ 2 s, once", dead["lm_error"] == n and dead["worker_s"] <= 2 and dead["trips"] == 1))  # fmt: skip
    broken = run(folder, "-n", "8", "--dspex-concurrency=1", "--dspex-retries=0", cap=None, faults={"http_500": 1.0})
    req, _, _ = _share(broken)
    out.append(("endpoint answering 500 to everything, -n 8, one request in flight for the run, no retries",
                f"{req} requests reached it before every worker failed fast ({broken['lm_error']} LM errors of {n}); breaker opened "
                f"{broken['trips']}x", "≤ 5 + 7 (the run's fail_max, and one per other worker at most)",
                req <= 12 and broken["lm_error"] == n))  # fmt: skip
    return out


def _cold(url: str, n: int, concurrency: int, limits: str | None, redis_url: str | None = None) -> dict[str, float]:
    """``cases_dspex.case_cold`` (a new LM, Evaluate of N examples, CPU of this process), its LM linked to a
    coordinator in another process when ``limits`` ("address token") is given, its endpoint's hold and
    breaker read from Redis (``redis_limits``) when ``redis_url`` is."""
    import cases_dspex as cd

    import pytest_dspex as dspex
    from pytest_dspex.lm.link import RunLink

    cd.preimport()
    shared = None
    if redis_url:  # imported before the timer, as the library's modules are (and the Redis cache imports it anyway)
        import redis.asyncio  # noqa: F401

        from pytest_dspex.lm.redis_limits import RedisLimits
    devset = cd.dev(n)
    cpu0 = time.process_time()
    link = RunLink(*limits.split(" ")) if limits else None
    if redis_url:
        shared = RedisLimits(redis_url)
    lm = dspex.LM("fake", base_url=url, api_key="bench", concurrency=concurrency, limits=link, shared_limits=shared)
    res = dspex.Evaluate(devset, cd.metric, concurrency=concurrency)(cd.program(lm))
    cpu = time.process_time() - cpu0
    assert res.usage.calls == n and not res.errors and (link is None or link.state == "up"), (res.usage, link)
    assert shared is None or (shared.lost is None and shared.reads > 0), shared
    return {"cpu_ms_per_example": cpu / n * 1e3, "redis_reads": shared.reads if shared else 0}


def _redis_server() -> tuple[subprocess.Popen[bytes] | None, str]:
    """A throwaway redis-server on a free loopback port (no persistence), if one is installed."""
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        return None, ""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def overhead(n: int = 2000, runs: int = 5) -> list[tuple[str, str, str, bool | None]]:
    """Client CPU per example, cold, C=64: an LM of its own vs one whose slots a coordinator lends (in another process)."""
    import statistics

    server, url = _server(None)
    coord = subprocess.Popen([sys.executable, __file__, "coordinator"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert coord.stdout is not None
    limits = coord.stdout.readline().strip()
    redis_proc, redis_url = _redis_server()
    try:
        got: dict[str, list[float]] = {"own": [], "linked": [], **({"redis": []} if redis_proc else {})}
        for _ in range(runs):
            for mode in got:
                argv = [sys.executable, __file__, "cold", url, str(n), "64", limits if mode == "linked" else "",
                        redis_url if mode == "redis" else ""]  # fmt: skip
                out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True)
                got[mode].append(json.loads(out.stdout.strip().splitlines()[-1])["cpu_ms_per_example"])
    finally:
        coord.kill()
        server.kill()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
    own, linked = statistics.median(got["own"]), statistics.median(got["linked"])
    rows = [(f"client CPU per example, Evaluate N={n}, C=64, cold ({runs} runs each, alternating)",
             f"own limits {own:.3f} ms; slots from the run's coordinator {linked:.3f} ms ({linked / own - 1:+.0%})",
             "within 10%", linked <= 1.1 * own)]  # fmt: skip
    if got.get("redis"):
        shared = statistics.median(got["redis"])
        rows.append((f"client CPU per example, Evaluate N={n}, C=64, cold, the endpoint's hold, breaker and share read from Redis "
                     "(redis-py imported before the timer: ~0.15 s CPU once, which a Redis cache pays anyway)",
                     f"own limits {own:.3f} ms; with Redis {shared:.3f} ms ({shared / own - 1:+.0%})",
                     "within 10%", shared <= 1.1 * own))  # fmt: skip
    return rows


def section(ctx: Any) -> list[str]:
    n = 300 if ctx.fast else 1000
    lines = [__doc__.split("\n\n")[1].replace("\n", " "), "", "| run | figure | target |", "|---|---|---|"]
    for what, figure, target, met in rows(n) + overhead(500 if ctx.fast else 2000, 1 if ctx.fast else 5):
        lines.append(f"| {what} | {figure} | {target} |")
        if met is not None:
            ctx.target(what, figure, target, met)
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["coordinator"]:  # a coordinator in a process of its own, as a controller hosts it
        from pytest_dspex.lm.coordinator import Coordinator

        c = Coordinator()
        print(c.start(), c.token, flush=True)
        time.sleep(3600)
    elif sys.argv[1:2] == ["cold"]:
        print(json.dumps(_cold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] or None,
                               (sys.argv[6] if len(sys.argv) > 6 else "") or None)))
    elif sys.argv[1:2] == ["overhead"]:
        for row in overhead(int(sys.argv[2]) if len(sys.argv) > 2 else 2000):
            print(" | ".join(str(x) for x in row))
    else:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
        for row in rows(n):
            print(" | ".join(str(x) for x in row))
