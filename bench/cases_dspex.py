"""pytest-dspex side of the benchmarks: ``python cases_dspex.py CASE JSON_ARGS`` prints one JSON line."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time


def dev(n: int, offset: int = 0):
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(offset, offset + n)
    ]  # fmt: skip


def metric(example, prediction, trace=None):
    return example.team == prediction.team


def program(lm):
    import pytest_dspex as dspex

    return dspex.Predict("message -> team", lm=lm)


def lm_for(url: str, concurrency: int, cache=None):
    import pytest_dspex as dspex

    return dspex.LM("fake", base_url=url, api_key="bench", cache=cache, concurrency=concurrency, retries=0)


def case_throughput(url: str, n: int, concurrency: int) -> dict:
    import pytest_dspex as dspex

    lm = lm_for(url, concurrency)
    ev = dspex.Evaluate(dev(n), metric, concurrency=concurrency)
    ev(program(lm)) if n > 200 else None  # warm the pool
    t0 = time.perf_counter()
    res = ev(program(lm))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ex_per_s": n / wall, "score": res.score, "errors": len(res.errors)}


def case_cache(url: str, n: int) -> dict:
    import pytest_dspex as dspex

    d = tempfile.mkdtemp()
    cache = dspex.ResponseCache(d)
    lm = lm_for(url, 64, cache)
    ev = dspex.Evaluate(dev(n), metric, concurrency=64)
    ev(program(lm))
    cache.flush()
    t0 = time.perf_counter()
    res = ev(program(lm))
    mem = (time.perf_counter() - t0) / n
    assert res.usage.cache_hits == n
    disk_lm = lm_for(url, 64, dspex.ResponseCache(d))
    t0 = time.perf_counter()
    res = ev(program(disk_lm))
    disk = (time.perf_counter() - t0) / n
    assert res.usage.cache_hits == n
    return {"memory_ms": mem * 1e3, "disk_ms": disk * 1e3}


def case_bootstrap(url: str, n: int) -> dict:
    from pytest_dspex.optimize import BootstrapFewShot

    lm = lm_for(url, 16)
    opt = BootstrapFewShot(metric, max_bootstrapped_demos=4, max_labeled_demos=16, concurrency=16)
    t0 = time.perf_counter()
    opt.compile(program(lm), trainset=dev(n))
    return {"wall_s": time.perf_counter() - t0, "calls": lm.usage.calls, "passed": opt.report.passed}


def case_import_use() -> dict:
    t0 = time.perf_counter()
    import pytest_dspex as dspex

    _ = (dspex.Predict, dspex.LM, dspex.Evaluate, dspex.Signature)
    return {"s": time.perf_counter() - t0}


def case_big(url: str, n: int, cache_dir: str) -> dict:
    import pytest_dspex as dspex

    lm = lm_for(url, 256, dspex.ResponseCache(cache_dir, "replay", memory_entries=1000))
    t0 = time.perf_counter()
    res = dspex.Evaluate(dev(n), metric, concurrency=64)(program(lm))
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": wall, "us_per_example": wall / n * 1e6, "peak_rss_mb": rss, "hits": res.usage.cache_hits}


def case_fill(url: str, n: int, cache_dir: str) -> dict:
    import pytest_dspex as dspex

    cache = dspex.ResponseCache(cache_dir)
    lm = lm_for(url, 256, cache)
    dspex.Evaluate(dev(n), metric, concurrency=256)(program(lm))
    cache.flush()
    return {"entries": len(cache)}


if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"case_{name}"](**args)))
