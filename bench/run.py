"""Benchmarks: pytest-dspex and DSPy 3.4.1 on the same loopback server, in the same run.

    python bench/run.py            # everything; installs DSPy into bench/.dspy-venv on first use
    python bench/run.py --no-dspy  # pytest-dspex only

Starts ``pytest_dspex.fake_server`` (an OpenAI-compatible server with a fixed latency) in its own
process, runs each case in a fresh process, and writes bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
DSPY_VENV = Path(os.environ.get("DSPEX_BENCH_DSPY_VENV", HERE / ".dspy-venv"))  # e.g. an existing DSPy 3.4.1 venv


def start_server(latency: float, pass_every: int = 1, faults: str = "{}") -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "pytest_dspex.fake_server", "--latency", str(latency), "--pass-every", str(pass_every), "--faults", faults]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    return proc, line[1]


def run_case(python: str, script: str, case: str, **args: object) -> dict:
    out = subprocess.run([python, str(HERE / script), case, json.dumps(args)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def dspy_python() -> str:
    py = DSPY_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DSPY_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "dspy==3.4.1"], check=True)
    return str(py)


def import_time(python: str, module: str, runs: int = 7) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    times = [float(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(runs)]
    return statistics.median(times)


def pytest_startup(runs: int = 7) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "test_x.py").write_text("def test_x():\n    pass\n")

        def timed(*extra: str) -> float:
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=d, capture_output=True, check=True)
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        return timed("-p", "no:dspex"), timed()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-dspy", action="store_true")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--big", type=int, default=100_000)
    args = ap.parse_args()
    py = sys.executable
    dpy = None if args.no_dspy else dspy_python()
    rows: list[tuple[str, str, str, str, str]] = []
    n, latency = args.n, 0.05

    server, url = start_server(latency)
    try:
        # as a user meets it: a fresh process per run, a new LM and Evaluate, ChatAdapter, no warm-up
        for c, runs in ((16, 1), (64, 3), (256, 3)):
            ours = [run_case(py, "cases_dspex.py", "cold", url=url, n=n, concurrency=c) for _ in range(runs)]
            limit = c / latency
            theirs = run_case(dpy, "cases_dspy.py", "throughput", url=url, n=n, concurrency=c) if dpy else None
            t_txt = f"{theirs['ex_per_s']:.0f} ex/s ({theirs['ex_per_s'] / limit:.2f} of limit)" if theirs else "-"
            best = statistics.median(r["ex_per_s"] for r in ours)
            ratio = f", {best / theirs['ex_per_s']:.2f}x DSPy (median)" if theirs else ""
            target = {64: "≥ 0.75 of limit, ≤ 0.5 ms CPU/example", 256: "≥ 6x DSPy"}.get(c, "")
            rows.append((f"evaluate N={n}, 50 ms, concurrency {c} (limit {limit:.0f} ex/s), cold first run, ChatAdapter",
                         " / ".join(f"{r['ex_per_s']:.0f} ex/s ({r['ex_per_s'] / limit:.2f}, {r['cpu_ms_per_example']:.2f} ms CPU/ex)" for r in ours) + ratio,
                         t_txt, target, f"{runs} fresh processes; errors {sum(r['errors'] for r in ours)}"))  # fmt: skip
        # cache hits as a user meets them: a run recorded the answers, a new process reads them
        cache_dir = tempfile.mkdtemp()
        run_case(py, "cases_dspex.py", "record", url=url, n=n, cache_dir=cache_dir)
        hits = [run_case(py, "cases_dspex.py", "cache_cold", url=url, n=n, cache_dir=cache_dir) for _ in range(3)]
        theirs = run_case(dpy, "cases_dspy.py", "cache", url=url, n=n) if dpy else None
        rows.append(("per-example cost, every answer a cache hit, ChatAdapter: disk tier (new process, first pass)",
                     " / ".join(f"{h['disk_ms']:.3f} ms ({h['disk_cpu_ms']:.3f} CPU)" for h in hits), "-", "≤ 0.1 ms", "3 fresh processes"))  # fmt: skip
        rows.append(("per-example cost, every answer a cache hit, ChatAdapter: memory tier (second pass)",
                     " / ".join(f"{h['memory_ms']:.3f} ms ({h['memory_cpu_ms']:.3f} CPU)" for h in hits),
                     f"{theirs['memory_ms']:.3f} ms" if theirs else "-", "≤ 0.1 ms", ""))  # fmt: skip
    finally:
        server.kill()

    server, url = start_server(latency, pass_every=20)
    try:
        ours = run_case(py, "cases_dspex.py", "bootstrap", url=url, n=50)
        theirs = run_case(dpy, "cases_dspy.py", "bootstrap", url=url, n=50) if dpy else None
        rows.append(("BootstrapFewShot, 50 train, 50 ms, 1 in 20 passes",
                     f"{ours['wall_s']:.2f} s, {ours['calls']} calls" + (f" ({ours['wall_s'] / theirs['wall_s']:.2f}x DSPy's time)" if theirs else ""),
                     f"{theirs['wall_s']:.2f} s, {theirs['calls']} calls" if theirs else "-", "≤ 0.10x DSPy, calls ≤ DSPy", ""))  # fmt: skip
    finally:
        server.kill()

    from cases_faults import fault_rows  # degraded endpoint (20 seeds), dead endpoint, fault-run timing (x3)

    rows.extend(fault_rows())  # type: ignore[arg-type]

    ours_import = import_time(py, "pytest_dspex")
    use = statistics.median(run_case(py, "cases_dspex.py", "import_use")["s"] for _ in range(5))
    rows.append(("import + first use of Predict, LM, Evaluate, Signature", f"{use * 1e3:.0f} ms", "-", "", "names load lazily (PEP 562)"))
    theirs_import = import_time(dpy, "dspy") if dpy else None
    rows.append(("import time", f"{ours_import * 1e3:.0f} ms", f"{theirs_import * 1e3:.0f} ms" if theirs_import else "-", "≤ 150 ms", ""))
    base, with_plugin = pytest_startup()
    rows.append(("pytest start-up, plugin installed but unused", f"+{(with_plugin - base) * 1e3:.0f} ms ({base * 1e3:.0f} → {with_plugin * 1e3:.0f} ms)", "-", "≤ +50 ms", ""))

    server, url = start_server(0.0)
    try:
        cache_dir = tempfile.mkdtemp()
        run_case(py, "cases_dspex.py", "fill", url=url, n=args.big, cache_dir=cache_dir)
    finally:
        server.kill()
    # replay with the recording's URL (the cache key names the endpoint; the server is gone, so a
    # miss could not reach it): the first run right after recording, again, and N/4 for linearity
    after = run_case(py, "cases_dspex.py", "big", url=url, n=args.big, cache_dir=cache_dir)
    again = run_case(py, "cases_dspex.py", "big", url=url, n=args.big, cache_dir=cache_dir)
    quarter = run_case(py, "cases_dspex.py", "big", url=url, n=args.big // 4, cache_dir=cache_dir)
    rows.append((f"evaluate N={args.big} from the disk cache (replay mode), the run right after recording",
                 f"{after['wall_s']:.1f} s ({after['us_per_example']:.0f} µs/example, {after['cpu_us_per_example']:.0f} µs CPU); "
                 f"next run {again['wall_s']:.1f} s; N/4 took {quarter['wall_s']:.1f} s → x{again['wall_s'] / quarter['wall_s']:.2f} for 4x N; "
                 f"peak RSS {max(after['peak_rss_mb'], again['peak_rss_mb']):.0f} MB",
                 "-", "linear in N, peak RSS ≤ 300 MB", f"{after['hits']} hits"))  # fmt: skip
    # every lookup a miss (another URL): N failed examples, none of which may keep its traceback alive
    miss = run_case(py, "cases_dspex.py", "big", url=url, n=args.big, cache_dir=cache_dir, misses=True)
    miss_q = run_case(py, "cases_dspex.py", "big", url=url, n=args.big // 4, cache_dir=cache_dir, misses=True)
    rows.append((f"evaluate N={args.big} in replay mode, every lookup a miss (N cache_miss errors)",
                 f"{miss['wall_s']:.1f} s ({miss['us_per_example']:.0f} µs/example, {miss['cpu_us_per_example']:.0f} µs CPU); "
                 f"N/4 took {miss_q['wall_s']:.1f} s → x{miss['wall_s'] / miss_q['wall_s']:.2f} for 4x N; peak RSS {miss['peak_rss_mb']:.0f} MB",
                 "-", "linear in N, peak RSS ≤ 300 MB", f"{miss['misses']} misses"))  # fmt: skip

    write_results(rows)


def write_results(rows: list[tuple[str, str, str, str, str]]) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    lines = [
        "# Benchmark results",
        "",
        f"Run on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} — {machine}. Client and server on the same machine,",
        "loopback, server = `pytest_dspex.fake_server` in its own process. DSPy 3.4.1 in its own venv, same server, same run.",
        "Reproduce: `python bench/run.py`.",
        "",
        "| what | pytest-dspex | DSPy 3.4.1 | target | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += [
        "",
        "## Notes",
        "",
        "* Concurrency 256: the client and the server share two cores, so both are CPU-bound well below",
        "  the N·L/C limit; the ratio to DSPy in the same conditions is what the target asks for.",
        "* Throughput and cache-hit rows are cold, as a user meets them: a fresh process per run, a new LM",
        "  and Evaluate, ChatAdapter, no warm-up; CPU is the client process's `time.process_time` (the server",
        "  is another process). Figures before 2026-11-26 were taken after a warm-up run with the compact adapter.",
        "* Replay: the 3.7 s for N=100000 recorded before 2026-11-26 was a run in which every lookup missed (the",
        "  replay LM named another URL than the recording, the cache key names the endpoint, and the case did not",
        "  check hits): 100k fast CacheMissErrors. The case now replays with the recording's URL and asserts hits.",
        "* Fault run (target 1.5x the fault-free time): every example is scored, and the ratio moved from",
        "  1.98x (equal-jitter backoff, no hedging) to 1.82x with hedged requests (a duplicate after 150 ms",
        "  instead of waiting for a stalled connection's 0.5 s timeout) and to 1.5-1.6x with full-jitter",
        "  backoff, with a wide run-to-run spread (1.5-2.2x over six runs): the end of the run is set by the",
        "  few examples that draw two or three faults in a row. The client is not CPU-bound here",
        "  (0.6-0.8 s of CPU for a 1.7-2.0 s run), so what remains is waiting on retries, not overhead.",
        "* BootstrapFewShot: on this task (3 of 50 pass) both walk the whole trainset, so calls are equal;",
        "  on a task where the first passing examples come early, up to `concurrency - 1` extra teacher runs",
        "  may already be in flight when the demos are settled (they are cancelled).",
        "* `import pytest_dspex` loads names lazily; the row above it is the cost once the core is used.",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
