"""Concurrent evaluation in which every example ends scored or with its error recorded.

One function, ``score_example``, turns one example into an ``ExampleRecord`` (program call →
metric → score → error kind → usage); ``evaluate_records`` runs it over a dataset for ``Evaluate``
(``evaluate.py``), the optimizers and the plugin's whole-dataset tests, and the plugin's per-example items call it directly,
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
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._support import lending as _lending
from .._support.threads import SyncCaller
from ..errors import DspexError
from ..lm import estimates
from ..lm.usage import track_usage
from ..observe import events, tracing
from ..programs import settings
from ..programs.modules import Module, trace_scope
from ..programs.primitives import Example, Prediction
from .metrics import is_inline, metric_name, to_score
from .records import ERROR_KINDS, INFRA_ERROR_KINDS, ExampleRecord

if TYPE_CHECKING:
    from .comparison import RedrawPlan

__all__ = [
    "INFRA_ERROR_KINDS",
    "ExampleRecord",
    "current_example_timeout",
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
    notes = [n.removeprefix(_NOTE) for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.startswith(_NOTE)]
    return f"{type(exc).__name__}: {exc}" + "".join(f" ({n})" for n in notes)


_NOTE = "pytest-dspex: "  # programs.function.NOTE: what a plain function met before it raised


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
    redraw: RedrawPlan | None = None,
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

    ``redraw`` (a noisy golden baseline's ``comparison.RedrawPlan``; one draw, no repeats): when the
    first answer disagrees with the side the example's baseline leans to, ask again with fresh draws
    (``rollout_id=redraw-<j>``: their own cache entries, replayed in CI) up to the plan's limit, stopping
    at one on the baseline's side. Their scores go to ``record.redraws`` for the paired gate; the score
    stays the first answer's, their calls count in the record's usage.
    """
    call = call_metric if call_metric is not None else metric_caller(metric)
    mname = mname or metric_name(metric)

    def once() -> Awaitable[ExampleRecord]:
        return _score_once(
            program, example, call, mname, index=index, key=key, timeout=timeout, keep=keep_exceptions, trace=trace
        )

    if repeats <= 1:
        first = await once()
        ask = redraw.ask(first.key, first.score) if redraw is not None and first.error_kind not in INFRA_ERROR_KINDS else None
        return first if ask is None else await _redraw(first, once, *ask)
    runs: list[ExampleRecord] = []
    for r in range(repeats):
        if r == 0:
            runs.append(await once())
            continue
        overrides = {**(settings.get("call_overrides") or {}), "rollout_id": r}
        with settings.context(call_overrides=overrides):
            runs.append(await once())
    return _merge_repeats(runs, repeat_reduction)


async def _redraw(first: ExampleRecord, once: Callable[[], Awaitable[ExampleRecord]], target: float, limit: int) -> ExampleRecord:
    """``first`` with up to ``limit`` fresh answers' scores in ``redraws`` (stopping at one scoring ``target``)."""
    scores: list[float] = []
    lost = False
    for j in range(1, limit + 1):
        overrides = {**(settings.get("call_overrides") or {}), "rollout_id": f"redraw-{j}"}
        with settings.context(call_overrides=overrides):
            again = await once()
        for k, v in again.usage.items():
            first.usage[k] = first.usage.get(k, 0) + v
        first.latency_s = round(first.latency_s + again.latency_s, 6)
        if again.error_kind in INFRA_ERROR_KINDS or again.error_kind == "metric":  # not measured
            lost = True
            break
        scores.append(again.score)
        if again.score == target:
            break
    first.redraws = scores
    first.redraw_lost = lost
    return first


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
        if getattr(settings.current_lm(), "estimate", False):  # --dspex-estimate: its answers are the labels'
            labels = {k: v for k, v in example.items() if k not in inputs}
            named = getattr(program, "outputs", None)  # a plain function's ``outputs=``: not the row's id or notes
            if isinstance(named, tuple) and named:
                labels = {k: v for k, v in labels.items() if k in named}
            with estimates.labelled(labels):
                pred = await program.acall(**inputs)
        elif trace is None:
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
    redraw: RedrawPlan | None = None,
    lend_workers: Callable[[Callable[[int], None]], None] | None = None,
) -> list[ExampleRecord]:
    """Score ``(index, example)`` pairs with ``concurrency`` workers; records in input order.

    ``lend_workers(add)`` is told, as the evaluation starts, how to give it more workers: ``add(k)``
    starts ``k`` more on the examples not yet begun (a caller whose other work is done lends its share).

    ``repeats`` runs each example that many times; a record keeps its live exception only when its
    error kind is in ``keep_exceptions``; ``redraw`` re-asks the examples whose first answer disagrees
    with a noisy baseline (see ``score_example``).

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
                redraw=redraw,
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

    def add(k: int) -> None:
        for _ in range(k):
            extra = asyncio.get_running_loop().create_task(worker(), context=base.copy())
            spares.add(extra)
            extra.add_done_callback(spares.discard)

    if lend_workers is not None:
        lend_workers(add)
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
