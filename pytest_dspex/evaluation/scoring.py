"""Concurrent evaluation in which every example ends scored or with its error recorded.

    result = Evaluate(devset, metric=team_matches, concurrency=32)(program)
    result.score, result.n, result.ci95, result.errors_by_kind, result.records[0]

One function, ``score_example``, turns one example into an ``ExampleRecord`` (program call →
metric → score → error kind → usage); ``Evaluate`` and the plugin's per-example items both use it,
so the two test modes agree by construction. ``concurrency`` workers pull examples from a shared
iterator on pytest-dspex's event loop (no task per example, no O(N²) bookkeeping).

An exception in the program or the metric is caught, classified (``lm_unavailable``,
``lm_timeout``, ``parse``, ``metric``, ``program``, ``timeout`` …), scores 0 and stays in the
denominator: errors never vanish from a score. Metrics may be sync or async; a sync metric runs in
a worker thread, off the event loop, so it may itself call an LM program (LM-as-judge).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._support import lending as _lending
from .._support import runtime as _runtime
from .._support.threads import SyncCaller
from ..errors import DspexError
from ..lm.usage import Usage, track_usage
from ..observe import events, tracing
from ..programs import settings
from ..programs.modules import Module, trace_scope
from ..programs.primitives import Example, Prediction, as_example
from .metrics import is_inline, metric_name, to_score
from .records import ERROR_KINDS, INFRA_ERROR_KINDS, ExampleRecord
from .stats import clustered_confidence_interval, confidence_interval

__all__ = [
    "INFRA_ERROR_KINDS",
    "Evaluate",
    "EvaluationResult",
    "ExampleRecord",
    "current_example_timeout",
    "evaluate",
    "evaluate_records",
    "example_timeout",
    "score_example",
]

ProgressCallback = Callable[[int, int, float, int], None]

_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("dspex_example_timeout", default=None)


@contextlib.contextmanager
def example_timeout(seconds: float | None) -> Iterator[None]:
    """The per-example timeout of every evaluation started in the block that sets none itself.

    How a session's ``--dspex-example-timeout`` reaches the evaluations an optimizer runs.
    """
    token = _timeout.set(seconds)
    try:
        yield
    finally:
        _timeout.reset(token)


def error_kind(exc: BaseException) -> str:
    """The record's ``error_kind`` for an exception raised by a program or a metric."""
    if isinstance(exc, DspexError) and exc.kind in ERROR_KINDS:
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "program"


