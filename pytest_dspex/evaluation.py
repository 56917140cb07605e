"""Concurrent evaluation in which every example ends scored or with its error recorded.

    result = Evaluate(devset, metric=team_matches, concurrency=32)(program)
    result.score, result.n, result.ci95, result.errors_by_kind, result.records[0]

``concurrency`` workers pull examples from a shared iterator on pytest-dspex's event loop (no
task per example, no O(N²) bookkeeping). An exception in the program or the metric is caught,
classified (``lm_unavailable``, ``lm_timeout``, ``parse``, ``metric``, ``program``, …), scores 0
and stays in the denominator: errors never vanish from a score.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _runtime, events
from ._exceptions import DspexError, MetricError
from .lm.usage import Usage, track_usage
from .metrics import metric_name, to_score
from .primitives import Example, Prediction
from .programs import Module, trace_scope
from .stats import confidence_interval

__all__ = ["Evaluate", "EvaluationResult", "ExampleRecord", "evaluate"]

ProgressCallback = Callable[[int, int, float, int], None]


@dataclass(slots=True)
class ExampleRecord:
    """One evaluated example: what went in, what came out, its score and any error."""

    index: int
    example: Example
    prediction: Prediction | None
    score: float
    error_kind: str | None = None
    error: str | None = None
    latency_s: float = 0.0

    @property
    def inputs(self) -> dict[str, Any]:
        keys = self.example.input_keys or ()
        return {k: self.example[k] for k in keys if k in self.example}

    @property
    def expected(self) -> dict[str, Any]:
        keys = set(self.example.input_keys or ())
        return {k: v for k, v in self.example.items() if k not in keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "inputs": self.inputs,
            "expected": self.expected,
            "prediction": self.prediction.toDict() if self.prediction is not None else None,
            "score": self.score,
            "error_kind": self.error_kind,
            "error": self.error,
            "latency_s": round(self.latency_s, 6),
        }


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, DspexError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "program"


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class EvaluationResult:
    """Scores and accounting of one evaluation."""

    records: list[ExampleRecord]
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0
    program: str = ""
    metric: str = ""

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def score(self) -> float:
        """Mean score over every example, errors included as 0 (in [0, 1])."""
        return sum(r.score for r in self.records) / self.n if self.records else 0.0

    @property
    def errors(self) -> list[ExampleRecord]:
        return [r for r in self.records if r.error_kind is not None]

    @property
    def errors_by_kind(self) -> dict[str, int]:
        return dict(Counter(r.error_kind for r in self.records if r.error_kind is not None))

    @property
    def lm_unavailable(self) -> bool:
        """True when most examples failed because the LM could not be reached."""
        down = sum(1 for r in self.records if r.error_kind == "lm_unavailable")
        return self.n > 0 and down * 2 > self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """95% confidence interval of the score (Wilson for pass/fail scores, normal otherwise)."""
        return confidence_interval([r.score for r in self.records])

    def latency_percentiles(self) -> dict[str, float]:
        lat = sorted(r.latency_s for r in self.records)
        if not lat:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0}

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))]

        return {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99)}

    def worst(self, k: int = 5) -> list[ExampleRecord]:
        """The ``k`` lowest-scoring examples (errors first)."""
        return sorted(self.records, key=lambda r: (r.score, r.error_kind is None, r.index))[:k]

    def summary(self, worst: int = 5) -> str:
        lo, hi = self.ci95
        head = (
            f"{self.program or 'program'}: score {self.score:.3f} (95% CI {lo:.3f}–{hi:.3f}) on n={self.n}"
            f"; errors {len(self.errors)}"
        )
        if self.errors_by_kind:
            head += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_kind.items())) + ")"
        head += (
            f"; LM calls {self.usage.calls} (cache hits {self.usage.cache_hits}), tokens {self.usage.tokens}"
            f", cost ${self.usage.cost:.4f}"
        )
        lines = [head]
        if self.lm_unavailable:
            lines.append("LM unavailable: most examples could not reach the LM endpoint (this is not a low score)")
        bad = [r for r in self.worst(worst) if r.score < 1.0]
        if bad:
            lines.append("worst examples:")
            for r in bad:
                got = r.error or (r.prediction.toDict() if r.prediction is not None else None)
                lines.append(f"  #{r.index} score={r.score:.2f} inputs={_short(r.inputs)} expected={_short(r.expected)} got={_short(got)}")
        return "\n".join(lines)

    def to_dict(self, *, records: bool = True) -> dict[str, Any]:
        lo, hi = self.ci95
        d: dict[str, Any] = {
            "program": self.program,
            "metric": self.metric,
            "score": self.score,
            "n": self.n,
            "ci95": [lo, hi],
            "errors": len(self.errors),
            "errors_by_kind": self.errors_by_kind,
            "lm_unavailable": self.lm_unavailable,
            "usage": self.usage.to_dict(),
            "latency_s": self.latency_percentiles(),
            "elapsed_s": self.elapsed_s,
        }
        if records:
            d["records"] = [r.to_dict() for r in self.records]
        return d


def _short(value: Any, n: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


class Evaluate:
    """Evaluate programs on a dataset with a metric, concurrently.

    ``progress(done, total, score_so_far, errors)`` is called at most ten times a second and at the end.
    """

    def __init__(
        self,
        devset: Sequence[Example],
        metric: Callable[..., Any],
        *,
        concurrency: int = 16,
        progress: ProgressCallback | None = None,
        program_name: str = "",
        example_timeout: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        for i, ex in enumerate(devset):
            if not isinstance(ex, Example) or ex.input_keys is None:
                raise ValueError(
                    f"devset item {i} is not an Example with input keys; load it with "
                    "load_dataset(path, input_keys=[...]) or call .with_inputs(...)"
                )
        self.devset = list(devset)
        self.metric = metric
        self.concurrency = concurrency
        self.progress = progress
        self.program_name = program_name
        self.example_timeout = example_timeout

    def __call__(self, program: Module) -> EvaluationResult:
        return _runtime.run_sync(self._run(program))

    async def acall(self, program: Module) -> EvaluationResult:
        return await _runtime.run_async(self._run(program))

    async def _run(self, program: Module, *, with_trace: bool = False) -> EvaluationResult:
        total = len(self.devset)
        records: list[ExampleRecord | None] = [None] * total
        metric, mname = self.metric, metric_name(self.metric)
        name = self.program_name
        progress, timeout = self.progress, self.example_timeout
        listen = events.has_listeners()
        state = {"done": 0, "score": 0.0, "errors": 0, "last": 0.0}
        items = iter(enumerate(self.devset))
        acall = program.acall

        async def one(i: int, ex: Example) -> ExampleRecord:
            t0 = time.perf_counter()
            inputs = {k: ex[k] for k in ex.input_keys or ()}
            pred: Prediction | None = None
            try:
                if with_trace:
                    with trace_scope() as trace:
                        pred = await _maybe_timeout(acall(**inputs), timeout)
                    raw = metric(ex, pred, trace)
                else:
                    pred = await _maybe_timeout(acall(**inputs), timeout)
                    raw = metric(ex, pred)
                score = to_score(raw, mname)
                rec = ExampleRecord(i, ex, pred, score, latency_s=time.perf_counter() - t0)
            except asyncio.CancelledError:
                raise
            except MetricError as exc:
                rec = ExampleRecord(i, ex, pred, 0.0, exc.kind, str(exc), time.perf_counter() - t0)
            except Exception as exc:
                rec = ExampleRecord(i, ex, pred, 0.0, error_kind(exc), describe_error(exc), time.perf_counter() - t0)
            return rec

        async def worker() -> None:
            for i, ex in items:
                rec = await one(i, ex)
                records[i] = rec
                state["done"] += 1
                state["score"] += rec.score
                if rec.error_kind is not None:
                    state["errors"] += 1
                if listen:
                    events.emit(events.ExampleEvent(i, rec.score, rec.error_kind, rec.latency_s, name))
                if progress is not None:
                    now = time.monotonic()
                    if now - state["last"] >= 0.1 or state["done"] == total:
                        state["last"] = now
                        progress(int(state["done"]), total, state["score"] / state["done"], int(state["errors"]))

        started = time.perf_counter()
        with track_usage() as usage:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, total) or 1)))
        done = [r for r in records if r is not None]
        assert len(done) == total, "every example must be accounted for"
        return EvaluationResult(done, usage, time.perf_counter() - started, name, mname)


async def _maybe_timeout(coro: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await coro
    async with asyncio.timeout(timeout):
        return await coro


def evaluate(
    program: Module,
    devset: Sequence[Example],
    metric: Callable[..., Any],
    **kwargs: Any,
) -> EvaluationResult:
    """Shorthand for ``Evaluate(devset, metric, **kwargs)(program)``."""
    return Evaluate(devset, metric, **kwargs)(program)
