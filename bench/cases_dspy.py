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


def _checked(res) -> dict:
    """DSPy's score (0-1) and its errors: an example whose call failed has an empty Prediction."""
    score = float(res.score) / 100 if res.score > 1 else float(res.score)
    errors = sum(1 for _, pred, _ in res.results if "team" not in pred)
    return {"score": score, "errors": errors}


def case_throughput(url: str, n: int, concurrency: int) -> dict:
    """Cold, as ours: timed from creating the LM (a fresh process, no warm-up)."""
    devset = dev(n)
    t0 = time.perf_counter()
    configure(url, cache=False)
    ev = dspy.Evaluate(devset=devset, metric=metric, num_threads=concurrency, display_progress=False)
    res = ev(dspy.Predict("message -> team"))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ex_per_s": n / wall, **_checked(res)}


def case_record(url: str, n: int) -> dict:
    """Fill DSPy's cache (``DSPY_CACHEDIR``) with ``n`` answers, for ``cache_cold`` in a new process."""
    configure(url, cache=True)
    ev = dspy.Evaluate(devset=dev(n), metric=metric, num_threads=64, display_progress=False)
    return _checked(ev(dspy.Predict("message -> team")))


def case_cache_cold(url: str, n: int) -> dict:
    """As ours: a new process on a cache another run recorded; ``disk``: the first pass, ``memory``:
    a second pass with the same LM. The LM is built before the timer (as ours)."""
    configure(url, cache=True)
    devset = dev(n)
    out: dict = {}
    for tier in ("disk", "memory"):
        ev = dspy.Evaluate(devset=devset, metric=metric, num_threads=64, display_progress=False)
        t0 = time.perf_counter()
        res = ev(dspy.Predict("message -> team"))
        out[f"{tier}_ms"] = (time.perf_counter() - t0) / n * 1e3
        checked = _checked(res)
        out[f"{tier}_score"], out[f"{tier}_errors"] = checked["score"], checked["errors"]
    return out


def case_bootstrap(url: str, n: int) -> dict:
    lm = configure(url, cache=False)
    opt = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=4, max_labeled_demos=16)
    t0 = time.perf_counter()
    compiled = opt.compile(dspy.Predict("message -> team"), trainset=dev(n))
    wall = time.perf_counter() - t0
    bootstrapped = [d for d in compiled.demos if d.get("augmented")]
    return {"wall_s": wall, "calls": len(lm.history), "bootstrapped": len(bootstrapped)}


if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(globals()[f"case_{name}"](**args)))
