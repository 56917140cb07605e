"""pytest-dspex side of the benchmarks: ``python cases_dspex.py CASE JSON_ARGS`` prints one JSON line."""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def dev(n: int, offset: int = 0):
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(offset, offset + n)
    ]  # fmt: skip


def preimport() -> None:
    """The library's modules, imported before any timer, as DSPy's are (``import dspy`` at the top of
    cases_dspy.py): import time is its own row, not part of throughput or per-example figures."""
    import aiohttp  # noqa: F401  (the transport imports it when the first LM is made)
    import yarl  # noqa: F401

    import pytest_dspex.evaluation.scoring
    import pytest_dspex.lm.client
    import pytest_dspex.lm.transport
    import pytest_dspex.programs.adapters
    import pytest_dspex.programs.modules  # noqa: F401


def metric(example, prediction, trace=None):
    return example.team == prediction.team


def program(lm, adapter=None):
    import pytest_dspex as dspex

    return dspex.Predict("message -> team", lm=lm, adapter=adapter)


def lm_for(url: str, concurrency: int, cache=None):
    import pytest_dspex as dspex

    return dspex.LM("fake", base_url=url, api_key="bench", cache=cache, concurrency=concurrency, retries=0)


def case_cold(url: str, n: int, concurrency: int, adapter: str = "chat") -> dict:
    """A user's first run: a fresh process, a new LM (default settings, memory cache), a new Evaluate, no warm-up.

    CPU is this process's (``time.process_time``, every thread); the server runs in another process.
    Timed from creating the LM (connection set-up in), as DSPy's; the modules are imported before.
    """
    import pytest_dspex as dspex

    devset = dev(n)
    cpu0, t0 = time.process_time(), time.perf_counter()
    lm = dspex.LM("fake", base_url=url, api_key="bench", concurrency=concurrency)
    res = dspex.Evaluate(devset, metric, concurrency=concurrency)(program(lm, adapter))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert res.usage.calls == n and res.usage.cache_hits == 0, res.usage
    return {"wall_s": wall, "ex_per_s": n / wall, "cpu_ms_per_example": cpu / n * 1e3, "score": res.score,
            "errors": len(res.errors)}  # fmt: skip


def case_cache_cold(url: str, n: int, cache_dir: str, adapter: str = "chat") -> dict:
    """Every answer a cache hit, as a user meets it: a fresh process, a new LM on a cache another run recorded.

    ``disk_*``: the first pass (every answer read from disk); ``memory_*``: a second pass of a new
    ``Evaluate`` with the same LM (every answer in the memory tier). Wall and CPU per example.
    """
    import pytest_dspex as dspex

    devset = dev(n)
    lm = lm_for(url, 64, dspex.ResponseCache(cache_dir))
    out = {}
    for tier in ("disk", "memory"):
        cpu0, t0 = time.process_time(), time.perf_counter()
        res = dspex.Evaluate(devset, metric, concurrency=64)(program(lm, adapter))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert res.usage.cache_hits == n, res.usage
        out[f"{tier}_ms"], out[f"{tier}_cpu_ms"] = wall / n * 1e3, cpu / n * 1e3
        out[f"{tier}_score"], out[f"{tier}_errors"] = res.score, len(res.errors)
    return out


def case_record(url: str, n: int, cache_dir: str, adapter: str = "chat") -> dict:
    """Record ``n`` answers into a disk cache (what a user's first run with a cache directory does)."""
    import pytest_dspex as dspex

    lm = lm_for(url, 64, dspex.ResponseCache(cache_dir))
    dspex.Evaluate(dev(n), metric, concurrency=64)(program(lm, adapter))
    lm.close()  # waits for the cache's disk writes
    entries = len(lm.cache)
    lm.cache.close()
    return {"entries": entries}


def case_bootstrap(url: str, n: int) -> dict:
    from pytest_dspex.optimize import BootstrapFewShot

    lm = lm_for(url, 16)
    opt = BootstrapFewShot(metric, max_bootstrapped_demos=4, max_labeled_demos=16, concurrency=16)
    t0 = time.perf_counter()
    compiled = opt.compile(program(lm), trainset=dev(n))
    wall = time.perf_counter() - t0
    demos = [d for d in compiled.demos if d.get("augmented")] if hasattr(compiled, "demos") else []
    return {"wall_s": wall, "calls": lm.usage.calls, "passed": opt.report.passed, "bootstrapped": len(demos), "waits": opt.report.waits}


