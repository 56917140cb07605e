"""Candidate search over bootstrapped programs (DSPy's ``BootstrapFewShotWithRandomSearch``).

Candidates, in this order (the order breaks ties: the earliest of equal scores wins):

* ``zero-shot``      no demos
* ``labeled``        ``max_labeled_demos`` labeled demos (covering the labels of a classifier)
* ``bootstrap``      BootstrapFewShot over the trainset in order
* ``shuffled-<k>``   for k in 0..num_candidates-1: the trainset shuffled with ``Random(seed + k)``
                     and a demo count drawn from 1..max_bootstrapped_demos

All candidates are built concurrently (one shared teacher, so a training example's teacher call is
made once). Then the search spends as few calls as it can on the validation set (the trainset when
none is given):

* **No answer copied from its own demo** (``leave_one_out=True``, what the compile passes when it
  chooses on the trainset): a small model copies a demo's answer, which would make the candidate with
  the most demos look best. With at least ``SKIP_OWN_MIN`` (24) training examples outside the most
  demos any candidate has, a candidate is scored on the examples that are none of its demos (every
  prompt keeps all its demos, so the server reuses the candidate's prefix); with fewer, each example
  is asked without its own demo (leave-one-out). ``selection.own_demo_rule`` decides once per compile;
  the result's ``own_demos`` and the golden's ``selection`` record say which.
* **No call whose answer is known.** A candidate whose demos equal an earlier one's is not
  evaluated: it shares that candidate's result (``duplicate_of``).
* **Racing.** Candidates are scored on a growing subset of the validation set (``race_first``
  examples, then twice as many, and so on, in a seeded random order); after each step a candidate
  that is clearly worse than the leader on the same examples (exact one-sided sign test on the
  examples where they differ, p < ``race_alpha``) is dropped, and of the rest only the best
  ``race_keep`` share goes on (successive halving; ``race_keep=1`` keeps all that are not clearly
  worse). ``dropped_at`` says after how many examples. The survivors are scored on the whole set;
  the best of them wins. ``racing=False`` scores every candidate on every example.
* **Prefix-cache friendly.** Against a server that decodes one request at a time (the embedded
  llama.cpp server) candidates are evaluated one after another, each one's examples back to back,
  so the server reuses the cached prompt prefix (instructions and demos come first in every
  prompt). Measured on the embedded server: 0.2–0.3 s a call back to back, 1.4–1.8 s when two demo
  sets alternate. ``serial=None`` decides from the LM; elsewhere candidates run side by side. The
  embedded server keeps one model instance per core: there ``serial_width`` candidates (one per
  instance) run at once, each one request at a time, so every instance keeps one candidate's prefix
  instead of all of them evaluating the same new prefix at each candidate's start; an instance
  whose candidate is done takes the next one at once (answers do not depend on the schedule: the
  server's answer is a function of its prompt).
* **An error budget.** With ``max_error_rate`` set (the plugin passes ``--dspex-max-error-rate``),
  the search stops with ``CompileStoppedError`` after a racing step as soon as the live candidates'
  answers so far lost to the infrastructure (unreachable endpoint, HTTP errors, timeouts …), or the
  metric's exceptions, are beyond that share of all the answers they give on the selection set — the
  message names the kinds and the first errors — rather than scoring every candidate on errors
  (measured: a compile against a base URL answering 404 made 75,960 requests); the chosen candidate's
  own answers are held to it too. A step's own answers are too few to judge by: one example the metric
  raises on is each candidate's 1 of a first step's 10.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._support import runtime as _runtime
from ..errors import DspexError
from ..evaluation.evaluate import Evaluate
from ..evaluation.metrics import metric_name
from ..evaluation.records import ExampleRecord
from ..evaluation.result import EvaluationResult
from ..evaluation.scoring import current_example_timeout, evaluate_records
from ..lm.usage import track_usage
from ..observe import events, tracing
from ..programs import settings
from ..programs.modules import Module
from ..programs.primitives import Example, as_example_list
from .bootstrap import BootstrapFewShot, LabeledFewShot
from .protocol import Candidate, CompileResult, OptimizerSettings
from .review import review_program
from .selection import check_error_budget, demo_count, evaluate_own_rule, own_demo_rule, own_examples, selection_words

__all__ = ["BootstrapFewShotWithRandomSearch", "Candidate", "CompileResult", "sign_test_p"]

#: with a validation set, up to this many candidates are calibrated and scored ...
CALIBRATE_FINALISTS = 3
#: ... those within this much of the best score (calibration lifted a candidate by 0.04-0.13 here)
CALIBRATE_MARGIN = 0.15


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact sign test: P(at least ``worse`` of ``worse + better`` fair coin flips)."""
    n = worse + better
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n)


