"""Scoring a candidate on the selection set, as every optimizer does it.

* ``WithoutOwnDemo(program)``: when the selection set is the trainset, an example is answered without
  the demos that are that example (a small model copies a demo's answer, which would make the
  candidate with the most labeled demos look best).
* ``evaluate_without_own_demo(program, items, metric, ...)``: ``evaluate_records`` of ``WithoutOwnDemo``,
  asked in ``prefix_order`` (the examples keeping every demo first, then those missing one by where
  their demo stood, last first): a server that reuses the previous prompt's prefix (llama.cpp)
  re-reads each prompt only from the demo it lost. Records come back in ``items``' order.
* ``check_error_budget(records, max_error_rate, out_of=)``: the compile stops (``CompileStoppedError``) when
  the selection answers were lost to the infrastructure beyond the budget, naming the kinds and the
  first errors, rather than choosing among candidates scored on errors.
* ``check_metric(records, max_error_rate)``: the compile stops when the metric raised on more of the
  answers than the budget allows (every one of them without a budget): a bug in the test's metric,
  not a score to choose a candidate or write a golden by.
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

__all__ = [
    "WithoutOwnDemo",
    "check_budget",
    "check_error_budget",
    "check_metric",
    "demo_count",
    "evaluate_without_own_demo",
    "own_examples",
    "prefix_order",
    "score_candidate",
    "selection_words",
]


def _is_own(demo: dict[str, Any], inputs: dict[str, Any]) -> bool:
    return all(k in demo and demo[k] == v for k, v in inputs.items())


class WithoutOwnDemo(Module):
    """Runs ``program`` on an example with the demos that are that example removed."""

    def __init__(self, program: Module) -> None:
        self._program = program

    async def aforward(self, **inputs: Any) -> Any:
        def own(demo: dict[str, Any]) -> bool:
            return _is_own(demo, inputs)

        program = self._program
        if any(own(d) for p in program.predictors() for d in p.demos):
            program = program.deepcopy()
            for p in program.predictors():
                p.demos = [d for d in p.demos if not own(d)]
        return await program.acall(**inputs)


def prefix_order(program: Module, items: Sequence[tuple[int, Example]]) -> list[tuple[int, Example]]:
    """``items`` in the order that keeps ``WithoutOwnDemo(program)``'s prompts sharing the longest prefixes.

    An example whose own demo is among ``program``'s demos is asked with a prompt that differs from
    the full one from that demo on. Asked in a seeded order, those examples alternate with the
    others and the server re-reads the demos after each left-out one twice (there and back). Here
    the examples keeping every demo come first, then the others by the position of the demo they
    lose, last first (ties keep ``items``' order): each prompt differs from the one before only from
    the lost demo on. The answers do not change, only when they are asked.
    """

    def key(item: tuple[int, Example]) -> tuple[int, ...]:
        inputs = dict(item[1].inputs().items())
        where: list[int] = []
        for n, predictor in enumerate(program.predictors()):
            for pos, demo in enumerate(predictor.demos):
                if _is_own(demo, inputs):
                    where += [n, -pos]
                    break
        return (1, *where) if where else (0,)

    return sorted(items, key=key)


async def evaluate_skipping_own_demos(
    program: Module, items: Sequence[tuple[int, Example]], metric: Callable[..., Any], **kwargs: Any
) -> list[ExampleRecord]:
    """``evaluate_records`` of ``program`` on the ``items`` that are none of its demos."""
    demos = [d for p in program.predictors() for d in p.demos]
    kept = [it for it in items if not any(_is_own(d, dict(it[1].inputs().items())) for d in demos)]
    return await evaluate_records(program, kept, metric, **kwargs)


#: the fewest training examples a candidate must be scored on, none of them its demos, for its own
#: demos' examples to be skipped rather than asked without their demo (``own_demo_rule``)
SKIP_OWN_MIN = 24


def own_demo_rule(examples: int, most_demos: int) -> str:
    """How a compile choosing on the trainset keeps a candidate from copying its own demo's answer:
    ``"skipped"`` (a training example that is one of the candidate's demos is not asked; the candidate
    is scored on the others, every demo in every prompt) when at least ``SKIP_OWN_MIN`` examples are
    none of the most demos any candidate has, else ``"left out"`` (each example asked without its own
    demo: leave-one-out, whose prompts re-read every demo after the one left out).

    Measured on the example project (bench/RESULTS-issue18.md): skipping gave triage 0.920 on 25 unseen
    messages against leave-one-out's 0.880, find_product 0.975 both, at half the prompt work (its
    compile 118 s against 139-143 s). ``DSPEX_SELECTION_SKIP_OWN=0`` keeps leave-one-out everywhere
    (for comparisons)."""
    import os

    if os.environ.get("DSPEX_SELECTION_SKIP_OWN", "") == "0":
        return "left out"
    return "skipped" if examples - most_demos >= SKIP_OWN_MIN else "left out"


def evaluate_own_rule(rule: str) -> Callable[..., Any]:
    """The evaluation of a candidate on the trainset under ``rule`` (``own_demo_rule``)."""
    return evaluate_skipping_own_demos if rule == "skipped" else evaluate_without_own_demo


async def evaluate_without_own_demo(
    program: Module, items: Sequence[tuple[int, Example]], metric: Callable[..., Any], **kwargs: Any
) -> list[ExampleRecord]:
    """``evaluate_records`` of ``WithoutOwnDemo(program)`` on ``items``, asked in ``prefix_order``;
    the records come back in ``items``' order."""
    items = list(items)
    asked = prefix_order(program, items)
    records = await evaluate_records(WithoutOwnDemo(program), asked, metric, **kwargs)
    where = {index: k for k, (index, _) in enumerate(items)}
    return sorted(records, key=lambda r: where[r.index])


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


