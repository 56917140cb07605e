"""Where an xdist worker's CPU goes (issue 21): per process and phase, load-independent.

A real ``pytest -n N`` run of the per-example test of ``cases_limits`` (1,000 examples, the fake
endpoint refusing above 32 in flight) with a conftest that writes each process's CPU
(``RUSAGE_SELF``) at its phases: configured (interpreter, pytest, plugins, ours imported),
collected (1,000 per-example items), the first test's start (the warm-up's imports are before it),
the last test's end, the last atexit handler; the controller's ``RUSAGE_CHILDREN`` at its end,
less the workers' CPU at their last atexit handler, is their interpreter finalization. CPU times and
counts do not depend on the machine's load; wall times do (not reported).

    python bench/cases_xdist_cpu.py [N] [WORKERS]
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases_limits as cl  # noqa: E402

PHASES = '''
import atexit, os, resource, time

def _cpu(what):
    path = os.environ.get("DSPEX_BENCH_CPU")
    if path:
        r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'ctl')} {what} {r.ru_utime + r.ru_stime:.4f} {c.ru_utime + c.ru_stime:.4f}\\n")

_first_call = []  # not ``_first``: the bench conftest's own (cases_limits.CONFTEST) is set at setup, before the call

def pytest_configure(config):
    _cpu("configured")

def pytest_collection_finish(session):
    _cpu("collected")

def pytest_runtest_call(item):
    if not _first_call:
        _first_call.append(1)
        _cpu("first_test")

def pytest_unconfigure(config):
    _cpu("tests_done")
    atexit.register(_cpu, "atexit")  # registered last: runs first of the handlers
'''


def measure(n: int = 1000, workers: int = 4, *more: str) -> dict[str, Any]:
    folder = cl.project(n)
    (folder / "conftest.py").write_text((folder / "conftest.py").read_text() + PHASES)
    log = folder / "cpu.txt"
    os.environ["DSPEX_BENCH_CPU"] = str(log)
    try:
        r = cl.run(folder, "-n", str(workers), *more)
    finally:
        del os.environ["DSPEX_BENCH_CPU"]
    marks: dict[str, dict[str, tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        who, what, own, kids = line.split()
        marks.setdefault(who, {})[what] = (float(own), float(kids))
    gws = [m for who, m in marks.items() if who != "ctl"]
    out = {
        "start-up (interpreter, pytest, plugins)": statistics.mean(m["configured"][0] for m in gws),
        "collection": statistics.mean(m["collected"][0] - m["configured"][0] for m in gws),
        "warm-up, until the first test": statistics.mean(m["first_test"][0] - m["collected"][0] for m in gws),
        "tests": statistics.mean(m["tests_done"][0] - m["first_test"][0] for m in gws),
        "unconfigure to the last atexit": statistics.mean(m["atexit"][0] - m["tests_done"][0] for m in gws),
    }
    ctl = marks["ctl"]
    kids_end = ctl["atexit"][1]
    out["finalization after atexit"] = (kids_end - sum(m["atexit"][0] for m in gws)) / len(gws)
    out["worker total"] = kids_end / len(gws)
    out["controller"] = ctl["atexit"][0]
    c = r["counts"]
    out["_requests"], out["_refused"], out["_passed"], out["_cpu"] = c.get("requests", 0), c.get("over_cap", 0), r["passed"], r["cpu"]
    return out


def rows(n: int = 1000, workers: int = 4) -> list[str]:
    m = measure(n, workers)
    lines = [f"`-n {workers}`, default concurrency, N={n}: {m['_passed']} passed, {m['_requests']} requests, {m['_refused']} refused; "
             f"CPU of the run {m['_cpu']:.2f} s", "", "| phase | CPU s (per worker, mean) |", "|---|---|"]  # fmt: skip
    for k, v in m.items():
        if not k.startswith("_"):
            lines.append(f"| {k} | {v:.3f} |")
    return lines


def section(ctx: Any) -> list[str]:
    lines = [__doc__.split("\n\n")[1].replace("\n", " "), ""]
    for workers in (4, 8):
        lines += [*rows(300 if ctx.fast else 1000, workers), ""]
    return lines


if __name__ == "__main__":
    print("\n".join(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 4)))
