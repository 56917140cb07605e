"""Candidate search over bootstrapped programs (DSPy's ``BootstrapFewShotWithRandomSearch``).

Candidates, in this order (the order breaks ties: the earliest of equal scores wins):

* ``zero-shot``      no demos
* ``labeled``        ``max_labeled_demos`` sampled labeled demos
* ``bootstrap``      BootstrapFewShot over the trainset in order
* ``shuffled-<k>``   for k in 0..num_candidates-1: the trainset shuffled with ``Random(seed + k)``
                     and a demo count drawn from 1..max_bootstrapped_demos

All candidates are built concurrently, then all are evaluated concurrently on the validation set
(the trainset when none is given). The result lists every candidate with its score.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _runtime, events
from ..evaluation import Evaluate, EvaluationResult
from ..lm.usage import Usage, track_usage
from ..metrics import metric_name
from ..primitives import Example
from ..programs import Module
from .bootstrap import BootstrapFewShot, LabeledFewShot

__all__ = ["BootstrapFewShotWithRandomSearch", "Candidate", "CompileResult"]


@dataclass
class Candidate:
    name: str
    program: Module
    demos: int
    bootstrapped: int
    result: EvaluationResult | None = None

    @property
    def score(self) -> float:
        return self.result.score if self.result is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "demos": self.demos,
            "bootstrapped": self.bootstrapped,
            "score": self.score,
            "n": self.result.n if self.result else 0,
            "errors": len(self.result.errors) if self.result else 0,
        }


@dataclass
class CompileResult:
    """What compiling produced: the chosen program, every candidate and what it cost."""

    program: Module
    best: Candidate
    candidates: list[Candidate]
    validation: EvaluationResult
    train: EvaluationResult | None
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0
    metric: str = ""

    def table(self) -> str:
        rows = [f"{'candidate':<14} {'demos':>5} {'boot':>5} {'score':>7}"]
        for c in self.candidates:
            mark = " *" if c is self.best else ""
            rows.append(f"{c.name:<14} {c.demos:>5} {c.bootstrapped:>5} {c.score:>7.3f}{mark}")
        return "\n".join(rows)


class BootstrapFewShotWithRandomSearch:
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
        evaluate_train: bool = True,
        progress: Callable[[str], None] | None = None,
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

    def compile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult:
        return _runtime.run_sync(self._compile(student, list(trainset), list(valset or trainset)))

    async def acompile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult:
        return await _runtime.run_async(self._compile(student, list(trainset), list(valset or trainset)))

    def _bootstrapper(self, max_boot: int) -> BootstrapFewShot:
        return BootstrapFewShot(
            self.metric,
            metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=max_boot,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            teacher_lm=self.teacher_lm,
            concurrency=self.concurrency,
        )

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    async def _compile(self, student: Module, trainset: list[Example], valset: list[Example]) -> CompileResult:
        started = time.perf_counter()
        with track_usage() as usage:
            specs: list[tuple[str, Any]] = [("zero-shot", None), ("labeled", None), ("bootstrap", (trainset, self.max_bootstrapped_demos))]
            for k in range(self.num_candidates):
                rng = random.Random(self.seed + k)
                shuffled = list(trainset)
                rng.shuffle(shuffled)
                size = rng.randint(1, max(1, self.max_bootstrapped_demos))
                specs.append((f"shuffled-{k}", (shuffled, size)))

            # one teacher for every candidate: a training example then gets the same teacher prompt
            # in each candidate, so the cache (and in-flight sharing) answers it once
            teacher = LabeledFewShot(self.max_labeled_demos).compile(student, trainset)

            async def build(name: str, spec: Any) -> Candidate:
                if name == "zero-shot":
                    prog = student.reset_copy()
                    return Candidate(name, prog, 0, 0)
                if name == "labeled":
                    prog = LabeledFewShot(self.max_labeled_demos).compile(student, trainset)
                    return Candidate(name, prog, _count(prog), 0)
                data, size = spec
                boot = self._bootstrapper(size)
                prog = await boot.acompile(student, trainset=data, teacher=teacher)
                return Candidate(name, prog, _count(prog), boot.report.passed)

            self._say(f"bootstrapping {len(specs)} candidates on {len(trainset)} training examples")
            candidates = list(await asyncio.gather(*(build(n, s) for n, s in specs)))
            self._say(f"evaluating {len(candidates)} candidates on {len(valset)} validation examples")
            evaluator = Evaluate(valset, self.metric, concurrency=self.concurrency)
            results = await asyncio.gather(*(evaluator._run(c.program) for c in candidates))
            for cand, res in zip(candidates, results, strict=True):
                cand.result = res
                res.program = cand.name
                if events.has_listeners():
                    events.emit(events.OptimizerEvent("candidate", cand.to_dict()))
            best = candidates[0]
            for cand in candidates[1:]:
                if cand.score > best.score:
                    best = cand
            train_result = None
            if self.evaluate_train:
                self._say(f"scoring the chosen program ({best.name}) on the trainset")
                train_result = await Evaluate(trainset, self.metric, concurrency=self.concurrency)._run(best.program)
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
        )


def _count(program: Module) -> int:
    return sum(len(p.demos) for p in program.predictors())
