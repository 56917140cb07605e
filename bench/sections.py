"""bench/run.py sections (each ``(Context) -> markdown lines``; registered in ``run.SECTIONS``)."""

from __future__ import annotations

import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import HERE, ROOT, run_case, spread, start_server

LATENCY = 0.05


# -- pytest-dspex and DSPy 3.4.1 ----------------------------------------------------------------
def _checked(side: str, results: list[dict], score_key: str = "score", errors_key: str = "errors") -> str:
    """Both sides are held to the same checks: every example right (score 1.0), no error."""
    bad = [r for r in results if r[score_key] != 1.0 or r[errors_key] != 0]
    if bad:
        return f"{side}: **check failed** (score/errors {[(r[score_key], r[errors_key]) for r in bad]})"
    return f"{side}: score 1.000, 0 errors × {len(results)}"


def vs_dspy(ctx: Any) -> list[str]:
    """Cold throughput at C=16/64/256, cache hits (disk tier in a new process, memory tier), and
    BootstrapFewShot — the same repeats, statistic (median, min–max), timer and checks on both sides."""
    n = 500 if ctx.fast else 2000
    runs = 1 if ctx.fast else 3
    dpy = ctx.dpy
    rows = ["| what | pytest-dspex | DSPy 3.4.1 | ratio | checks |", "|---|---|---|---|---|"]
    server, url = start_server(LATENCY)
    try:
        for c in (16, 64, 256):
            limit = c / LATENCY
            ours = [run_case(ctx.py, "cases_dspex.py", "cold", url=url, n=n, concurrency=c) for _ in range(runs)]
            theirs = [run_case(dpy, "cases_dspy.py", "throughput", url=url, n=n, concurrency=c) for _ in range(runs)] if dpy else []
            o = [r["ex_per_s"] for r in ours]
            t = [r["ex_per_s"] for r in theirs]
            cpu = [r["cpu_ms_per_example"] for r in ours]
            ratio = statistics.median(o) / statistics.median(t) if t else None
            checks = "; ".join([_checked("ours", ours)] + ([_checked("DSPy", theirs)] if theirs else []))
            rows.append(f"| evaluate N={n}, 50 ms, C={c} (limit {limit:.0f} ex/s), cold | {spread(o, '{:.0f}')} ex/s "
                        f"= {statistics.median(o) / limit:.2f} of the limit; {spread(cpu)} ms CPU/ex | "
                        f"{spread(t, '{:.0f}') + ' ex/s' if t else '-'} | {f'{ratio:.2f}x' if ratio else '-'} | {checks} |")  # fmt: skip
            ok = "check failed" not in checks
            if c == 64:
                share, cpu_med = statistics.median(o) / limit, statistics.median(cpu)
                ctx.target(f"evaluate N={n}, C=64, 50 ms, cold: share of the N·L/C limit", f"{share:.2f}", "≥ 0.85", share >= 0.85 and ok)
                ctx.target(f"evaluate N={n}, C=64, cold: client CPU per example", f"{cpu_med:.2f} ms", "≤ 0.35 ms", cpu_med <= 0.35 and ok)
            if c == 256 and ratio is not None:
                ctx.target(f"evaluate N={n}, C=256, cold: throughput vs DSPy", f"{ratio:.2f}x", "≥ 6x", ratio >= 6 and ok)
        # cache hits: a run records the answers, a new process reads them (disk tier, then memory tier)
        cache_dir = tempfile.mkdtemp(prefix="dspex-bench-cache-")
        run_case(ctx.py, "cases_dspex.py", "record", url=url, n=n, cache_dir=cache_dir)
        ours = [run_case(ctx.py, "cases_dspex.py", "cache_cold", url=url, n=n, cache_dir=cache_dir) for _ in range(runs)]
        theirs = []
        if dpy:
            env = {"DSPY_CACHEDIR": tempfile.mkdtemp(prefix="dspy-bench-cache-")}
            run_case(dpy, "cases_dspy.py", "record", env=env, url=url, n=n)
            theirs = [run_case(dpy, "cases_dspy.py", "cache_cold", env=env, url=url, n=n) for _ in range(runs)]
        for tier, label in (("disk", "disk tier (new process, first pass)"), ("memory", "memory tier (second pass)")):
            o = [r[f"{tier}_ms"] for r in ours]
            t = [r[f"{tier}_ms"] for r in theirs]
            checks = "; ".join([_checked("ours", ours, f"{tier}_score", f"{tier}_errors")]
                               + ([_checked("DSPy", theirs, f"{tier}_score", f"{tier}_errors")] if theirs else []))  # fmt: skip
            rows.append(f"| every answer a cache hit, N={n}, ChatAdapter: {label} | {spread(o, '{:.3f}')} ms/ex "
                        f"({spread([r[f'{tier}_cpu_ms'] for r in ours], '{:.3f}')} CPU) | "
                        f"{spread(t, '{:.3f}') + ' ms/ex' if t else '-'} | "
                        f"{f'{statistics.median(t) / statistics.median(o):.1f}x faster' if t else '-'} | {checks} |")  # fmt: skip
            if tier == "memory":
                m = statistics.median(o)
                ctx.target("per-example overhead, every answer a memory-tier cache hit", f"{m:.3f} ms", "≤ 0.05 ms", m <= 0.05)
    finally:
        server.kill()
    server, url = start_server(LATENCY, pass_every=20)
    try:
        ours = [run_case(ctx.py, "cases_dspex.py", "bootstrap", url=url, n=50) for _ in range(runs)]
        theirs = [run_case(dpy, "cases_dspy.py", "bootstrap", url=url, n=50) for _ in range(runs)] if dpy else []
    finally:
        server.kill()
    o, t = [r["wall_s"] for r in ours], [r["wall_s"] for r in theirs]
    same = {r["bootstrapped"] for r in ours} == {r["bootstrapped"] for r in theirs} if theirs else True
    checks = f"bootstrapped demos: ours {sorted({r['bootstrapped'] for r in ours})}" + (
        f", DSPy {sorted({r['bootstrapped'] for r in theirs})}" + ("" if same else " — **differ**") if theirs else ""
    )
    calls_o, calls_t = max(r["calls"] for r in ours), (max(r["calls"] for r in theirs) if theirs else None)
    waited = sorted({r["waits"] for r in ours if r.get("waits") is not None})
    waits = f" in {', '.join(map(str, waited))} waits for answers" if waited else ""
    rows.append(f"| BootstrapFewShot, 50 train, 50 ms, 1 in 20 passes (LM built before the timer, both) | {spread(o)} s, "
                f"{calls_o} calls{waits} | {spread(t) + f' s, {calls_t} calls' if t else '-'} | "
                f"{f'{statistics.median(o) / statistics.median(t):.3f}x the time' if t else '-'} | {checks} |")  # fmt: skip
    if t:
        r = statistics.median(o) / statistics.median(t)
        ctx.target("BootstrapFewShot time vs DSPy (median)", f"{r:.3f}x", "≤ 0.10x", r <= 0.10 and same)
        ctx.target("BootstrapFewShot LM calls vs DSPy", f"{calls_o} vs {calls_t}", "≤ DSPy", calls_o <= calls_t)
    return [
        f"Fresh process per run, {runs} run(s) per side and case, median (min–max). Both sides import their",
        "library before any timer (import time is its own row). Cold throughput is timed from creating the LM on",
        "both sides (connection set-up inside); the cache and BootstrapFewShot cases build the LM before the",
        "timer on both sides. CPU is the client process's `time.process_time` (the server is another process).",
        "Checks on both sides: the score of every run (the fake server answers right: 1.0) and its errors.",
        "",
        *rows,
    ]