class BootstrapFewShotWithRandomSearch:
    """Build candidate programs, race them on the validation set, keep the best.

        search = BootstrapFewShotWithRandomSearch(team_matches, num_candidates=4)
        result = search.compile(Predict(Triage), trainset=train, valset=dev)
        result.program, result.best.score, print(result.table())
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        metric_threshold: float | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 16,
        max_rounds: int = 1,
        num_candidates: int = 4,
        seed: int = 0,
        teacher_lm: Any = None,
        concurrency: int = 16,
        evaluate_train: bool = False,
        progress: Callable[[str], None] | None = None,
        racing: bool = True,
        race_first: int = 10,
        race_alpha: float = 0.05,
        race_keep: float = 0.5,
        serial: bool | None = None,
        serial_width: int | None = None,
        cover_labels: bool = True,
        leave_one_out: bool = False,
        calibrate: bool = True,
        max_error_rate: float | None = None,
    ) -> None:
        self.metric = metric
        self.metric_threshold = metric_threshold
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.num_candidates = num_candidates
        self.seed = seed
        self.teacher_lm = teacher_lm
        self.concurrency = concurrency
        self.evaluate_train = evaluate_train
        self.progress = progress
        self.racing = racing
        self.race_first = max(1, race_first)
        self.race_alpha = race_alpha
        self.race_keep = race_keep
        self.serial = serial
        self.serial_width = serial_width
        self.cover_labels = cover_labels
        self.leave_one_out = leave_one_out
        self.calibrate = calibrate
        self.max_error_rate = max_error_rate

    @classmethod
    def from_settings(
        cls,
        metric: Callable[..., Any],
        settings: OptimizerSettings,
        *,
        progress: Callable[[str], None] | None = None,
        leave_one_out: bool = False,
    ) -> BootstrapFewShotWithRandomSearch:
        """The search the compile flow runs by default (``--dspex-optimizer=random-search``)."""
        return cls(
            metric,
            metric_threshold=settings.metric_threshold,
            max_bootstrapped_demos=settings.demos,
            max_labeled_demos=settings.labeled_demos,
            max_rounds=settings.rounds,
            num_candidates=settings.candidates,
            seed=settings.seed,
            teacher_lm=settings.teacher_lm,
            concurrency=settings.concurrency,
            calibrate=settings.calibrate,
            progress=progress,
            max_error_rate=settings.max_error_rate,
            leave_one_out=leave_one_out,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": "BootstrapFewShotWithRandomSearch",
            "max_bootstrapped_demos": self.max_bootstrapped_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "max_rounds": self.max_rounds,
            "num_candidates": self.num_candidates,
            "seed": self.seed,
            "calibrate": self.calibrate,
            "metric_threshold": 1.0 if self.metric_threshold is None else self.metric_threshold,
        }

    def compile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult:
        with self._span(trainset, valset) as span:
            result = _runtime.run_sync(self._compile(student, as_example_list(trainset, "trainset"), _valset(trainset, valset)))
            _span_result(span, result)
            return result

    async def acompile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult:
        with self._span(trainset, valset) as span:
            result = await _runtime.run_async(self._compile(student, as_example_list(trainset, "trainset"), _valset(trainset, valset)))
            _span_result(span, result)
            return result

    def _span(self, trainset: Sequence[Example], valset: Sequence[Example] | None) -> contextlib.AbstractContextManager[Any]:
        """The compile's OpenTelemetry span (joins compile_program's, which names the program)."""
        if not tracing.enabled():
            return tracing.NO_SPAN
        attributes = {
            "dspex.optimizer": type(self).__name__,
            "dspex.candidates": self.num_candidates,
            "dspex.trainset": len(trainset),
            "dspex.valset": len(valset) if valset is not None else len(trainset),
        }
        return tracing.span("dspex.compile", attributes, join=True)

    def _bootstrapper(self, max_boot: int) -> BootstrapFewShot:
        return BootstrapFewShot(
            self.metric,
            metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=max_boot,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            teacher_lm=self.teacher_lm,
            concurrency=self.concurrency,
            cover_labels=self.cover_labels,
        )

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    async def _compile(self, student: Module, trainset: list[Example], valset: list[Example] | None) -> CompileResult:
        started = time.perf_counter()
        same_sets = valset is None
        val = trainset if valset is None else valset
        Evaluate(val, self.metric)  # checks every example has input keys, before any call
        with track_usage() as usage:
            with tracing.span("dspex.bootstrap") if tracing.enabled() else tracing.NO_SPAN:
                candidates = await self._build(student, trainset)
            unique = _dedupe(candidates)
            serial = self.serial if self.serial is not None else _one_at_a_time(student)
            width = self.serial_width if self.serial_width is not None else _instances(student) if serial else 1
            most = max((demo_count(c.program) for c in unique), default=0)
            own = own_demo_rule(len(val), most) if same_sets and self.leave_one_out else ""
            self._say(
                f"evaluating {len(unique)} candidates on {selection_words(len(val), own)}"
                + (f" ({len(candidates) - len(unique)} duplicates skipped)" if len(unique) < len(candidates) else "")
            )
            batch = _batch(student) if serial and width > 1 else 1
            await self._race(unique, val, serial, own=own, width=width, batch=batch)
            for cand in candidates:
                if cand.duplicate_of is not None:
                    twin = next(c for c in candidates if c.name == cand.duplicate_of)
                    cand.result, cand.dropped_at = twin.result, twin.dropped_at
                assert cand.result is not None
                cand.result.program = cand.name
                if events.has_listeners():
                    events.emit(events.OptimizerEvent("candidate", cand.to_dict()))
            finalists = [c for c in unique if c.dropped_at is None]
            best = finalists[0]
            for cand in finalists[1:]:
                if cand.score > best.score:
                    best = cand
            if self.calibrate:
                best = await self._choose_calibrated(best, candidates, trainset, val, own)
            assert best.result is not None
            check_error_budget(best.result.records, self.max_error_rate)  # the chosen one's own share
            train_result = None
            if self.evaluate_train:
                if same_sets:
                    train_result = best.result  # the validation set is the trainset: already known
                else:
                    self._say(f"scoring the chosen program ({best.name}) on the trainset")
                    recs = await evaluate_records(
                        best.program, enumerate(trainset), self.metric, concurrency=self.concurrency
                    )
                    train_result = EvaluationResult.from_records(recs, metric=metric_name(self.metric))
        assert best.result is not None
        return CompileResult(
            program=best.program,
            best=best,
            candidates=candidates,
            validation=best.result,
            train=train_result,
            usage=usage,
            elapsed_s=time.perf_counter() - started,
            metric=metric_name(self.metric),
            demo_review=review_program(best.program, trainset),
            own_demos=own,
        )

    async def _choose_calibrated(
        self, best: Candidate, candidates: list[Candidate], trainset: list[Example], val: list[Example], own: str = ""
    ) -> Candidate:
        """The best of ``best`` and calibrated finalists (``pytest_dspex.programs.calibration``); a tie goes to calibration.

        With a validation set up to ``CALIBRATE_FINALISTS`` candidates are calibrated and scored on it:
        ``best``, the other finalists, then those racing dropped last (seen on at least half the set),
        each within ``CALIBRATE_MARGIN`` of the best score (each costs a pass over the set).
        The best uncalibrated candidate is not always the best calibrated one: on an airline-intent
        task one run's leader went from 0.825 to 0.917 calibrated, another candidate from 0.833 to
        0.958. Without a validation set only ``best`` is: the trainset scores of calibrated candidates
        cannot tell them apart.
        """
        if val is trainset:
            pool = [best]
        else:  # the finalists, then those racing dropped last (seen on at least half the set), best first
            seen = [c for c in candidates if c.result is not None and c.demos and c.duplicate_of is None
                    and c.result.n * 2 >= len(val) and c.score >= best.score - CALIBRATE_MARGIN
                    and not c.name.endswith("+calibrated")]  # fmt: skip
            ranked = sorted(seen, key=lambda c: (c.dropped_at is not None, -(c.result.n if c.result else 0), -c.score))
            pool = [best, *[c for c in ranked if c is not best]][:CALIBRATE_FINALISTS]
        chosen = best
        for cand in pool:
            calibrated = await self._calibrated(cand, candidates, trainset, val, own)
            if calibrated is None:
                if cand is best:
                    break  # the program cannot be calibrated (or the endpoint sends no logprobs)
                continue
            if calibrated.score > chosen.score or (calibrated.score == chosen.score and "+calibrated" not in chosen.name):
                chosen = calibrated
        if chosen is best and any(c.name.endswith("+calibrated") for c in candidates):
            self._say(f"calibration kept out: no calibrated candidate scored {best.score:.3f} or more")
        return chosen

    async def _calibrated(
        self, cand: Candidate, candidates: list[Candidate], trainset: list[Example], val: list[Example], own: str = ""
    ) -> Candidate | None:
        """``cand`` calibrated and scored on ``val`` (added to ``candidates``), or None if it cannot be calibrated."""
        from ..programs.calibration import calibrate, calibration_field

        program = cand.program.deepcopy()
        named = program.named_predictors()
        found = calibration_field(named[0][1]) if named else None
        if found is None:
            return None
        targets = {named[0][0]: [ex.get(found[0].name) for ex in trainset if ex.get(found[0].name) is not None]}
        self._say(f"calibrating {cand.name} on {len(val)} inputs")
        try:
            report = await calibrate(
                program, [dict(ex.inputs().items()) for ex in val], targets, concurrency=self.concurrency,
                leave_out_own=val is trainset, timeout=current_example_timeout(),
            )  # fmt: skip
        except DspexError as exc:  # the compile keeps what it found: calibration is an extra
            self._say(f"not calibrated: {exc}")
            return None
        if not report.calibrated:
            self._say(f"not calibrated: {'; '.join(report.skipped.values())}")
            return None
        # scored as the candidates were (``_race``): under the same ``own_demo_rule`` on the trainset
        if val is trainset and own:
            recs = await evaluate_own_rule(own)(program, list(enumerate(val)), self.metric, concurrency=self.concurrency)
        else:
            recs = await evaluate_records(program, enumerate(val), self.metric, concurrency=self.concurrency)
        result = EvaluationResult.from_records(recs, metric=metric_name(self.metric))
        calibrated = Candidate(f"{cand.name}+calibrated", program, cand.demos, cand.bootstrapped, result)
        result.program = calibrated.name
        candidates.append(calibrated)
        if events.has_listeners():
            events.emit(events.OptimizerEvent("candidate", calibrated.to_dict()))
        return calibrated

    async def _build(self, student: Module, trainset: list[Example]) -> list[Candidate]:
        specs: list[tuple[str, Any]] = [
            ("zero-shot", None),
            ("labeled", None),
            ("bootstrap", (trainset, self.max_bootstrapped_demos)),
        ]
        for k in range(self.num_candidates):
            rng = random.Random(self.seed + k)
            shuffled = list(trainset)
            rng.shuffle(shuffled)
            size = rng.randint(1, max(1, self.max_bootstrapped_demos))
            specs.append((f"shuffled-{k}", (shuffled, size)))

        # one teacher for every candidate: a training example then gets the same teacher prompt
        # in each candidate, so the cache (and in-flight sharing) answers it once
        labeled = LabeledFewShot(self.max_labeled_demos, cover_labels=self.cover_labels)
        teacher = labeled.compile(student, trainset)
        shared_runs: dict[str, Any] = {}

        ready = [0]

        def tell(_resolved: int = 0, _passed: int = 0) -> None:
            runs = sum(1 for entry in shared_runs.values() if entry.task.done())
            self._say(f"bootstrapping: {ready[0]}/{len(specs)} candidates ready, {runs} of {len(trainset)} training examples run")

        async def build(name: str, spec: Any) -> Candidate:
            if name == "zero-shot":
                cand = Candidate(name, student.reset_copy(), 0, 0)
            elif name == "labeled":
                prog = labeled.compile(student, trainset)
                cand = Candidate(name, prog, demo_count(prog), 0)
            else:
                data, size = spec
                boot = self._bootstrapper(size)
                boot.shared_runs = shared_runs
                boot.on_outcome = tell
                prog = await boot.acompile(student, trainset=data, teacher=teacher)
                cand = Candidate(name, prog, demo_count(prog), boot.report.passed)
            ready[0] += 1
            tell()
            return cand

        self._say(f"bootstrapping {len(specs)} candidates on {len(trainset)} training examples")
        return list(await asyncio.gather(*(build(n, s) for n, s in specs)))

    async def _race(
        self, candidates: list[Candidate], valset: list[Example], serial: bool, *, own: str = "",
        width: int = 1,
        batch: int = 1,
    ) -> None:
        """Score ``candidates`` on ``valset``, dropping the clearly worse on the way (see module doc).

        ``own`` (the valset is the trainset): the ``own_demo_rule`` that keeps an example's answer from
        being its own demo's ("" when the valset is another set).
        """
        order = list(range(len(valset)))
        random.Random(self.seed).shuffle(order)
        stops = _stages(len(order), self.race_first) if self.racing and len(candidates) > 1 else [len(order)]
        records: dict[str, list[ExampleRecord]] = {c.name: [] for c in candidates}
        skipped = {c.name: own_examples(c.program, valset, own) for c in candidates}  # its demos' examples
        asked = {c.name: len(valset) - len(skipped[c.name]) for c in candidates}  # on the whole set
        alive = list(candidates)
        started = time.perf_counter()
        running: dict[str, int] = {}  # examples of the current step done, per candidate
        done = 0  # examples of the validation order every live candidate has been scored on

        def planned() -> int:
            """Candidate-examples to evaluate in all: those done, then the steps left, each with the
            share of candidates successive halving keeps (racing may drop more)."""
            total = sum(len(r) for r in records.values())
            n, start = len(alive), done
            for later in stops:
                if later <= start:
                    continue
                total += n * (later - start)
                start = later
                if self.race_keep < 1:
                    n = max(1, math.ceil(n * self.race_keep))
            return total

        def tell(cand: Candidate, done_now: int, step: int, score: float) -> None:
            running[cand.name] = done_now
            seen = len(records[cand.name]) + done_now
            units = sum(len(r) for r in records.values()) + sum(running.values())
            left = ""
            elapsed = time.perf_counter() - started
            if units and elapsed >= 1:
                left = f", ~{elapsed / units * max(0, planned() - units):.0f} s left"
            of = step - sum(1 for i in order[:step] if i in skipped[cand.name])  # its demos' are not asked
            self._say(f"evaluating {cand.name}: {seen}/{of} examples, score {score:.3f}{left}")

        spans = {c.name: tracing.start_span("dspex.candidate", {"dspex.candidate": c.name, "dspex.demos": c.demos}) for c in candidates}
        for stop in stops:
            chunk = [(i, valset[i]) for i in order[done:stop]]

            async def run(
                cand: Candidate, chunk: list[tuple[int, Example]] = chunk, stop: int = stop, concurrency: int = self.concurrency,
                lend_workers: Callable[[Callable[[int], None]], None] | None = None,
            ) -> None:
                before = records[cand.name]
                total_before = sum(r.score for r in before)

                def progress(done: int, _total: int, score: float, _errors: int) -> None:
                    tell(cand, done, stop, (total_before + score * done) / (len(before) + done))

                with tracing.use_span(spans[cand.name]):  # compile -> candidate -> evaluate
                    evaluate = evaluate_own_rule(own) if own else evaluate_records
                    got = await evaluate(
                        cand.program, chunk, self.metric, concurrency=concurrency,
                        progress=progress if self.progress is not None else None, lend_workers=lend_workers,
                    )  # fmt: skip
                running.pop(cand.name, None)
                records[cand.name].extend(got)

            if serial and (width <= 1 or len(alive) == 1):
                for cand in alive:  # alone: as many at once as the search allows
                    await run(cand)
                    self._check_errors(alive, records, asked)
            elif serial:
                await self._lanes(alive, run, lanes=min(width, len(alive)), each=max(1, min(self.concurrency, width * batch) // width),
                                  check=lambda: self._check_errors(alive, records, asked))  # fmt: skip
            else:
                await asyncio.gather(*(run(c) for c in alive))
            self._check_errors(alive, records, asked)
            done = stop
            if stop < len(order):
                alive = self._drop_worse(alive, records, done)
        for cand in candidates:
            cand.result = EvaluationResult.from_records(records[cand.name], metric=metric_name(self.metric))
            tracing.end_span(spans[cand.name], {"dspex.score": cand.result.score, "dspex.n": cand.result.n, "dspex.dropped_at": cand.dropped_at})

    @staticmethod
    async def _lanes(
        alive: list[Candidate], run: Callable[..., Any], *, lanes: int, each: int, check: Callable[[], None]
    ) -> None:
        """Score ``alive`` on one racing step, ``lanes`` candidates at a time (one per model instance),
        each with an instance's share of requests (``each``: one, or its engine's batch), so every
        instance keeps one candidate's prefix. A lane takes the next candidate as soon as its own is
        done (a candidate whose answers run long no longer holds an instance idle until it ends);
        when none is left, it lends its share to a candidate still running (its examples not yet
        begun), so the step's last candidate does not finish on one instance while the others idle.
        ``check`` (the error budget) after each candidate; its error stops the other lanes."""
        queue = list(alive)
        running: dict[str, Callable[[int], None]] = {}  # candidate → how to give its evaluation workers

        async def lane() -> None:
            while queue:
                cand = queue.pop(0)
                await run(cand, concurrency=each, lend_workers=lambda add, name=cand.name: running.__setitem__(name, add))
                running.pop(cand.name, None)
                check()
            for add in list(running.values())[:1]:  # the earliest still running: the one with most left
                add(each)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(lane())
        except BaseExceptionGroup as grouped:  # the first lane's error, as one candidate's would be
            raise grouped.exceptions[0] from None

    def _check_errors(self, alive: list[Candidate], records: dict[str, list[ExampleRecord]], asked: dict[str, int]) -> None:
        """Stop at the error budget as soon as the live candidates' answers so far put their whole selection
        over it (a racing step's own answers are too few to judge: one example the metric raises on is
        every candidate's 1 of a first step's 10)."""
        answers = [r for c in alive for r in records[c.name]]
        check_error_budget(answers, self.max_error_rate, out_of=sum(asked[c.name] for c in alive))

    def _drop_worse(self, alive: list[Candidate], records: dict[str, list[ExampleRecord]], seen: int) -> list[Candidate]:
        scores = {c.name: {r.index: r.score for r in records[c.name]} for c in alive}
        means = {name: sum(s.values()) / len(s) if s else 0.0 for name, s in scores.items()}
        leader = alive[0]
        for cand in alive[1:]:
            if means[cand.name] > means[leader.name]:
                leader = cand
        kept = []
        for cand in alive:
            if cand is not leader:
                lead, mine = scores[leader.name], scores[cand.name]
                shared = lead.keys() & mine.keys()
                worse = sum(1 for i in shared if mine[i] < lead[i])
                better = sum(1 for i in shared if mine[i] > lead[i])
                if sign_test_p(worse, better) < self.race_alpha:
                    cand.dropped_at = seen
                    self._say(f"dropped {cand.name} after {seen} examples ({means[cand.name]:.2f} vs {means[leader.name]:.2f})")
                    continue
            kept.append(cand)
        # successive halving: at most this share of the candidates goes on to the next step
        room = max(1, math.ceil(len(alive) * self.race_keep)) if self.race_keep < 1 else len(kept)
        if len(kept) > room:
            ranked = sorted(kept, key=lambda c: -means[c.name])  # stable: earlier candidates win ties
            for cand in ranked[room:]:
                cand.dropped_at = seen
                self._say(f"dropped {cand.name} after {seen} examples ({means[cand.name]:.2f}, not in the best {room})")
            kept = [c for c in kept if c.dropped_at is None]
        return kept


def _span_result(span: Any, result: CompileResult) -> None:
    if span is not None:
        span.set_attributes({"dspex.chosen": result.best.name, "dspex.score": result.validation.score, "dspex.n": result.validation.n})


def _valset(trainset: Sequence[Example], valset: Sequence[Example] | None) -> list[Example] | None:
    return None if valset is None or valset is trainset else as_example_list(valset, "valset")


def _stages(n: int, first: int) -> list[int]:
    """Cumulative subset sizes: ``first``, twice that, ... up to ``n``."""
    stops, size = [], first
    while size < n:
        stops.append(size)
        size *= 2
    stops.append(n)
    return stops


def _fingerprint(program: Module) -> str:
    return json.dumps(program.dump_state(), sort_keys=True, default=str)


def _dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates to evaluate; later ones with an earlier one's demos point at it."""
    first: dict[str, Candidate] = {}
    unique = []
    for cand in candidates:
        fp = _fingerprint(cand.program)
        if fp in first:
            cand.duplicate_of = first[fp].name
        else:
            first[fp] = cand
            unique.append(cand)
    return unique


def _instances(program: Module) -> int:
    """How many candidates the serial schedule runs at once: the embedded server's model instances."""
    from ..lm.local.embedded import parallel_instances

    return max(1, parallel_instances()) if _one_at_a_time(program) else 1


def _batch(program: Module) -> int:
    """How many requests each of the embedded server's instances decodes together (its batch engine)."""
    from ..lm.local.embedded import requests_per_instance

    return max(1, requests_per_instance()) if _one_at_a_time(program) else 1


def _one_at_a_time(program: Module) -> bool:
    """Whether the program's LM is a server that decodes one request at a time (the embedded one)."""
    lms = [p.lm for p in program.predictors() if p.lm is not None] or [settings.current_lm()]
    return any(str(getattr(lm, "cache_identity", "")).startswith("embedded:") for lm in lms if lm is not None)

