"""``BootstrapFewShot``: DSPy's semantics, with the teacher runs done concurrently.

What matches DSPy 3.4.1: the student is reset; the teacher is a copy of (teacher or student)
carrying ``Random(0).sample``-d labeled demos, sampled per predictor; each training example runs
with a fresh trace and with itself removed from the teacher's demos; each traced step of a
passing run becomes a bootstrapped demo of its predictor; an example is tried up to
``max_rounds`` times, later rounds at temperature 1.0 with a distinct rollout id (so the cache
does not hand back the same answer); the rest of the budget is filled per predictor with labeled
examples that were not bootstrapped (DSPy's ``Random(0).sample``, one draw per predictor).

What differs, on purpose:

* **Every demo earned.** A run passes when ``metric(example, prediction, trace) >=
  metric_threshold``; without a threshold a bool must be True and a number must give full credit
  (``>= 1.0``): a graded metric's 0.5 is truthy, and DSPy would keep that half-right answer as a demo.
* **Every demo complete.** A labeled demo carries every field of its predictor's signature (inputs
  and outputs; ChainOfThought's ``reasoning`` excepted, as in DSPy): a predictor only gets labeled
  demos from examples that have its fields. A pipeline's second predictor, whose outputs the
  trainset does not hold, gets bootstrapped demos or none (``BootstrapReport.predictors`` says which).
* **Concurrent, never more calls than needed.** Examples still settle in trainset order (the demos
  kept are the first ``max_bootstrapped_demos`` passing examples, whatever order runs finish in),
  but runs start as a window: as many as demos are still needed (so when the first examples pass,
  exactly DSPy's calls: 4 for a Predict, 8 for a two-step Module), widened once runs fail often
  (pass rate under ``WIDEN_BELOW``) to ``WIDEN_SHARE`` of the still-needed count over the pass rate seen so far, at
  most ``concurrency``: when few examples pass, runs go side by side. The window is sized on whole
  waves: when a run finishes, the runs started with it are given ``WAVE_GRACE`` of its time to finish
  too (a run once started cannot be taken back, and sizing on a wave's first answers overshot DSPy's
  count whenever its failures came in before its passes). Once the prefix is settled, in-flight runs are
  cancelled (their requests are closed, not left dangling) and no new ones start.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._support import runtime as _runtime
from ..errors import CompileStoppedError
from ..evaluation.metrics import metric_name
from ..evaluation.scoring import current_example_timeout, metric_caller, score_example
from ..lm.usage import Usage, track_usage
from ..observe import events
from ..programs import settings
from ..programs.modules import Module, Predict
from ..programs.primitives import Example, as_example_list
from .coverage import cover_sample, covered, label_function, spread

__all__ = ["BootstrapFewShot", "BootstrapReport", "LabeledFewShot", "demo_fields", "full_credit", "missing_fields"]

#: the pass rate under which bootstrapping runs more examples at once than demos are still needed
#: (simulated on 50-example trainsets, 4 demos: calls never above DSPy's at accuracy 0.9, above
#: on 15% of trainsets at 0.5 by 1-2 calls, and 4-5x fewer sequential steps than DSPy at 0.15)
WIDEN_BELOW = 1 / 3
#: the share of the still-needed demos that the runs in flight are expected to bring once widened:
#: under 1, so the window seldom reaches past the example DSPy's one-at-a-time walk stops at
#: (bench/bootstrap_calls.py, median of 3 runs at accuracy 0.15: 33 -> 27 calls for a Predict, DSPy 27;
#: 64 -> 54 for a two-step Module, DSPy 54; simulated with jittered latencies, the same number of
#: sequential steps as a share of 1)
WIDEN_SHARE = 0.7

#: how long the window waits, once a run finishes, for the runs started with it (a share of that run's
#: time) before it is sized on what is known: runs started together mostly finish together
WAVE_GRACE = 0.5

#: the fewest teacher runs, every one raising in the metric, that stop the compile as a bug in the test's
#: metric (fewer when the trainset is smaller): a first wave of one run (a candidate needing one demo)
#: whose example the metric raises on is one example, within the error budget of a 48-example trainset
METRIC_STOP_RUNS = 4

#: fields a labeled demo may lack: ChainOfThought's rationale, which no trainset holds (as in DSPy)
GENERATED_FIELDS = frozenset({"reasoning"})


@dataclass
class PredictorDemos:
    """What one predictor got: how many demos of each kind, and why it has no labeled ones."""

    labeled: int = 0
    bootstrapped: int = 0
    #: the predictor's fields no training example holds (so it cannot be given labeled demos)
    unlabeled_fields: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labeled": self.labeled, "bootstrapped": self.bootstrapped}
        if self.unlabeled_fields:
            out["unlabeled_fields"] = list(self.unlabeled_fields)
        return out


@dataclass
class BootstrapReport:
    attempted: int = 0
    passed: int = 0
    runs: int = 0
    errors: int = 0
    bootstrapped_indices: list[int] = field(default_factory=list)
    #: passing runs not kept because a traced step left one of its predictor's fields empty
    incomplete: int = 0
    #: how many times the window waited for answers (a run's latency each, or a grace period)
    waits: int = 0
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0
    #: predictor path -> its demos by kind
    predictors: dict[str, PredictorDemos] = field(default_factory=dict)


def full_credit(value: Any, threshold: float | None = None) -> bool:
    """Whether a metric value earns a demo: ``>= threshold``; without one, True or ``>= 1.0``.

    A value that is not a number (a non-bool object) counts by its truthiness, as in DSPy.
    """
    if isinstance(value, bool):
        return value if threshold is None else float(value) >= threshold
    try:
        number = float(value)
    except (TypeError, ValueError):
        if threshold is not None:
            raise
        return bool(value)
    if math.isnan(number):
        return False
    return number >= (1.0 if threshold is None else threshold)


def demo_fields(predictor: Predict) -> list[str]:
    """The fields a demo of ``predictor`` must carry: its inputs and outputs (``reasoning`` aside)."""
    return [n for n in predictor.signature.fields if n not in GENERATED_FIELDS]


def missing_fields(predictor: Predict, example: Any) -> list[str]:
    """``predictor``'s demo fields that ``example`` (an Example or a demo dict) lacks or leaves empty."""
    return [n for n in demo_fields(predictor) if _lacks(example, n)]