def check_metric(
    records: Sequence[ExampleRecord], max_error_rate: float | None, what: str = "validation answers", *, out_of: int | None = None
) -> None:
    """Stop the compile when the metric raised on more of ``records`` than ``max_error_rate`` allows (on all
    of them when None): its exceptions are a bug in the test code, and a golden of them would be worthless."""
    raised = sum(1 for r in records if r.error_kind == "metric")
    allowed = len(records) - 1 if max_error_rate is None else max_error_rate * (out_of or len(records)) + 1e-9
    if not raised or raised <= allowed:
        return
    from ..evaluation.gates import metric_errors_reason

    raise CompileStoppedError(metric_stop_reason(metric_errors_reason(records, len(records), what) or ""))


def metric_stop_reason(reason: str) -> str:
    """The sentence of a compile stopped by its metric's exceptions."""
    return (
        f"compile stopped: {reason} — a bug in the test's metric, not a score; golden not written "
        "(an existing one is kept). Fix the metric and re-run"
    )


def check_error_budget(records: Sequence[ExampleRecord], max_error_rate: float | None, *, out_of: int | None = None) -> None:
    """Stop the compile when ``records`` lost more answers to the infrastructure than the budget allows,
    or the metric raised on more of them than it allows (``check_metric``).

    ``out_of``: the answers ``records`` are part of (a candidate search's racing step: all its live
    candidates will give on the whole selection set). The budget is then that many answers' share, so
    the search stops as soon as the whole selection is over it, and an example the metric or the LM
    fails on is 1 of them, not 1 of a first step's 10."""
    check_budget(records)
    check_metric(records, max_error_rate, out_of=out_of)
    check_lm_errors(records, max_error_rate, out_of=out_of)


def check_lm_errors(
    records: Sequence[ExampleRecord], max_error_rate: float | None, *, out_of: int | None = None,
    what: str = "validation answers", stage: str = "compile", after: str = "",
) -> None:  # fmt: skip
    """Stop the ``stage`` when ``records`` lost more answers to the infrastructure than the budget
    allows: the LM errors by kind and the first of them (an unreachable endpoint, a 404), not only
    that a golden of errors is not written (trial8 T8-6: a plain function's baseline said no more)."""
    if max_error_rate is None or not records:
        return
    from ..evaluation.gates import lm_errors_reason

    lost = [r for r in records if r.error_kind in INFRA_ERROR_KINDS]
    if len(lost) <= max_error_rate * (out_of or len(records)) + 1e-9:
        return
    by_kind: dict[str, int] = {}
    for r in lost:
        by_kind[r.error_kind or ""] = by_kind.get(r.error_kind or "", 0) + 1
    reason = lm_errors_reason(by_kind, len(records), lost) or ""
    first: list[str] = []
    for r in lost:
        text = " ".join((r.error or "").split(": ", 1)[-1].split())[:300]  # one line: a server's error page has several
        if text and text not in first:
            first.append(text)
        if len(first) == 2:
            break
    raise CompileStoppedError(
        f"{stage} stopped at its error budget: {reason.replace('examples', what)} — over "
        f"{max_error_rate:.0%} (--dspex-max-error-rate); " + "; ".join(first) + after
    )


def own_examples(program: Module, examples: Sequence[Example], rule: str = "") -> set[int]:
    """The indices of ``examples`` that scoring ``program`` does not ask under the ``own_demo_rule``
    ``rule``: those that are one of its demos when they are ``skipped``, else none."""
    if rule != "skipped":
        return set()
    demos = [d for p in program.predictors() for d in p.demos]
    return {i for i, ex in enumerate(examples) if any(_is_own(d, dict(ex.inputs().items())) for d in demos)}


def selection_words(examples: int, rule: str) -> str:
    """The progress lines' words for the set a compile chooses on: ``rule`` is the ``own_demo_rule`` on
    the trainset ("" for another set)."""
    if rule == "skipped":
        return f"the {examples} training examples, each candidate on those that are none of its demos"
    if rule:
        return f"the {examples} training examples, each without its own demo"
    return f"{examples} validation examples"


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
    own: str = "",
    max_error_rate: float | None = None,
) -> Candidate:
    """``program`` scored on the selection set ``valset`` as the candidate ``name``; ``own``: the
    ``own_demo_rule`` when ``valset`` is the trainset ("" when it is not)."""
    if own:
        records = await evaluate_own_rule(own)(program, list(enumerate(valset)), metric, concurrency=concurrency)
    else:
        records = await evaluate_records(program, enumerate(valset), metric, concurrency=concurrency)
    check_error_budget(records, max_error_rate)
    result = EvaluationResult.from_records(records, program=name, metric=metric_name(metric))
    candidate = Candidate(name, program, demo_count(program), bootstrapped, result)
    if events.has_listeners():
        events.emit(events.OptimizerEvent("candidate", candidate.to_dict()))
    return candidate
