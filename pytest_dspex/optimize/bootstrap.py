"""``BootstrapFewShot``: DSPy's semantics, with the teacher runs done concurrently.

What matches DSPy 3.4.1: the student is reset; the teacher is a copy of (teacher or student)
carrying ``Random(0).sample``-d labeled demos; each training example runs with a fresh trace and
with itself removed from the teacher's demos; a run passes when
``metric(example, prediction, trace) >= metric_threshold`` (or is truthy without a threshold);
each traced step of a passing run becomes a bootstrapped demo of its predictor; an example is
tried up to ``max_rounds`` times, later rounds at temperature 1.0 with a distinct rollout id (so
the cache does not hand back the same answer); the rest of the budget is filled with labeled
examples that were not bootstrapped.

What differs: examples run ``concurrency`` at a time. The demos kept are still the first
``max_bootstrapped_demos`` passing examples *in trainset order*, so the result does not depend on
completion order; once that prefix is settled, in-flight runs are cancelled (their requests are
closed, not left dangling) and no new ones start.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _runtime, events, settings
from ..lm.usage import Usage, track_usage
from ..metrics import metric_name
from ..primitives import Example
from ..programs import Module, Predict, trace_scope
from .coverage import cover_sample, covered, label_function, spread

__all__ = ["BootstrapFewShot", "BootstrapReport", "LabeledFewShot"]


@dataclass
class BootstrapReport:
    attempted: int = 0
    passed: int = 0
    runs: int = 0
    errors: int = 0
    bootstrapped_indices: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0


def _same_inputs(demo: dict[str, Any], example: Example) -> bool:
    keys = example.input_keys or ()
    return bool(keys) and all(demo.get(k) == example.get(k) for k in keys)


class LabeledFewShot:
    """Give every predictor ``k`` demos drawn from the trainset with ``Random(seed)``.

    With ``cover_labels`` (the default) and a classifier's closed-set output, the draw covers every
    label before any label twice (``coverage.cover_sample``); otherwise it is ``Random(seed).sample``
    as in DSPy.
    """

    def __init__(self, k: int = 16, seed: int = 0, *, cover_labels: bool = True) -> None:
        self.k = k
        self.seed = seed
        self.cover_labels = cover_labels

    def compile(self, student: Module, trainset: Sequence[Example]) -> Module:
        program = student.reset_copy()
        k = min(self.k, len(trainset))
        if k <= 0:
            return program
        label_of = label_function(program) if self.cover_labels else None
        for p in program.predictors():
            p.demos = [ex.toDict() for ex in cover_sample(list(trainset), k, random.Random(self.seed), label_of)]
        return program


class BootstrapFewShot:
    """Few-shot demos from the program's own passing runs on the trainset.

        optimizer = BootstrapFewShot(metric=team_matches, max_bootstrapped_demos=4)
        compiled = optimizer.compile(Predict(Triage), trainset=train)
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        metric_threshold: float | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        teacher_lm: Any = None,
        concurrency: int = 16,
        cover_labels: bool = True,
    ) -> None:
        self.metric = metric
        self.cover_labels = cover_labels
        # set by a candidate search whose bootstrappers share one teacher: a training example's
        # teacher run is then made once for all of them, cache or no cache
        self.shared_runs: dict[str, _SharedRun] | None = None
        self.metric_threshold = metric_threshold
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max(1, max_rounds)
        self.teacher_lm = teacher_lm
        self.concurrency = max(1, concurrency)
        self.report = BootstrapReport()

    def compile(self, student: Module, *, trainset: Sequence[Example], teacher: Module | None = None) -> Module:
        return _runtime.run_sync(self.acompile(student, trainset=trainset, teacher=teacher))

    async def acompile(
        self, student: Module, *, trainset: Sequence[Example], teacher: Module | None = None
    ) -> Module:
        if _runtime.in_runtime():
            return await self._compile(student, list(trainset), teacher)
        return await _runtime.run_async(self._compile(student, list(trainset), teacher))

    def _passes(self, example: Example, prediction: Any, trace: Any) -> bool:
        value = self.metric(example, prediction, trace)
        if self.metric_threshold is not None:
            return bool(float(value) >= self.metric_threshold)
        return bool(value)

    async def _compile(self, student: Module, trainset: list[Example], teacher: Module | None) -> Module:
        started = time.perf_counter()
        program = student.reset_copy()
        if teacher is not None and any(p.demos for p in teacher.predictors()):
            base_teacher = teacher.deepcopy()
        else:
            base_teacher = LabeledFewShot(self.max_labeled_demos).compile(teacher or student, trainset)
        if self.teacher_lm is not None:
            base_teacher.set_lm(self.teacher_lm)
        paths = [path for path, _ in program.named_predictors()]
        teacher_paths = [path for path, _ in base_teacher.named_predictors()]
        if paths != teacher_paths:
            from .._exceptions import ConfigError

            raise ConfigError(f"teacher predictors {teacher_paths} do not match the student's {paths}")

        wanted = self.max_bootstrapped_demos
        report = BootstrapReport()
        outcomes: dict[int, dict[str, list[dict[str, Any]]] | None] = {}
        next_index = 0
        stop = asyncio.Event()
        label_of = label_function(program) if self.cover_labels else None
        # with labels, walk on until the kept demos show as many labels as they can
        target = min(wanted, covered(trainset, label_of)) if label_of is not None else 0

        def pick(indices: list[int]) -> list[int]:
            """The passing examples kept: new labels first, in trainset order, then the rest."""
            if label_of is None:
                return indices[:wanted]
            seen: set[Any] = set()
            first: list[int] = []
            for i in indices:
                if label_of(trainset[i]) not in seen and len(first) < wanted:
                    seen.add(label_of(trainset[i]))
                    first.append(i)
            rest = [i for i in indices if i not in first]
            return sorted(first + rest[: wanted - len(first)])

        def settled_prefix() -> int | None:
            """The shortest resolved prefix whose passing examples are enough, or None."""
            passed: list[int] = []
            for i in range(len(trainset)):
                if i not in outcomes:
                    return None
                if outcomes[i] is not None:
                    passed.append(i)
                    if len(passed) < wanted:
                        continue
                    if label_of is None:
                        return i + 1
                    kept = pick(passed)
                    if covered([trainset[j] for j in kept], label_of) >= target:
                        return i + 1
            return len(trainset)

        def settled() -> bool:
            return settled_prefix() is not None

        async def run_example(i: int, example: Example) -> dict[str, list[dict[str, Any]]] | None:
            teacher_copy = base_teacher.deepcopy()
            for p in teacher_copy.predictors():
                p.demos = [d for d in p.demos if not _same_inputs(d, example)]
            by_id = {id(p): path for path, p in teacher_copy.named_predictors()}
            inputs = {k: example[k] for k in example.input_keys or ()}
            for round_ in range(self.max_rounds):
                overrides = {"temperature": 1.0, "rollout_id": round_} if round_ else None
                report.runs += 1
                try:
                    with settings.context(call_overrides=overrides), trace_scope() as trace:
                        prediction = await teacher_copy.acall(**inputs)
                    ok = self._passes(example, prediction, trace)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    report.errors += 1
                    ok = False
                    trace = []
                if events.has_listeners():
                    events.emit(events.OptimizerEvent("bootstrap_run", {"index": i, "round": round_, "passed": ok}))
                if ok:
                    demos: dict[str, list[dict[str, Any]]] = {}
                    for pred, step_inputs, step_out in trace:
                        path = by_id.get(id(pred))
                        if path is None:
                            continue
                        demo = {**step_inputs, **step_out.toDict(), "augmented": True}
                        demos.setdefault(path, []).append(demo)
                    return demos
            return None

        async def run_shared(i: int, example: Example) -> dict[str, list[dict[str, Any]]] | None:
            """``run_example``, run once per example for every bootstrapper sharing ``shared_runs``.

            The run is a task of its own: it goes on while any bootstrapper still waits for it and
            is cancelled when the last one stops waiting (its search settled).
            """
            shared = self.shared_runs
            if shared is None:
                return await run_example(i, example)
            key = json.dumps({k: example[k] for k in example.input_keys or ()}, sort_keys=True, default=str)
            entry = shared.get(key)
            if entry is None:
                entry = shared[key] = _SharedRun(asyncio.ensure_future(run_example(i, example)))
            entry.waiters += 1
            try:
                out = await asyncio.shield(entry.task)
            except asyncio.CancelledError:
                if not entry.task.done() or entry.task.cancelled():
                    entry.waiters -= 1
                    if entry.waiters == 0 and shared.get(key) is entry:
                        entry.task.cancel()
                        del shared[key]
                raise
            entry.waiters -= 1
            return None if out is None else {path: [dict(d) for d in ds] for path, ds in out.items()}

        async def worker() -> None:
            nonlocal next_index
            while not stop.is_set() and next_index < len(trainset):
                i = next_index
                next_index += 1
                report.attempted += 1
                outcomes[i] = await run_shared(i, trainset[i])
                if settled():
                    stop.set()

        with track_usage() as usage:
            workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(trainset)) or 1)]
            waiter = asyncio.ensure_future(stop.wait())
            all_done = asyncio.ensure_future(asyncio.gather(*workers, return_exceptions=True))
            await asyncio.wait([waiter, all_done], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
            for w in workers:
                w.cancel()
            waiter.cancel()
            await asyncio.gather(*workers, waiter, all_done, return_exceptions=True)

        bootstrapped: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
        # the result depends on the settled prefix only, not on which in-flight runs finished
        prefix = settled_prefix() or len(trainset)
        passing = [i for i in range(prefix) if outcomes.get(i) is not None]
        for i in pick(passing):
            demos = outcomes[i]
            assert demos is not None
            report.bootstrapped_indices.append(i)
            for path, ds in demos.items():
                bootstrapped[path].extend(ds)
        report.passed = len(report.bootstrapped_indices)

        used = set(report.bootstrapped_indices)
        rest = [ex for i, ex in enumerate(trainset) if i not in used]
        random.Random(0).shuffle(rest)
        for path, predictor in program.named_predictors():
            aug = bootstrapped[path][:wanted]
            labeled = [_labeled_demo(predictor, ex) for ex in rest]
            predictor.demos = spread(aug, labeled, max(self.max_labeled_demos, len(aug)), label_of)
        report.usage = usage
        report.elapsed_s = time.perf_counter() - started
        self.report = report
        if events.has_listeners():
            events.emit(
                events.OptimizerEvent(
                    "bootstrap_done",
                    {"passed": report.passed, "attempted": report.attempted, "metric": metric_name(self.metric)},
                )
            )
        return program


@dataclass
class _SharedRun:
    """One teacher run on one training example, shared by the bootstrappers of a search."""

    task: asyncio.Future[dict[str, list[dict[str, Any]]] | None]
    waiters: int = 0


def _labeled_demo(predictor: Predict, example: Example) -> dict[str, Any]:
    names = predictor.signature.fields
    return {k: v for k, v in example.items() if k in names}