def _labelable(predictor: Predict, trainset: Sequence[Example]) -> list[Example]:
    return [ex for ex in trainset if not missing_fields(predictor, ex)]


def _unlabeled_fields(predictor: Predict, trainset: Sequence[Example]) -> list[str]:
    """The predictor's fields that no example holds."""
    return [n for n in demo_fields(predictor) if all(_lacks(ex, n) for ex in trainset)]


def _lacks(example: Any, name: str) -> bool:
    try:
        return example[name] is None
    except (KeyError, TypeError):
        return True


def _same_inputs(demo: dict[str, Any], example: Example) -> bool:
    keys = example.input_keys or ()
    return bool(keys) and all(demo.get(k) == example.get(k) for k in keys)


class LabeledFewShot:
    """Give every predictor ``k`` demos drawn from the trainset with ``Random(seed)``.

    Each predictor draws its own sample (DSPy: one ``Random(seed)``, one ``sample`` per predictor),
    from the examples that hold all of its fields: a predictor the trainset cannot label gets none.
    With ``cover_labels`` (the default) and a classifier's closed-set output, the draw covers every
    label before any label twice (``coverage.cover_sample``).
    """

    def __init__(self, k: int = 16, seed: int = 0, *, cover_labels: bool = True) -> None:
        self.k = k
        self.seed = seed
        self.cover_labels = cover_labels

    def compile(self, student: Module, trainset: Sequence[Example]) -> Module:
        trainset = as_example_list(trainset, "trainset")
        program = student.reset_copy()
        if self.k <= 0 or not trainset:
            return program
        label_of = label_function(program) if self.cover_labels else None
        rng = random.Random(self.seed)
        for p in program.predictors():
            pool = _labelable(p, trainset)
            p.demos = [_labeled_demo(p, ex) for ex in cover_sample(pool, min(self.k, len(pool)), rng, label_of)]
        return program