class _MetricRaised(Exception):
    """The metric (not the program) raised ``error``: the record's kind is ``metric``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: the example did not finish within the example timeout"
    return f"{type(exc).__name__}: {exc}"


def current_example_timeout() -> float | None:
    """The timeout ``example_timeout`` set for this context (what an evaluation started here would use)."""
    return _timeout.get()


MetricCaller = Callable[..., Awaitable[Any]]


def metric_caller(metric: Callable[..., Any]) -> MetricCaller:
    """``await call(example, prediction[, trace])`` runs ``metric``, its kind (async, sync, inline) worked out once.

    Async metrics run on the loop; sync ones in a worker thread (they may call an LM or block) until
    their first calls show they are quick and never wait on the loop, then inline
    (``_threads.SyncCaller``); the ready-made metrics (``metrics.is_inline``)
    are pure and quick and run inline from the start.
    """
    if is_inline(metric):

        async def call(example: Example, prediction: Prediction, *trace: Any) -> Any:
            value = metric(example, prediction, *trace)
            return await value if inspect.isawaitable(value) else value

    elif inspect.iscoroutinefunction(metric) or inspect.iscoroutinefunction(getattr(metric, "__call__", None)):  # noqa: B004

        async def call(example: Example, prediction: Prediction, *trace: Any) -> Any:
            value = await metric(example, prediction, *trace)
            return await value if inspect.isawaitable(value) else value

    else:
        sync = SyncCaller(metric)  # to_thread's semantics, less CPU; inline once known to be quick

        async def call(example: Example, prediction: Prediction, *trace: Any) -> Any:
            value = await sync(example, prediction, *trace)
            return await value if inspect.isawaitable(value) else value

    return call


async def score_example(
    program: Module,
    example: Example,
    metric: Callable[..., Any],
    *,
    index: int,
    key: str | None = None,
    timeout: float | None = None,
    mname: str | None = None,
    repeats: int = 1,
    keep_exceptions: Container[str] = (),
    call_metric: MetricCaller | None = None,
    trace: list[Any] | None = None,
    repeat_reduction: str = "mean",
) -> ExampleRecord:
    """Run ``program`` on one example, score it with ``metric`` and account for it, never raising.

    Every place that scores an example goes through here: evaluations, the optimizers' teacher runs
    (``optimize.bootstrap``) and candidate scoring. With ``trace`` (a list), the program's predictor
    calls are recorded into it and the metric is called as ``metric(example, prediction, trace)``:
    DSPy's call while bootstrapping, whose steps become demos.

    The record keeps the live exception (with its traceback, hence every frame and local of the
    failed call) only when its error kind is in ``keep_exceptions`` (the plugin's per-example items
    re-raise a program's exception); otherwise it carries the kind and the message alone, so a large
    evaluation in which every example fails holds no frames. ``call_metric`` is ``metric_caller(metric)``,
    worked out once per evaluation (made here when not given).

    ``timeout`` bounds the program call and the metric together (per repeat); an example over it is
    cancelled and recorded as ``timeout`` (a sync metric's thread cannot be killed; its result is ignored).

    ``repeats`` > 1 runs the example that many times, one after the other, repeat ``r`` with
    ``rollout_id=r`` in its LM calls (repeat 0 with none), so each repeat has its own cache entry and
    replay mode reproduces every one of them. The record's ``score`` reduces the repeats
    (``repeat_reduction``: ``mean``; ``all``, the worst draw: pass^k for 0/1 scores; ``any``, the
    best draw: pass@k), ``repeats`` the per-repeat scores; its prediction is the first repeat's that produced one; an
    error in any repeat scores that repeat 0 and is the record's error (the first one), so an LM
    error in any repeat counts against the error budget.
    """
    call = call_metric if call_metric is not None else metric_caller(metric)
    mname = mname or metric_name(metric)

    def once() -> Awaitable[ExampleRecord]:
        return _score_once(
            program, example, call, mname, index=index, key=key, timeout=timeout, keep=keep_exceptions, trace=trace
        )

    if repeats <= 1:
        return await once()
    runs: list[ExampleRecord] = []
    for r in range(repeats):
        if r == 0:
            runs.append(await once())
            continue
        overrides = {**(settings.get("call_overrides") or {}), "rollout_id": r}
        with settings.context(call_overrides=overrides):
            runs.append(await once())
    return _merge_repeats(runs, repeat_reduction)


#: how an example's repeats make its score: the mean, the worst draw (pass^k), the best (pass@k)
REPEAT_REDUCTIONS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda scores: sum(scores) / len(scores),
    "all": min,
    "any": max,
}


def _merge_repeats(runs: list[ExampleRecord], reduction: str = "mean") -> ExampleRecord:
    first = runs[0]
    answered = next((r for r in runs if r.prediction is not None), first)
    failed = next((r for r in runs if r.error_kind is not None), None)
    usage: dict[str, float] = {}
    for r in runs:
        for k, v in r.usage.items():
            usage[k] = usage.get(k, 0) + v
    scores = [r.score for r in runs]
    return ExampleRecord(
        index=first.index,
        key=first.key,
        inputs=first.inputs,
        expected=first.expected,
        prediction=answered.prediction,
        score=REPEAT_REDUCTIONS[reduction](scores),
        error_kind=failed.error_kind if failed is not None else None,
        error=failed.error if failed is not None else None,
        latency_s=round(sum(r.latency_s for r in runs), 6),
        usage=usage,
        repeats=scores,
        reduction=None if reduction == "mean" else reduction,
        example=first.example,
        output=answered.output,
        exception=failed.exception if failed is not None else None,
    )


async def _score_once(
    program: Module,
    example: Example,
    call_metric: MetricCaller,
    mname: str,
    *,
    index: int,
    key: str | None = None,
    timeout: float | None = None,
    keep: Container[str] = (),
    trace: list[Any] | None = None,
) -> ExampleRecord:
    t0 = time.perf_counter()
    inputs = {k: example[k] for k in example.input_keys or ()}
    pred: Prediction | None = None
    score, kind, message, error = 0.0, None, None, None

    async def run() -> float:
        nonlocal pred
        if trace is None:
            pred = await program.acall(**inputs)
        else:
            with trace_scope() as steps:
                pred = await program.acall(**inputs)
            trace.extend(steps)
        try:
            value = await (call_metric(example, pred) if trace is None else call_metric(example, pred, trace))
        except (DspexError, TimeoutError):
            raise  # an LM judge's LM error, the example timeout: said as what they are
        except Exception as exc:
            raise _MetricRaised(exc) from exc
        return to_score(value, mname)

    with track_usage() as usage:
        try:
            if timeout is None:
                score = await run()
            else:
                async with asyncio.timeout(timeout):
                    score = await run()
        except asyncio.CancelledError:
            raise
        except _MetricRaised as raised:
            kind, message = "metric", f"metric {mname} raised {describe_error(raised.error)}"
            if kind in keep:
                error = raised.error
        except Exception as exc:
            kind, message = error_kind(exc), describe_error(exc)
            if kind in keep:
                error = exc
    return ExampleRecord.build(
        index,
        example,
        pred,
        score,
        error_kind=kind,
        error=message,
        latency_s=time.perf_counter() - t0,
        usage=usage.to_dict(),
        key=key,
        exception=error,
    )


async def evaluate_records(
    program: Module,
    items: Iterable[tuple[int, Example]],
    metric: Callable[..., Any],
    *,
    concurrency: int = 16,
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    total: int | None = None,
    program_name: str = "",
    repeats: int = 1,
    keep_exceptions: Container[str] = (),
    repeat_reduction: str = "mean",
) -> list[ExampleRecord]:
    """Score ``(index, example)`` pairs with ``concurrency`` workers; records in input order.

    ``repeats`` runs each example that many times; a record keeps its live exception only when its
    error kind is in ``keep_exceptions`` (see ``score_example``).

    ``progress(done, total, score_so_far, errors)`` is called at most ten times a second and at the end.
    """
    pending = list(items)
    total = len(pending) if total is None else total
    timeout = _timeout.get() if timeout is None else timeout
    records: list[ExampleRecord | None] = [None] * len(pending)
    mname = metric_name(metric)
    call = metric_caller(metric)
    listen = events.has_listeners()
    state = {"done": 0, "score": 0.0, "errors": 0, "last": 0.0}
    queue = iter(enumerate(pending))
    traced = tracing.enabled()  # spans: evaluate -> example -> program -> LM call (off: no cost per example)
    spares: set[asyncio.Task[None]] = set()
    # the evaluation's own context: a spare started from inside a waiting example must not run in that
    # example's context, or its LM calls would be counted in the waiting example's usage as well
    base = contextvars.copy_context()

    def lend() -> None:
        # an example waits to retry: one more example runs meanwhile (``_lending``), at most
        # ``concurrency`` of them at a time
        if len(spares) >= concurrency:
            return
        spare = asyncio.get_running_loop().create_task(worker(1), context=base.copy())
        spares.add(spare)
        spare.add_done_callback(spares.discard)

    async def worker(limit: int | None = None) -> None:
        _lending.lender.set(lend)
        for slot, (i, ex) in queue:
            started = tracing.example_started(i) if traced else None
            rec = await score_example(
                program, ex, metric, index=i, timeout=timeout, mname=mname, repeats=repeats,
                keep_exceptions=keep_exceptions, call_metric=call, repeat_reduction=repeat_reduction,
            )  # fmt: skip
            if started is not None:
                tracing.example_finished(started, rec)
            records[slot] = rec
            state["done"] += 1
            state["score"] += rec.score
            if rec.error_kind is not None:
                state["errors"] += 1
            if listen:
                events.emit(events.ExampleEvent(i, rec.score, rec.error_kind, rec.latency_s, program_name))
            if progress is not None:
                now = time.monotonic()
                if now - state["last"] >= 0.1 or state["done"] == len(pending):
                    state["last"] = now
                    progress(int(state["done"]), total, state["score"] / state["done"], int(state["errors"]))
            if limit is not None:
                limit -= 1
                if limit <= 0:
                    return

    attributes = {"dspex.program": program_name, "dspex.metric": mname, "dspex.examples": len(pending)} if traced else None
    with tracing.span("dspex.evaluate", attributes) if traced else tracing.NO_SPAN as span:
        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)) or 1)))
            while spares:
                await asyncio.gather(*list(spares))
        finally:
            for spare in list(spares):
                spare.cancel()
        if span is not None:
            tracing.evaluate_finished(span, records)
    done = [r for r in records if r is not None]
    assert len(done) == len(pending), "every example must be accounted for"
    return done


@dataclass
class EvaluationResult:
    """Scores and accounting of one evaluation, built from its records."""

    records: list[ExampleRecord]
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0
    program: str = ""
    metric: str = ""

    @classmethod
    def from_records(
        cls,
        records: Iterable[ExampleRecord],
        *,
        program: str = "",
        metric: str = "",
        usage: Usage | None = None,
        elapsed_s: float = 0.0,
    ) -> EvaluationResult:
        """The result of records gathered anywhere (workers, shards); usage summed from them if not given."""
        recs = sorted(records, key=lambda r: r.index)
        if usage is None:
            usage = Usage()
            for r in recs:
                u = r.usage
                usage.add(
                    Usage(
                        int(u.get("calls", 0)),
                        int(u.get("cache_hits", 0)),
                        int(u.get("prompt_tokens", 0)),
                        int(u.get("completion_tokens", 0)),
                        float(u.get("cost", 0.0)),
                        retries=int(u.get("retries", 0)),
                        hedges=int(u.get("hedges", 0)),
                        estimated=int(u.get("estimated", 0)),
                    )
                )
        return cls(recs, usage, elapsed_s, program, metric)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def score(self) -> float:
        """Mean score over every example, errors included as 0 (in [0, 1])."""
        return sum(r.score for r in self.records) / self.n if self.records else 0.0

    @property
    def percent(self) -> float:
        """``score`` on DSPy's 0–100 scale (DSPy's ``Evaluate`` returns ``round(100 * mean, 2)``)."""
        return round(100 * self.score, 2)

    @property
    def errors(self) -> list[ExampleRecord]:
        return [r for r in self.records if r.error_kind is not None]

    @property
    def errors_by_kind(self) -> dict[str, int]:
        return dict(Counter(r.error_kind for r in self.records if r.error_kind is not None))

    @property
    def infra_errors(self) -> int:
        """Examples lost to the infrastructure (``INFRA_ERROR_KINDS``), not to the model."""
        return sum(1 for r in self.records if r.error_kind in INFRA_ERROR_KINDS)

    @property
    def error_rate(self) -> float:
        """Share of examples lost to infrastructure errors (what ``--dspex-max-error-rate`` bounds)."""
        return self.infra_errors / self.n if self.n else 0.0

    @property
    def lm_unavailable(self) -> bool:
        """True when most examples failed because the LM could not be reached."""
        down = sum(1 for r in self.records if r.error_kind == "lm_unavailable")
        return self.n > 0 and down * 2 > self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """95% confidence interval of the score (Wilson for pass/fail scores, normal otherwise);
        with repeats scored by their mean, clustered by example (``stats.clustered_confidence_interval``);
        a pass^k / pass@k score is one outcome per example."""
        if any(r.repeats is not None and len(r.repeats) > 1 and r.reduction is None for r in self.records):
            return clustered_confidence_interval([r.repeats or [r.score] for r in self.records])
        return confidence_interval([r.score for r in self.records])

    @property
    def flaky(self) -> list[str]:
        """Keys of the examples whose repeats disagree (empty without repeats)."""
        from .comparison import flaky_keys

        return flaky_keys(self.records)

    def by_key(self) -> dict[str, float]:
        """Per-example scores keyed by the stable example key (what the paired gate compares)."""
        return {r.key: r.score for r in self.records}

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

    def summary(self, worst: int = 5, regressed: Sequence[str] = ()) -> str:
        """Score, errors and usage, then the examples to look at: those that ``regressed`` against the
        golden first (under a regression they are the news, not the ones that were always wrong), then
        the worst others. Each is named by its key, with its inputs, expected outputs and answer."""
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
        from .records import split_expected

        def line(r: ExampleRecord) -> str:
            got = r.error or r.prediction
            expected, _meta = split_expected(r.to_json())  # the row's id is its key, not an expected output
            return f"  {r.key} (#{r.index}) score={r.score:.2f} inputs={_short(r.inputs)} expected={_short(expected)} got={_short(got)}"

        by_key = {r.key: r for r in self.records}
        first = [by_key[k] for k in regressed if k in by_key][:worst]
        if first:
            more = len(regressed) - len(first)
            lines.append(f"examples that went pass -> fail against the golden{f', first {len(first)} of {len(regressed)}' if more > 0 else ''}:")
            lines += [line(r) for r in first]
        shown = {r.key for r in first}
        bad = [r for r in self.worst(worst + len(shown)) if r.score < 1.0 and r.key not in shown][:worst]
        if bad:
            lines.append("other low-scoring examples:" if first else "worst examples:")
            lines += [line(r) for r in bad]
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
            "infra_errors": self.infra_errors,
            "lm_unavailable": self.lm_unavailable,
            "usage": self.usage.to_dict(),
            "latency_s": self.latency_percentiles(),
            "elapsed_s": self.elapsed_s,
        }
        if records:
            d["records"] = [r.to_json() for r in self.records]
        return d


def _short(value: Any, n: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


class Evaluate:
    """Evaluate programs on a dataset with a metric, concurrently.

    ``progress(done, total, score_so_far, errors)`` is called at most ten times a second and at the end;
    ``example_timeout`` (seconds) cancels an example whose program and metric take longer (``timeout``);
    ``repeats`` runs each example that many times, each repeat with its own rollout id (``score_example``);
    ``repeat_reduction`` makes an example's score from its repeats: ``mean`` (default), ``all``
    (pass^k: it passes only if every draw does) or ``any`` (pass@k).
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
        repeats: int = 1,
        repeat_reduction: str = "mean",
        num_threads: int | None = None,
        display_progress: bool = False,
        **unknown: Any,
    ) -> None:
        # DSPy's spellings: num_threads is concurrency; display_progress prints a progress line
        if unknown:
            from .._support.dspy_idioms import reject_unknown

            reject_unknown(
                "Evaluate", unknown,
                ["devset", "metric", "concurrency", "progress", "program_name", "example_timeout", "repeats",
                 "repeat_reduction", "num_threads", "display_progress"],
            )  # fmt: skip
        if num_threads is not None:
            concurrency = num_threads
        if display_progress and progress is None:
            progress = _print_progress
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if repeat_reduction not in REPEAT_REDUCTIONS:
            raise ValueError(f"repeat_reduction must be one of {', '.join(REPEAT_REDUCTIONS)}, got {repeat_reduction!r}")
        self.repeat_reduction = repeat_reduction
        self.devset = [as_example(ex, f"devset item {i}") for i, ex in enumerate(devset)]
        self.metric = metric
        self.concurrency = concurrency
        self.progress = progress
        self.program_name = program_name
        self.example_timeout = example_timeout
        self.repeats = repeats

    def __call__(self, program: Module) -> EvaluationResult:
        return _runtime.run_sync(self._run(program))

    async def acall(self, program: Module) -> EvaluationResult:
        return await _runtime.run_async(self._run(program))

    async def _run(self, program: Module) -> EvaluationResult:
        started = time.perf_counter()
        with track_usage() as usage:
            records = await evaluate_records(
                program,
                enumerate(self.devset),
                self.metric,
                concurrency=self.concurrency,
                timeout=self.example_timeout,
                progress=self.progress,
                program_name=self.program_name,
                repeats=self.repeats,
                repeat_reduction=self.repeat_reduction,
            )
        return EvaluationResult.from_records(
            records,
            program=self.program_name,
            metric=metric_name(self.metric),
            usage=usage,
            elapsed_s=time.perf_counter() - started,
        )


def _print_progress(done: int, total: int, score: float, errors: int) -> None:
    import sys

    sys.stderr.write(f"\rAverage metric: {score:.3f} ({done}/{total}, {errors} errors)" + ("\n" if done >= total else ""))


def evaluate(
    program: Module,
    devset: Sequence[Example],
    metric: Callable[..., Any],
    **kwargs: Any,
) -> EvaluationResult:
    """Shorthand for ``Evaluate(devset, metric, **kwargs)(program)``."""
    return Evaluate(devset, metric, **kwargs)(program)

