"""DSPy 3.4.1 side of the benchmarks (run in its own venv): ``python cases_dspy.py CASE JSON_ARGS``."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp())

import dspy


def dev(n: int, offset: int = 0):
    return [
        dspy.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                     team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(offset, offset + n)
    ]  # fmt: skip


def metric(example, prediction, trace=None):
    return example.team == prediction.team


def configure(url: str, cache: bool) -> dspy.LM:
    lm = dspy.LM("openai/fake", api_base=url, api_key="bench", cache=cache, num_retries=0)
    dspy.configure(lm=lm)
    return lm


def case_throughput(url: str, n: int, concurrency: int) -> dict:
    configure(url, cache=False)
    ev = dspy.Evaluate(devset=dev(n), metric=metric, num_threads=concurrency, display_progress=False)
    t0 = time.perf_counter()
    res = ev(dspy.Predict("message -> team"))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ex_per_s": n / wall, "score": float(res.score) / 100 if res.score > 1 else float(res.score)}


def case_cache(url: str, n: int) -> dict:
    configure(url, cache=True)
    ev = dspy.Evaluate(devset=dev(n), metric=metric, num_threads=64, display_progress=False)
    ev(dspy.Predict("message -> team"))
    t0 = time.perf_counter()
    ev(dspy.Predict("message -> team"))
    return {"memory_ms": (time.perf_counter() - t0) / n * 1e3}


def case_bootstrap(url: str, n: int) -> dict:
    lm = configure(url, cache=False)
    opt = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=4, max_labeled_demos=16)
    t0 = time.perf_counter()
    opt.compile(dspy.Predict("message -> team"), trainset=dev(n))
    return {"wall_s": time.perf_counter() - t0, "calls": len(lm.history)}


if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"case_{name}"](**args)))