# -- the CI path (issue 28) ---------------------------------------------------------------------
def _startup_pairs(pairs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Paired runs of a one-test project, with and without ``-p no:dspex`` (order alternating):
    the differences in wall time and in the child's CPU time (user + system)."""
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as d:
        Path(d, "test_x.py").write_text("def test_x():\n    pass\n")

        def one(*extra: str) -> tuple[float, float]:
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=d, env=env,
                           capture_output=True, check=True)  # fmt: skip
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            return time.perf_counter() - t0, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)

        one(), one("-p", "no:dspex")  # warm the file cache
        for i in range(pairs):
            arms = [("off", ("-p", "no:dspex")), ("on", ())]
            if i % 2:
                arms.reverse()
            got = {k: one(*a) for k, a in arms}
            walls.append(got["on"][0] - got["off"][0])
            cpus.append(got["on"][1] - got["off"][1])
    return walls, cpus


def _import_ms(python: str, module: str, runs: int) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    out = [float(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(runs)]
    return statistics.median(out) * 1e3


def ci_path(ctx: Any) -> list[str]:
    """Replay from the disk cache in a new process at 2k/25k/100k (time, CPU, peak RSS), the fill of
    the largest, pytest start-up with the plugin unused (paired), import times."""
    sizes = (2000, 10_000) if ctx.fast else (2000, 25_000, 100_000)
    runs = 1 if ctx.fast else 3
    rows = ["| what | figure | notes |", "|---|---|---|"]
    cache_dir = tempfile.mkdtemp(prefix="dspex-bench-replay-")
    server, url = start_server(0.0)
    try:
        fill = run_case(ctx.py, "cases_dspex.py", "fill", url=url, n=sizes[-1], cache_dir=cache_dir)
    finally:
        server.kill()  # replay needs no server: a miss is an error
    rows.append(f"| fill: {sizes[-1]} examples fetched and written to the disk cache, ChatAdapter | peak RSS "
                f"{fill['peak_rss_mb']:.0f} MB; {fill['wall_s']:.1f} s, {fill['cpu_s'] / sizes[-1] * 1e3:.3f} ms CPU/ex | "
                f"server latency 0, C=256, default memory tier |")  # fmt: skip
    if sizes[-1] == 100_000:
        ctx.target("fill of 100k examples: peak RSS", f"{fill['peak_rss_mb']:.0f} MB", "≤ 400 MB", fill["peak_rss_mb"] <= 400)
    per_size = {}
    for n in sizes:
        res = [run_case(ctx.py, "cases_dspex.py", "replay", url=url, n=n, cache_dir=cache_dir) for _ in range(runs)]
        per_size[n] = res
        ms = [r["ms_per_example"] for r in res]
        runq = [r["runq_ms_per_example"] for r in res if r.get("runq_ms_per_example") is not None]
        waited = f"; the loop thread waited for a CPU {spread(runq, '{:.3f}')} ms/ex" if runq else ""
        rows.append(f"| replay N={n} from the disk cache, new process, ChatAdapter, a plain sync metric | "
                    f"{spread(ms, '{:.3f}')} ms/ex; CPU {spread([r['cpu_ms_per_example'] for r in res], '{:.3f}')} ms/ex{waited}; "
                    f"peak RSS {max(r['peak_rss_mb'] for r in res):.0f} MB | {runs} fresh process(es), all hits asserted; "
                    f"voluntary context switches (waits) {spread([float(r['waits']) for r in res], '{:.0f}')} |")  # fmt: skip
        m = statistics.median(ms)
        cpu = statistics.median(r["cpu_ms_per_example"] for r in res)
        ctx.target(f"replay from disk, new process, N={n}: per example", f"{m:.3f} ms (CPU {cpu:.3f} ms)", "≤ 0.1 ms", m <= 0.1)
    big = sizes[-1]
    peak = max(r["peak_rss_mb"] for r in per_size[big])
    if big == 100_000:
        ctx.target("replay of 100k examples: peak RSS", f"{peak:.0f} MB", "≤ 300 MB", peak <= 300)
    lin = statistics.median(r["ms_per_example"] for r in per_size[big]) / statistics.median(r["ms_per_example"] for r in per_size[sizes[0]])
    ctx.target(f"replay linear in N: per-example time at {big} / at {sizes[0]}", f"{lin:.2f}", "≤ 1.25", lin <= 1.25)

    # start-up: bytecode compiled (as pip installs it), and without any (an editable install under
    # PYTHONDONTWRITEBYTECODE=1, as tox sets it)
    pairs = 6 if ctx.fast else 20
    compileall.compile_dir(str(ROOT / "pytest_dspex"), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    walls, cpus = _startup_pairs(pairs, env)
    no_bc = {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": tempfile.mkdtemp(prefix="no-pyc-")}
    walls_nb, cpus_nb = _startup_pairs(max(4, pairs // 2), no_bc)
    ms = "{:+.0f}"
    rows.append(f"| pytest start-up, plugin installed and unused, vs `-p no:dspex` ({pairs} paired runs) | wall "
                f"{spread([w * 1e3 for w in walls], ms)} ms; CPU {spread([c * 1e3 for c in cpus], ms)} ms | median (min–max) of "
                f"the per-pair differences; bytecode compiled |")  # fmt: skip
    rows.append(f"| the same without bytecode ({len(walls_nb)} pairs) | wall {spread([w * 1e3 for w in walls_nb], ms)} ms; "
                f"CPU {spread([c * 1e3 for c in cpus_nb], ms)} ms | every module compiled at each start "
                f"(PYTHONDONTWRITEBYTECODE=1, empty PYTHONPYCACHEPREFIX) |")  # fmt: skip
    w, c = statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3
    ctx.target("pytest start-up, plugin unused (median of paired wall differences)", f"{w:+.0f} ms (CPU {c:+.0f} ms)", "≤ +50 ms", w <= 50)
    imp = _import_ms(ctx.py, "pytest_dspex", 7)
    use = statistics.median(run_case(ctx.py, "cases_dspex.py", "import_use")["s"] for _ in range(5)) * 1e3
    dspy_imp = _import_ms(ctx.dpy, "dspy", 7) if ctx.dpy else None
    rows.append(f"| `import pytest_dspex` / + first use of Predict, LM, Evaluate, Signature | {imp:.0f} ms / {use:.0f} ms | "
                f"median of 7 / 5; DSPy 3.4.1 `import dspy`: {f'{dspy_imp:.0f} ms' if dspy_imp else '-'} |")  # fmt: skip
    ctx.target("`import pytest_dspex`", f"{imp:.0f} ms", "≤ 150 ms", imp <= 150)
    return [
        "What every CI run pays: a new process that loads the plugin, reads the response cache from disk",
        "(`--dspex-cache=replay`) and scores. Peak RSS is the process's `ru_maxrss`. Wall figures need a quiet",
        "machine; CPU and peak RSS are robust to load.",
        "",
        *rows,
    ]


# -- sections that run another script as it is -------------------------------------------------
def script_section(
    ctx: Any, args: list[str], fast_args: list[str] | None, why_skip_fast: str = "", python: str | None = None
) -> tuple[list[str], str | None]:
    """Run ``python bench/<args>``; the section is its output, verbatim. Returns (lines, stdout or None)."""
    if ctx.fast and fast_args is None:
        return [f"Not run in fast mode ({why_skip_fast})."], None
    argv = fast_args if ctx.fast and fast_args is not None else args
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([python or ctx.py, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=ROOT, env=env)
    took = time.perf_counter() - t0
    cmd = "python bench/" + " ".join(argv)
    if out.returncode != 0:
        last = [line[:200] for line in (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:]] or ["(no output)"]
        ctx.target(f"`{cmd}`", f"did not run: {last[0]}", "runs", False)
        return [f"`{cmd}` **did not run** (exit {out.returncode}, {took:.0f} s): {last[0]}"], None
    return [f"`{cmd}` ({took:.0f} s):", "", "```", *out.stdout.rstrip().splitlines(), "```"], out.stdout


def html_report(ctx: Any) -> list[str]:
    lines, out = script_section(ctx, ["html_report.py", "--n", "10000", "--runs", "5"], ["html_report.py", "--n", "2000", "--runs", "1"])
    if out:
        figures = {line.split(":")[0].strip(): line.split(":", 1)[1].split()[0] for line in out.splitlines() if ":" in line}
        write_ms, total_ms = float(figures.get("write_html", "nan")), float(figures.get("open + filter", "nan"))
        ctx.target("HTML report: written", f"{write_ms:.0f} ms", "≤ 1000 ms", write_ms <= 1000)
        ctx.target("HTML report: open + filter in Chromium", f"{total_ms:.0f} ms", "≤ 2000 ms", total_ms <= 2000)
    return lines


def _json_tail(out: str) -> dict[str, Any]:
    start = out.index("{")
    result: dict[str, Any] = json.loads(out[start:])
    return result


def redis(ctx: Any) -> list[str]:
    lines, out = script_section(ctx, ["cases_redis.py"], ["cases_redis.py", "--entries", "2000", "--n", "500"])
    if out:
        r = _json_tail(out)
        w = r["writers"]
        ctx.target("Redis: concurrent writers, lost / corrupt entries", f"{w['lost']} / {w['corrupt']}", "0 / 0", w["lost"] == 0 and w["corrupt"] == 0)
        hit = r["hit"]["redis_hit_ms_per_example"]
        ctx.target("Redis: a cache hit per example", f"{hit:.2f} ms", "≤ 0.5 ms", hit <= 0.5)
    return lines


def shards(ctx: Any) -> list[str]:
    lines, out = script_section(ctx, ["cases_shards.py"], ["cases_shards.py", "--per-shard", "300"])
    if out:
        r = _json_tail(out)
        ctx.target("3 shards + combine vs one unsharded run: verdict fields", "identical" if r["verdict_fields_identical"]
                   else f"differ: {r['differing_fields']}", "identical", bool(r["verdict_fields_identical"]))  # fmt: skip
        ctx.target("combine of the shard reports (median)", f"{r['combine_s_median']:.2f} s", "≤ 1 s", r["combine_s_median"] <= 1)
    return lines


def remote(ctx: Any) -> list[str]:
    lines, out = script_section(ctx, ["cases_remote.py"], None, "builds network namespaces and compiles")
    if out:
        r = _json_tail(out)
        ctx.target("remote workers in 2 namespaces vs -n 2: verdict fields", "identical" if r["verdict_fields_identical"]
                   else f"differ: {r['differing_fields']}", "identical", bool(r["verdict_fields_identical"]))  # fmt: skip
    return lines


def embedded(ctx: Any) -> list[str]:
    lines, out = script_section(ctx, ["cases_local.py", "intent", "travel"], None, "compiles on the embedded model: minutes")
    if out:
        for line in out.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                score = row.get("score", row.get("test_score"))
                if isinstance(score, int | float):
                    ctx.target(f"embedded model, {row.get('case', row.get('task', '?'))}: held-out score", f"{score:.3f}", "", None)
    return lines


def dspy_migration(ctx: Any) -> list[str]:
    """Issue 25's reproductions (DSPy saves imported, round trips): outcomes, not times; needs DSPy."""
    if ctx.dpy is None:
        return ["Not run (`--no-dspy`)."]
    lines, _ = script_section(ctx, ["dspy_migration.py"], ["dspy_migration.py"], python=ctx.dpy)
    return lines