class BootstrapFewShot:
    """Few-shot demos from the program's own passing runs on the trainset.

        optimizer = BootstrapFewShot(metric=team_matches, max_bootstrapped_demos=4)
        compiled = optimizer.compile(Predict(Triage), trainset=train)

    ``metric_threshold``: the score a run needs for its trace to become demos; without it a
    bool metric must return True and a graded one full credit (1.0).
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
        #: called after each training example is resolved with (resolved, passed) so far
        self.on_outcome: Callable[[int, int], None] | None = None

    def compile(self, student: Module, *, trainset: Sequence[Example], teacher: Module | None = None) -> Module:
        return _runtime.run_sync(self.acompile(student, trainset=trainset, teacher=teacher))

    async def acompile(
        self, student: Module, *, trainset: Sequence[Example], teacher: Module | None = None
    ) -> Module:
        examples = as_example_list(trainset, "trainset")
        if _runtime.in_runtime():
            return await self._compile(student, examples, teacher)
        return await _runtime.run_async(self._compile(student, examples, teacher))

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
            from ..errors import ConfigError

            raise ConfigError(f"teacher predictors {teacher_paths} do not match the student's {paths}")

        wanted = self.max_bootstrapped_demos
        report = BootstrapReport()
        outcomes: dict[int, dict[str, list[dict[str, Any]]] | None] = {}
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
            if wanted <= 0:
                return 0
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

        def window() -> int:
            """How many runs to have in flight.

            While the pass rate seen so far, ``(passed + 1) / (resolved + 1)``, is at least
            ``WIDEN_BELOW``: as many as demos are still needed, so no run starts that DSPy's
            one-at-a-time walk would not also make. Below it, ``WIDEN_SHARE`` of the still-needed
            count over that rate (at most ``concurrency``): when few examples pass, runs go side by side.
            """
            passed = sum(1 for o in outcomes.values() if o is not None)
            needed = max(1, wanted - passed)  # walking on for labels: one more at a time
            rate = (passed + 1) / (len(outcomes) + 1)
            wide = needed if rate >= WIDEN_BELOW else math.floor(WIDEN_SHARE * needed / rate + 0.5)
            return max(1, min(self.concurrency, wide))

        # a teacher run is scored as every example is (``evaluation.score_example``): the example
        # timeout, the metric's value checked (a number in [0, 1]), a sync metric off the loop
        call_metric, mname, timeout = metric_caller(self.metric), metric_name(self.metric), current_example_timeout()

        # the training examples on whose teacher run the metric raised (its first exception): when it
        # raised on every run of the first wave, and on ``METRIC_STOP_RUNS`` at least, the compile stops (a
        # bug in the test's metric)
        raised: dict[int, str] = {}

        async def run_example(i: int, example: Example) -> _Run:
            metric_error: str | None = None
            teacher_copy = base_teacher.deepcopy()
            for p in teacher_copy.predictors():
                p.demos = [d for d in p.demos if not _same_inputs(d, example)]
            by_id = {id(p): path for path, p in teacher_copy.named_predictors()}
            for round_ in range(self.max_rounds):
                # later rounds resample the teacher (the metric, an LM judge maybe, runs as it is)
                run = _Resampled(teacher_copy, {"temperature": 1.0, "rollout_id": round_}) if round_ else teacher_copy
                report.runs += 1
                trace: list[Any] = []
                scored = await score_example(
                    run, example, self.metric, index=i, timeout=timeout, mname=mname, call_metric=call_metric, trace=trace
                )
                ok = scored.error_kind is None and full_credit(scored.score, self.metric_threshold)
                if scored.error_kind is not None:
                    report.errors += 1
                    if scored.error_kind == "metric" and metric_error is None:
                        metric_error = scored.error or "metric raised"
                if events.has_listeners():
                    events.emit(events.OptimizerEvent("bootstrap_run", {"index": i, "round": round_, "passed": ok}))
                if ok:
                    demos: dict[str, list[dict[str, Any]]] = {}
                    complete = True
                    for pred, step_inputs, step_out in trace:
                        path = by_id.get(id(pred))
                        if path is None:
                            continue
                        demo = {**step_inputs, **step_out.toDict(), "augmented": True}
                        complete = complete and not missing_fields(pred, demo)
                        demos.setdefault(path, []).append(demo)
                    if complete:  # a step that left a field empty would teach an incomplete answer
                        return demos, None
                    report.incomplete += 1
            return None, metric_error

        async def run_shared(i: int, example: Example) -> dict[str, list[dict[str, Any]]] | None:
            """``run_example``, run once per example for every bootstrapper sharing ``shared_runs``.

            The run is a task of its own: it goes on while any bootstrapper still waits for it and
            is cancelled when the last one stops waiting (its search settled).
            """
            shared = self.shared_runs
            if shared is None:
                out, metric_error = await run_example(i, example)
                if metric_error is not None:
                    raised[i] = metric_error
                return out
            key = json.dumps({k: example[k] for k in example.input_keys or ()}, sort_keys=True, default=str)
            entry = shared.get(key)
            if entry is None:
                entry = shared[key] = _SharedRun(asyncio.ensure_future(run_example(i, example)))
            entry.waiters += 1
            try:
                ran = await asyncio.shield(entry.task)
            except asyncio.CancelledError:
                if not entry.task.done() or entry.task.cancelled():
                    entry.waiters -= 1
                    if entry.waiters == 0 and shared.get(key) is entry:
                        entry.task.cancel()
                        del shared[key]
                raise
            entry.waiters -= 1
            out, metric_error = ran
            if metric_error is not None:
                raised[i] = metric_error
            return None if out is None else {path: [dict(d) for d in ds] for path, ds in out.items()}

        with track_usage() as usage:
            running: dict[asyncio.Future[Any], int] = {}
            launched: dict[asyncio.Future[Any], tuple[int, float]] = {}  # a run's wave (launch step) and start time
            wave = next_index = first_wave = 0
            try:
                while settled_prefix() is None:
                    room = window() - len(running)
                    wave += 1
                    now = time.perf_counter()
                    while room > 0 and next_index < len(trainset):
                        run = asyncio.ensure_future(run_shared(next_index, trainset[next_index]))
                        running[run], launched[run] = next_index, (wave, now)
                        report.attempted += 1
                        next_index += 1
                        room -= 1
                    if wave == 1:
                        first_wave = len(running)
                    if not running:
                        break
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    # the runs started with the ones that finished are finishing too: wait for them a
                    # little before sizing the window on what is known. Deciding on the first answers of
                    # a wave overshot: a run once started cannot be taken back, so a wave's early
                    # failures widened the window past DSPy's stopping point (28 calls for DSPy's 27).
                    # A straggler of an earlier wave is not waited for again: it costs one grace at most
                    waves = {launched[t][0] for t in done}
                    mates = {t for t in running if t not in done and launched[t][0] in waves}
                    if mates:
                        took = time.perf_counter() - min(launched[t][1] for t in done)
                        more, _ = await asyncio.wait(mates, timeout=WAVE_GRACE * took)
                        done |= more
                    report.waits += 1
                    for finished in done:
                        del launched[finished]
                        outcomes[running.pop(finished)] = finished.result()
                    if self.on_outcome is not None:
                        self.on_outcome(len(outcomes), sum(1 for o in outcomes.values() if o is not None))
                    if raised and len(raised) == len(outcomes) >= max(first_wave, min(METRIC_STOP_RUNS, len(trainset))):
                        from .selection import metric_stop_reason

                        first = raised[min(raised)].split(" raised ", 1)[-1][:300]
                        raise CompileStoppedError(
                            metric_stop_reason(f"metric raised on {len(raised)} of {len(outcomes)} teacher runs: {first}")
                        )
            finally:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)

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

        # DSPy's fill: the examples not bootstrapped, shuffled with Random(0); then per predictor one
        # draw of another Random(0) (here: from those of them that hold the predictor's fields)
        used = set(report.bootstrapped_indices)
        raw = [ex for i, ex in enumerate(trainset) if i not in used]
        random.Random(0).shuffle(raw)
        rng = random.Random(0)
        for path, predictor in program.named_predictors():
            aug = bootstrapped[path][:wanted]
            pool = _labelable(predictor, raw)
            budget = max(self.max_labeled_demos, len(aug))
            if label_of is None:
                drawn = rng.sample(pool, max(0, min(budget - len(aug), len(pool))))
                predictor.demos = [*aug, *(_labeled_demo(predictor, ex) for ex in drawn)]
            else:
                predictor.demos = spread(aug, [_labeled_demo(predictor, ex) for ex in pool], budget, label_of)
            report.predictors[path] = PredictorDemos(
                labeled=sum(1 for d in predictor.demos if not d.get("augmented")),
                bootstrapped=sum(1 for d in predictor.demos if d.get("augmented")),
                unlabeled_fields=_unlabeled_fields(predictor, trainset),
            )
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


class _Resampled(Module):
    """``program`` run with ``call_overrides`` (a later round's temperature and rollout id)."""

    def __init__(self, program: Module, overrides: dict[str, Any]) -> None:
        self._program = program
        self._overrides = overrides

    async def aforward(self, **inputs: Any) -> Any:
        with settings.context(call_overrides=self._overrides):
            return await self._program.acall(**inputs)


#: a teacher run's demos by predictor path (None: it earned none) and the metric's exception, if it raised
_Run = tuple[dict[str, list[dict[str, Any]]] | None, str | None]


@dataclass
class _SharedRun:
    """One teacher run on one training example, shared by the bootstrappers of a search."""

    task: asyncio.Future[_Run]
    waiters: int = 0


def _labeled_demo(predictor: Predict, example: Example) -> dict[str, Any]:
    names = predictor.signature.fields
    return {k: v for k, v in example.items() if k in names}
