"""What an optimizer is to the compile flow: settings in, one ``CompileResult`` out.

    optimizer = make_optimizer(metric, OptimizerSettings(optimizer="labeled", labeled_demos=8))  # optimize.registry
    result = optimizer.compile(student, trainset=train, valset=dev)
    result.program, result.best.name, result.validation.score, result.usage.calls, optimizer.describe()

An optimizer class has ``from_settings(metric, settings, *, progress, leave_one_out)`` (the
``--dspex-*`` optimizer options as an ``OptimizerSettings``), ``compile(student, trainset=,
valset=)`` returning a ``CompileResult``, and ``describe()``: what the golden records as its
``optimizer`` (name and settings). ``valset`` None (or the trainset itself) means the candidates
are chosen on the trainset, none answered from its own demo when ``leave_one_out`` (the
``CompileResult``'s ``own_demos`` says how: ``selection.own_demo_rule``).

A ``CompileResult`` carries every candidate the optimizer scored on the selection set (one for an
optimizer that builds one program), the chosen one, its records on that set (the golden's
``scores.validation``), the LM usage spent, and the demo review of the chosen program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .default import DEFAULT_OPTIMIZER

if TYPE_CHECKING:  # annotations only
    from ..evaluation.result import EvaluationResult
    from ..lm.usage import Usage
    from ..programs.modules import Module
    from ..programs.primitives import Example

__all__ = ["DEFAULT_OPTIMIZER", "Candidate", "CompileResult", "Optimizer", "OptimizerClass", "OptimizerSettings"]

def _usage() -> Usage:
    from ..lm.usage import Usage

    return Usage()


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer options (``--dspex-optimizer``, ``--dspex-demos`` …); each optimizer reads those it has."""

    #: the registry name (``optimize.registry``): ``random-search`` (default), ``bootstrap``, ``labeled``
    optimizer: str = DEFAULT_OPTIMIZER
    demos: int = 4
    labeled_demos: int = 16
    rounds: int = 1
    candidates: int = 4
    seed: int = 0
    #: the metric value a teacher run needs for its trace to become demos (None: full credit, 1.0)
    metric_threshold: float | None = None
    #: calibrate a classifier's label bias out (``pytest_dspex.programs.calibration``) when it scores no worse
    calibrate: bool = True
    concurrency: int = 16
    teacher_lm: Any = None
    #: the share of selection answers the infrastructure may lose before the compile stops (None: no limit)
    max_error_rate: float | None = None


@dataclass
class Candidate:
    """One program an optimizer scored on the selection set."""

    name: str
    program: Module
    demos: int
    bootstrapped: int
    result: EvaluationResult | None = None
    dropped_at: int | None = None  # examples seen when racing dropped it
    duplicate_of: str | None = None  # same demos as this earlier candidate: not evaluated again

    @property
    def score(self) -> float:
        return self.result.score if self.result is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "demos": self.demos,
            "bootstrapped": self.bootstrapped,
            "score": self.score,
            "n": self.result.n if self.result else 0,
            "errors": len(self.result.errors) if self.result else 0,
        }
        if self.dropped_at is not None:
            out["dropped_at"] = self.dropped_at
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
        return out


@dataclass
class CompileResult:
    """What compiling produced: the chosen program, every candidate and what it cost."""

    program: Module
    best: Candidate
    candidates: list[Candidate]
    #: the chosen program's records on the selection set
    validation: EvaluationResult
    train: EvaluationResult | None
    usage: Usage = field(default_factory=_usage)
    elapsed_s: float = 0.0
    metric: str = ""
    #: per predictor of the chosen program: labeled and bootstrapped demo counts, the fields no
    #: training example holds, and flags a reviewer should see (``optimize.review``)
    demo_review: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: chosen on the trainset: how no answer was copied from its own demo (``selection.own_demo_rule``:
    #: "skipped" or "left out"); "" when chosen on another set
    own_demos: str = ""

    def table(self) -> str:
        rows = [f"{'candidate':<14} {'demos':>5} {'boot':>5} {'score':>7} {'n':>4}"]
        for c in self.candidates:
            mark = " *" if c is self.best else ""
            note = f" (dropped after {c.dropped_at})" if c.dropped_at is not None else ""
            note += f" (= {c.duplicate_of})" if c.duplicate_of else ""
            n = c.result.n if c.result else 0
            rows.append(f"{c.name:<14} {c.demos:>5} {c.bootstrapped:>5} {c.score:>7.3f} {n:>4}{mark}{note}")
        return "\n".join(rows)


class Optimizer(Protocol):
    """An optimizer the compile flow can run (see the module docstring)."""

    def compile(
        self, student: Module, *, trainset: Sequence[Example], valset: Sequence[Example] | None = None
    ) -> CompileResult: ...

    def describe(self) -> dict[str, Any]:
        """The golden's ``optimizer`` record: ``name`` and the settings it ran with (JSON)."""
        ...


class OptimizerClass(Protocol):
    """What a registry entry names: builds an optimizer from the options."""

    def from_settings(
        self,
        metric: Callable[..., Any],
        settings: OptimizerSettings,
        *,
        progress: Callable[[str], None] | None = None,
        leave_one_out: bool = False,
    ) -> Optimizer: ...
