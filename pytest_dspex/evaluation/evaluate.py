"""``Evaluate`` / ``evaluate``: DSPy's evaluation API over the one scoring path (``scoring``)::

    result = Evaluate(devset, metric=team_matches, concurrency=32)(program)
    result.score, result.n, result.ci95, result.errors_by_kind, result.records[0]
"""


from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._support import runtime as _runtime
from ..lm.usage import track_usage
from ..programs.modules import Module
from ..programs.primitives import Example, as_example
from .comparison import RedrawPlan
from .metrics import metric_name
from .result import EvaluationResult
from .scoring import REPEAT_REDUCTIONS, ProgressCallback, evaluate_records

__all__ = ["Evaluate", "EvaluationResult", "evaluate"]


class Evaluate:
    """Evaluate programs on a dataset with a metric, concurrently.

    ``progress(done, total, score_so_far, errors)`` is called at most ten times a second and at the end;
    ``example_timeout`` (seconds) cancels an example whose program and metric take longer (``timeout``);
    ``repeats`` runs each example that many times, each repeat with its own rollout id (``score_example``);
    ``repeat_reduction`` makes an example's score from its repeats: ``mean`` (default), ``all``
    (pass^k: it passes only if every draw does) or ``any`` (pass@k).
    ``golden_outcomes`` (a golden's baseline, ``{key: score or [draws]}``) with ``redraws`` > 0: when
    the baseline's draws disagree (a noisy endpoint), an example whose first answer disagrees with its
    baseline is asked again up to ``redraws`` times (``comparison.RedrawPlan``); pass the same
    ``redraws`` to ``gates.judge`` as ``redraw_limit``. A repeatable baseline makes no extra call.
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
        golden_outcomes: Mapping[str, Any] | None = None,
        redraws: int = 0,
        **unknown: Any,
    ) -> None:
        # DSPy's spellings: num_threads is concurrency; display_progress prints a progress line
        if unknown:
            from .._support.dspy_idioms import reject_unknown

            reject_unknown(
                "Evaluate", unknown,
                ["devset", "metric", "concurrency", "progress", "program_name", "example_timeout", "repeats",
                 "repeat_reduction", "num_threads", "display_progress", "golden_outcomes", "redraws"],
            )  # fmt: skip
        if num_threads is not None:
            concurrency = num_threads
        if display_progress and progress is None:
            progress = _print_progress
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if redraws < 0:
            raise ValueError(f"redraws must be >= 0, got {redraws}")
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
        self.redraw = RedrawPlan.of(golden_outcomes, redraws) if repeats == 1 else None

    def __call__(self, program: Module) -> EvaluationResult:
        _not_dspy(program)
        return _runtime.run_sync(self._run(program))

    async def acall(self, program: Module) -> EvaluationResult:
        _not_dspy(program)
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
                redraw=self.redraw,
            )
        return EvaluationResult.from_records(
            records,
            program=self.program_name,
            metric=metric_name(self.metric),
            usage=usage,
            elapsed_s=time.perf_counter() - started,
        )


def _not_dspy(program: Any) -> None:
    """A DSPy module is a TypeError, as in the marker: run as a plain function it would fail on every
    example ("No LM is loaded") or call DSPy's own LM, uncached and uncounted."""
    from .._support.dspy_idioms import dspy_kind, dspy_program_message

    kind = dspy_kind(program)
    if kind is not None:
        raise TypeError(f"Evaluate(...)(program): {dspy_program_message(kind)}")


def _print_progress(done: int, total: int, score: float, errors: int) -> None:
    """DSPy's progress line, redrawn with ``\\r`` on a terminal; into a file or a CI log (no TTY) only the
    last, on a line of its own (``\\r`` there glued every update into one line)."""
    import sys

    line = f"Average metric: {score:.3f} ({done}/{total}, {errors} errors)"
    isatty = getattr(sys.stderr, "isatty", None)
    if callable(isatty) and isatty():
        sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
    elif done >= total:
        sys.stderr.write(line + "\n")


def evaluate(
    program: Module,
    devset: Sequence[Example],
    metric: Callable[..., Any],
    **kwargs: Any,
) -> EvaluationResult:
    """Shorthand for ``Evaluate(devset, metric, **kwargs)(program)``."""
    return Evaluate(devset, metric, **kwargs)(program)
