"""Scoring a candidate on the selection set, as every optimizer does it.

* ``WithoutOwnDemo(program)``: when the selection set is the trainset, an example is answered without
  the demos that are that example (a small model copies a demo's answer, which would make the
  candidate with the most labeled demos look best).
* ``check_error_budget(records, max_error_rate)``: the compile stops (``CompileStoppedError``) when
  the selection answers were lost to the infrastructure beyond the budget, naming the kinds and the
  first errors, rather than choosing among candidates scored on errors.
* ``check_budget(records)``: the compile stops when the run's LM budget (``--dspex-max-calls`` /
  ``--dspex-max-cost``) refused any of the answers: said as the budget spent, not an endpoint fault.
* ``score_candidate(...)``: one candidate on the whole selection set, both of the above applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CompileStoppedError
from ..evaluation.metrics import metric_name
from ..evaluation.records import INFRA_ERROR_KINDS, ExampleRecord
from ..evaluation.result import EvaluationResult
from ..evaluation.scoring import evaluate_records
from ..observe import events
from ..programs.modules import Module
from ..programs.primitives import Example
from .protocol import Candidate

__all__ = ["WithoutOwnDemo", "check_budget", "check_error_budget", "demo_count", "score_candidate"]


class WithoutOwnDemo(Module):
    """Runs ``program`` on an example with the demos that are that example removed."""

    def __init__(self, program: Module) -> None:
        self._program = program

    async def aforward(self, **inputs: Any) -> Any:
        def own(demo: dict[str, Any]) -> bool:
            return all(k in demo and demo[k] == v for k, v in inputs.items())

        program = self._program
        if any(own(d) for p in program.predictors() for d in p.demos):
            program = program.deepcopy()
            for p in program.predictors():
                p.demos = [d for d in p.demos if not own(d)]
        return await program.acall(**inputs)


def check_budget(records: Sequence[ExampleRecord], what: str = "validation answers") -> None:
    """Stop the compile when the run's LM budget refused any of ``records``' calls: a choice or a baseline
    made on part of the examples is not one (and the endpoint is not at fault)."""
    refused = [r for r in records if r.error_kind == "budget"]
    if not refused:
        return
    spent = (refused[0].error or "LM budget spent").split(": ", 1)[-1]  # "LM call budget spent (150 of 150 calls); ..."
    option = "--dspex-max-cost" if "cost" in spent else "--dspex-max-calls"
    raise CompileStoppedError(
        f"stopped by the run's LM budget: {spent.split(';')[0]} — {len(refused)} of {len(records)} {what} were not asked; "
        f"golden not written (an existing one is kept). Raise {option} (or leave it unset) and re-run"
    )


def check_error_budget(records: Sequence[ExampleRecord], max_error_rate: float | None) -> None:
    """Stop the compile when ``records`` lost more answers to the infrastructure than the budget allows."""
    check_budget(records)
    if max_error_rate is None or not records:
        return
    from ..evaluation.gates import lm_errors_reason

    lost = [r for r in records if r.error_kind in INFRA_ERROR_KINDS]
    if len(lost) <= max_error_rate * len(records) + 1e-9:
        return
    by_kind: dict[str, int] = {}
    for r in lost:
        by_kind[r.error_kind or ""] = by_kind.get(r.error_kind or "", 0) + 1
    reason = lm_errors_reason(by_kind, len(records)) or ""
    first: list[str] = []
    for r in lost:
        text = (r.error or "").split(": ", 1)[-1][:300]
        if text and text not in first:
            first.append(text)
        if len(first) == 2:
            break
    raise CompileStoppedError(
        f"compile stopped at its error budget: {reason.replace('examples', 'validation answers')} — over "
        f"{max_error_rate:.0%} (--dspex-max-error-rate); " + "; ".join(first)
    )


def demo_count(program: Module) -> int:
    return sum(len(p.demos) for p in program.predictors())


async def score_candidate(
    name: str,
    program: Module,
    valset: Sequence[Example],
    metric: Callable[..., Any],
    *,
    bootstrapped: int = 0,
    concurrency: int = 16,
    leave_one_out: bool = False,
    max_error_rate: float | None = None,
) -> Candidate:
    """``program`` scored on the whole selection set ``valset`` as the candidate ``name``."""
    scored = WithoutOwnDemo(program) if leave_one_out else program
    records = await evaluate_records(scored, enumerate(valset), metric, concurrency=concurrency)
    check_error_budget(records, max_error_rate)
    result = EvaluationResult.from_records(records, program=name, metric=metric_name(metric))
    candidate = Candidate(name, program, demo_count(program), bootstrapped, result)
    if events.has_listeners():
        events.emit(events.OptimizerEvent("candidate", candidate.to_dict()))
    return candidate