def case_import_use() -> dict:
    t0 = time.perf_counter()
    import pytest_dspex as dspex

    _ = (dspex.Predict, dspex.LM, dspex.Evaluate, dspex.Signature)
    return {"s": time.perf_counter() - t0}


def case_big(url: str, n: int, cache_dir: str, misses: bool = False) -> dict:
    """Replay ``n`` answers from the disk cache; ``misses``: every lookup misses (the cache key names
    the endpoint, so another URL finds nothing): ``n`` failed examples, each a ``cache_miss`` error."""
    import pytest_dspex as dspex

    if misses:
        url = url.replace("127.0.0.1", "localhost")
    lm = lm_for(url, 256, dspex.ResponseCache(cache_dir, "replay", memory_entries=1000))
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = dspex.Evaluate(dev(n), metric, concurrency=64)(program(lm))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # replay looks answers up under the recording's endpoint: with another URL every lookup misses
    # (a CacheMissError per example), so a run that is not all hits (or all misses) is an error
    if misses:
        assert res.usage.cache_hits == 0 and res.errors_by_kind == {"cache_miss": n}, (res.usage, res.errors_by_kind)
        return {"wall_s": wall, "us_per_example": wall / n * 1e6, "cpu_us_per_example": cpu / n * 1e6,
                "peak_rss_mb": rss, "misses": n}  # fmt: skip
    assert res.usage.cache_hits == n and not res.errors, (res.usage, res.errors_by_kind)
    return {"wall_s": wall, "us_per_example": wall / n * 1e6, "cpu_us_per_example": cpu / n * 1e6,
            "peak_rss_mb": rss, "hits": res.usage.cache_hits}  # fmt: skip


def case_fill(url: str, n: int, cache_dir: str, adapter: str = "chat") -> dict:
    """A first run with a cache directory: ``n`` answers fetched and written (default memory tier)."""
    import pytest_dspex as dspex

    cache = dspex.ResponseCache(cache_dir)
    lm = lm_for(url, 256, cache)
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = dspex.Evaluate(dev(n), metric, concurrency=256)(program(lm, adapter))
    lm.close()  # waits for the cache's disk writes
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    entries = len(cache)
    cache.close()
    assert entries == n and res.score == 1.0 and not res.errors, (entries, res.score, res.errors_by_kind)
    return {"entries": entries, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": _peak_mb()}


def case_replay(n: int, cache_dir: str, url: str, adapter: str = "chat") -> dict:
    """What CI does: a new process replays ``n`` answers from the disk cache another run recorded
    (``--dspex-cache=replay``: the default memory tier, a miss is an error), ChatAdapter, a plain
    sync metric (a user's function). The LM is built before the timer; peak RSS is the process's."""
    import pytest_dspex as dspex
    from pytest_dspex._support import runtime

    devset = dev(n)
    lm = lm_for(url, 16, dspex.ResponseCache(cache_dir, "replay"))
    delays0, waits0 = _run_delays(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = dspex.Evaluate(devset, metric, concurrency=64)(program(lm, adapter))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    waits, delays1 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - waits0, _run_delays()
    assert res.usage.cache_hits == n and res.score == 1.0 and not res.errors, (res.usage, res.errors_by_kind)
    runq = None
    if delays0 is not None and delays1 is not None and runtime._current is not None:
        loop = runtime._current.thread.native_id  # the thread every example runs on
        runq = (delays1.get(loop, 0) - delays0.get(loop, 0)) / 1e6 / n
    return {"ms_per_example": wall / n * 1e3, "cpu_ms_per_example": cpu / n * 1e3, "peak_rss_mb": _peak_mb(), "n": n,
            "runq_ms_per_example": runq, "waits": waits}  # fmt: skip


def _run_delays() -> dict[int, int] | None:
    """Linux: each thread's time so far waiting for a CPU while runnable (ns, ``/proc/self/task/*/schedstat``),
    by thread id; None elsewhere. On a busy machine it is most of the gap between wall time and CPU."""
    try:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[1])
        return out
    except (OSError, IndexError, ValueError):
        return None


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    if name != "import_use":
        preimport()
    print(json.dumps(globals()[f"case_{name}"](**args)))
