"""Shared Redis cache figures (issue 14): ``python bench/cases_redis.py [--writers 4 --entries 10000 --n 2000]``.

Starts its own ``redis-server`` on a free loopback port (Debian's package) and a loopback fake LM, then:

* **concurrent writers**: W processes each write E entries at once through ``RedisStorage`` (a
  quarter of the keys are written by every process, the rest by one); then every expected key is
  read back and checked whole: lost = missing keys, corrupt = values that do not parse or do not
  match what was written.
* **cache hit through Redis**: evaluate N examples once to fill Redis; then, in a fresh process
  in replay mode, evaluate them with an empty memory tier (a first pass that also warms the code
  paths, then a second with a new cache object: every answer a ``GET`` over loopback), and once
  more from the memory tier; wall time per example for each, and a raw ``GET`` beside them.

Prints one JSON object. Each measured step runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def _value(k: int) -> str:
    return json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": f"answer {k} " + "x" * (k % 500)}}], "k": k}
    )


def _key(k: int) -> str:
    from pytest_dspex.lm.cache import cache_key

    return cache_key({"bench": k})


def _writer(url: str, worker: int, entries: int, shared: int, start: multiprocessing.synchronize.Event) -> None:
    from pytest_dspex.lm.redis_cache import RedisStorage

    storage = RedisStorage(url)
    start.wait()
    for i in range(entries):
        k = i if i < shared else (worker + 1) * 10_000_000 + i
        storage.set(_key(k), _value(k))
    assert storage.available
    storage.close()


def case_writers(url: str, writers: int, entries: int) -> dict[str, object]:
    import redis

    shared = entries // 4
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(url, w, entries, shared, start)) for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every writer import and connect, then release them together
    t0 = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    expected = list(range(shared)) + [(w + 1) * 10_000_000 + i for w in range(writers) for i in range(shared, entries)]
    client = redis.Redis.from_url(url)
    lost = corrupt = 0
    pipe_keys = [f"dspex:v1:{_key(k)}" for k in expected]
    values = []
    for i in range(0, len(pipe_keys), 1000):
        values.extend(client.mget(pipe_keys[i : i + 1000]))
    for k, raw in zip(expected, values, strict=True):
        if raw is None:
            lost += 1
        elif raw.decode() != _value(k):
            corrupt += 1
    total = client.dbsize()
    client.close()
    return {
        "writers": writers,
        "entries_per_writer": entries,
        "writes": writers * entries,
        "distinct_keys": len(expected),
        "keys_in_redis": total,
        "lost": lost,
        "corrupt": corrupt,
        "exit_codes": [p.exitcode for p in procs],
        "wall_s": round(wall, 3),
        "writes_per_s": round(writers * entries / wall),
    }


def _dev(n: int) -> list[object]:
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(n)
    ]  # fmt: skip


def _metric(example: object, prediction: object, trace: object = None) -> bool:
    return bool(example.team == prediction.team)  # type: ignore[attr-defined]


def case_fill(url: str, lm_url: str, n: int) -> dict[str, object]:
    import pytest_dspex as dspex
    from pytest_dspex.lm.redis_cache import RedisResponseCache

    cache = RedisResponseCache(url)
    lm = dspex.LM("fake", base_url=lm_url, api_key="bench", cache=cache, concurrency=64, retries=0)
    res = dspex.Evaluate(_dev(n), _metric, concurrency=64)(dspex.Predict("message -> team", lm=lm))
    cache.flush()
    return {"entries": len(cache), "score": res.score}


def case_hit(url: str, lm_url: str, n: int) -> dict[str, object]:
    import pytest_dspex as dspex
    from pytest_dspex.lm.redis_cache import RedisResponseCache

    def run(cache: RedisResponseCache) -> tuple[float, Any]:
        lm = dspex.LM("fake", base_url=lm_url, api_key="bench", cache=cache, concurrency=64, retries=0)
        t0 = time.perf_counter()
        res = dspex.Evaluate(_dev(n), _metric, concurrency=64)(dspex.Predict("message -> team", lm=lm))
        wall = time.perf_counter() - t0
        lm.close()
        assert res.usage.cache_hits == n and not res.errors, (res.usage, res.errors[:3])
        return wall, res

    # replay: a miss would be an error, every answer must come from Redis (or memory)
    cold_s, _ = run(RedisResponseCache(url, "replay"))  # first pass in this process: code paths warm up
    cache = RedisResponseCache(url, "replay")  # an empty memory tier again: every hit is a Redis GET
    redis_s, _ = run(cache)
    mem_s, _ = run(cache)  # the same cache again: every hit from its memory tier
    storage = cache.storage
    assert storage is not None
    key = next(iter(cache._memory))
    t0 = time.perf_counter()
    for _ in range(2000):
        storage.get(key)
    get_s = (time.perf_counter() - t0) / 2000
    return {
        "n": n,
        "redis_hit_ms_per_example_first_pass": round(cold_s / n * 1e3, 4),
        "redis_hit_ms_per_example": round(redis_s / n * 1e3, 4),
        "memory_hit_ms_per_example": round(mem_s / n * 1e3, 4),
        "raw_get_ms": round(get_s * 1e3, 4),
    }


def _run(case: str, **args: object) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, json.dumps(args)], capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--case":
        print(json.dumps(globals()[f"case_{sys.argv[2]}"](**json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()

    from tests.redis_server import RedisServer, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    redis_srv = RedisServer(binary).start()
    lm_srv = subprocess.Popen(
        [sys.executable, "-m", "pytest_dspex.testing.fake_server"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert lm_srv.stdout is not None
        ready = lm_srv.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        lm_url = ready[1]
        out: dict[str, object] = {
            "writers": _run("writers", url=redis_srv.url, writers=args.writers, entries=args.entries)
        }
        client = redis_srv.client()
        client.flushdb()
        client.close()
        out["fill"] = _run("fill", url=redis_srv.url, lm_url=lm_url, n=args.n)
        out["hit"] = _run("hit", url=redis_srv.url, lm_url=lm_url, n=args.n)
        print(json.dumps(out, indent=2))
    finally:
        lm_srv.terminate()
        lm_srv.wait(10)
        redis_srv.stop()


if __name__ == "__main__":
    main()
