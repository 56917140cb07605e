"""Optimizers that build one program: ``bootstrap`` (BootstrapFewShot) and ``labeled`` (LabeledFewShot).

    pytest --dspex-compile --dspex-optimizer=labeled     # k demos from the trainset, no teacher calls
    pytest --dspex-compile --dspex-optimizer=bootstrap   # demos from the teacher's passing runs, DSPy's walk

The one program is then scored on the selection set like a candidate of the search (the golden's
selection score and records; the error budget; each example without its own demo when choosing on
the trainset). No candidates, no racing, no calibration: that is the default ``random-search``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._support import runtime as _runtime
from ..evaluation.evaluate import Evaluate
from ..evaluation.metrics import metric_name
from ..lm.usage import track_usage
from ..programs.modules import Module
from ..programs.primitives import Example
from .bootstrap import BootstrapFewShot, LabeledFewShot
from .protocol import CompileResult, OptimizerSettings
from .review import review_program
from .selection import demo_count, own_demo_rule, score_candidate, selection_words

__all__ = ["Bootstrap", "Labeled"]


@dataclass
class _OneProgram:
    """Build one program from the trainset, then score it on the selection set."""

    metric: Callable[..., Any]
    settings: OptimizerSettings
    progress: Callable[[str], None] | None = None
    leave_one_out: bool = False
    name: ClassVar[str] = ""

    @classmethod
    def from_settings(cls, metric: Callable[..., Any], settings: OptimizerSettings, **how: Any) -> _OneProgram:
        return cls(metric, settings, **how)

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    async def _build(self, student: Module, trainset: list[Example]) -> tuple[Module, int]:
        """The program and how many of its demos were bootstrapped."""
        raise NotImplementedError

    def compile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult:
        # the trainset given as the valset is choosing on the trainset: asked before the copy below
        return _runtime.run_sync(self._compile(student, list(trainset), None if valset is trainset else valset))

    async def _compile(self, student: Module, trainset: list[Example], valset: Sequence[Example] | None) -> CompileResult:
        started = time.perf_counter()
        on_train = valset is None or valset is trainset
        val = trainset if valset is None else list(valset)
        Evaluate(val, self.metric)  # checks every example has input keys, before any call
        s = self.settings
        with track_usage() as usage:
            program, bootstrapped = await self._build(student, trainset)
            own = own_demo_rule(len(val), demo_count(program)) if on_train and self.leave_one_out else ""
            self._say(f"evaluating {self.name} on {selection_words(len(val), own)}")
            best = await score_candidate(
                self.name, program, val, self.metric, bootstrapped=bootstrapped, concurrency=s.concurrency,
                own=own, max_error_rate=s.max_error_rate,
            )  # fmt: skip
        assert best.result is not None
        return CompileResult(
            program=program,
            best=best,
            candidates=[best],
            validation=best.result,
            train=None,
            usage=usage,
            elapsed_s=time.perf_counter() - started,
            metric=metric_name(self.metric),
            demo_review=review_program(program, trainset),
            own_demos=own,
        )


class Labeled(_OneProgram):
    """``labeled_demos`` demos per predictor drawn from the trainset (``LabeledFewShot``)."""

    name = "labeled"

    def describe(self) -> dict[str, Any]:
        return {"name": "LabeledFewShot", "k": self.settings.labeled_demos, "seed": self.settings.seed}

    async def _build(self, student: Module, trainset: list[Example]) -> tuple[Module, int]:
        return LabeledFewShot(self.settings.labeled_demos, seed=self.settings.seed).compile(student, trainset), 0


class Bootstrap(_OneProgram):
    """Demos from the teacher's passing runs over the trainset in order, filled with labeled ones (``BootstrapFewShot``)."""

    name = "bootstrap"

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": "BootstrapFewShot",
            "max_bootstrapped_demos": s.demos,
            "max_labeled_demos": s.labeled_demos,
            "max_rounds": s.rounds,
            "metric_threshold": 1.0 if s.metric_threshold is None else s.metric_threshold,
        }

    async def _build(self, student: Module, trainset: list[Example]) -> tuple[Module, int]:
        s = self.settings
        boot = BootstrapFewShot(
            self.metric, metric_threshold=s.metric_threshold, max_bootstrapped_demos=s.demos,
            max_labeled_demos=s.labeled_demos, max_rounds=s.rounds, teacher_lm=s.teacher_lm, concurrency=s.concurrency,
        )  # fmt: skip

        def tell(resolved: int, passed: int) -> None:
            self._say(f"bootstrapping: {resolved} of {len(trainset)} training examples run, {passed} passed")

        boot.on_outcome = tell
        self._say(f"bootstrapping on {len(trainset)} training examples")
        program = await boot.acompile(student, trainset=trainset)
        return program, boot.report.passed
