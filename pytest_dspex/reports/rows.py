"""The report row of one program, built in one place for the plugin and for shard ``combine``.

    row = program_row(result, verdict, mode="dataset", dataset="data/dev.jsonl", test=nodeid,
                      threshold=0.8, tolerance=0.05, max_error_rate=0.05, golden=None)

Everything that depends on the examples is computed from the ``EvaluationResult`` (so merged
shard records give the row an unsharded run would); the shape is the team contract's
``programs[]`` entry of the JSON report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..evaluation.gates import Verdict
    from ..evaluation.result import EvaluationResult

__all__ = ["program_row"]


def program_row(
    result: EvaluationResult,
    verdict: Verdict,
    *,
    mode: str,
    dataset: str | None,
    test: str,
    threshold: float | None,
    tolerance: float,
    max_error_rate: float,
    golden: str | None,
    note: str = "",
    comparison: Mapping[str, Any] | None = None,
    flaky: Sequence[str] | None = None,
    prompts: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    provenance: Mapping[str, Any] | None = None,
    instructions_diff: str = "",
) -> dict[str, Any]:
    """One program's row: the terminal summary, the JSON report (team contract), HTML/markdown, combine.

    ``comparison`` defaults to the verdict's paired comparison (``verdict.comparison``), ``flaky`` to
    the examples whose repeats disagree (``comparison.flaky_keys`` of the records), ``alpha`` to the
    comparison's. ``provenance`` (``GoldenFile.provenance``) says how the golden's program was chosen and
    its baseline measured; ``instructions_diff`` is set when the program's instructions differ from the
    golden's (gated against its baseline).
    """
    from ..evaluation.comparison import flaky_keys

    lo, hi = result.ci95
    if comparison is None and verdict.comparison is not None:
        comparison = verdict.comparison.to_json()
    if flaky is None:
        flaky = flaky_keys(result.records)
    if alpha is None and comparison is not None and comparison.get("alpha") is not None:
        alpha = float(comparison["alpha"])
    repeats = max((len(r.repeats) for r in result.records if r.repeats), default=1)
    usage = result.usage.to_dict()
    return {
        "program": result.program,
        "mode": mode,
        "dataset": dataset,
        "test": test,
        "metric": result.metric,
        "threshold": threshold,
        "tolerance": tolerance,
        "alpha": alpha,
        "repeats": repeats,
        # how an example's repeats make its score: mean, all (pass^k), any (pass@k)
        "repeat_reduction": next((r.reduction for r in result.records if r.reduction), "mean"),
        "max_error_rate": max_error_rate,
        "score": result.score,
        "n": result.n,
        "ci95": [lo, hi],
        "errors": len(result.errors),
        "errors_by_kind": result.errors_by_kind,
        "infra_errors": result.infra_errors,
        "usage": usage,
        # every answer came from the response cache: the endpoint was not asked (said in the summary)
        "cache_only": bool(usage["calls"]) and usage["cache_hits"] >= usage["calls"],
        "latency_s": result.latency_percentiles(),
        "golden": golden,
        "golden_score": verdict.golden_score,
        "golden_provenance": dict(provenance) if provenance is not None else None,
        "instructions_diff": instructions_diff,
        "verdict": {"passed": verdict.passed, "reason": verdict.reason, "kind": verdict.kind},
        "comparison": dict(comparison) if comparison is not None else None,
        "flaky": list(flaky),
        "prompts": dict(prompts or {}),
        "note": note,
        "records": [r.to_json() for r in result.records],
    }
