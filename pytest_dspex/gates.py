"""Gates: one verdict per program, judged from an ``EvaluationResult`` (no pytest needed).

    verdict = judge(result, threshold=0.8, golden_score=0.85, tolerance=0.05, max_error_rate=0.05)

In order, the first that applies decides:

* ``no_examples``     nothing was evaluated;
* ``lm_errors``       more than ``max_error_rate`` of the examples were lost to infrastructure
                      errors (``INFRA_ERROR_KINDS``: unreachable endpoint, timeouts, HTTP errors,
                      spent budget, replay misses) — wherever in the run they fall. Not a low score:
                      the model was not measured;
* ``below_threshold`` the score is under the marker's threshold (an absolute floor);
* ``regression``      the score is under the golden's recorded score minus the tolerance;
* ``ok``.

The plugin judges once per program (on the xdist controller for per-example items); shard
``combine`` calls the same function on merged records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .records import INFRA_ERROR_KINDS

__all__ = ["DEFAULT_MAX_ERROR_RATE", "Verdict", "judge"]

#: Share of examples that may be lost to infrastructure errors before the verdict is "LM errors".
#: 5%: a provider's bad minute with retries rarely costs more than 1–2% (issue 9's fault mix), and a
#: score over 95% of the examples still says what the model does.
DEFAULT_MAX_ERROR_RATE = 0.05


class Judged(Protocol):
    @property
    def score(self) -> float: ...
    @property
    def n(self) -> int: ...
    @property
    def errors_by_kind(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Verdict:
    """What the gate decided and why (``kind`` is machine-readable, ``reason`` is for people)."""

    passed: bool
    reason: str
    score: float
    threshold: float | None
    golden_score: float | None
    tolerance: float
    kind: str = "ok"  # ok / no_examples / lm_errors / below_threshold / regression
    details: list[str] = field(default_factory=list)

    @property
    def delta(self) -> float | None:
        return None if self.golden_score is None else self.score - self.golden_score

    def headline(self, program: str, n: int, ci: tuple[float, float] | None = None) -> str:
        parts = [f"dspex gate {'passed' if self.passed else 'FAILED'} for {program!r}: score {self.score:.3f}"]
        if ci is not None:
            parts.append(f"(95% CI {ci[0]:.3f}-{ci[1]:.3f})")
        parts.append(f"on n={n}")
        if self.threshold is not None:
            parts.append(f"| threshold {self.threshold:.3f}")
        if self.golden_score is not None:
            parts.append(f"| golden {self.golden_score:.3f} (delta {round(self.delta or 0.0, 3) + 0.0:+.3f}, tolerance {self.tolerance:.3f})")
        if not self.passed:
            parts.append(f"| {self.reason}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "kind": self.kind,
            "score": self.score,
            "threshold": self.threshold,
            "golden_score": self.golden_score,
            "tolerance": self.tolerance,
        }


def lm_errors_reason(errors_by_kind: Mapping[str, int], n: int) -> str | None:
    """``"LM errors: k of n examples could not be answered (kinds…)"``, or None without infra errors."""
    infra = {k: v for k, v in errors_by_kind.items() if k in INFRA_ERROR_KINDS and v}
    k = sum(infra.values())
    if not k:
        return None
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(infra.items()))
    reason = f"LM errors: {k} of {n} examples could not be answered ({kinds})"
    if "budget" in infra:
        reason += "; LM budget spent (raise --dspex-max-cost/--dspex-max-calls)"
    return reason


def judge(
    result: Judged,
    *,
    threshold: float | None = None,
    golden_score: float | None = None,
    tolerance: float = 0.05,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
) -> Verdict:
    """The verdict on one program's result (see the module docstring for the order of the checks)."""
    score, n = result.score, result.n

    def v(passed: bool, reason: str, kind: str) -> Verdict:
        return Verdict(passed, reason, score, threshold, golden_score, tolerance, kind)

    if n == 0:
        return v(False, "no examples were evaluated", "no_examples")
    by_kind = result.errors_by_kind
    infra = sum(count for kind, count in by_kind.items() if kind in INFRA_ERROR_KINDS)
    if infra > max_error_rate * n + 1e-9:
        reason = lm_errors_reason(by_kind, n) or ""
        return v(False, f"{reason} — over the error budget of {max_error_rate:.0%} (not a low score)", "lm_errors")
    if threshold is not None and score < threshold:
        return v(False, f"below threshold ({score:.3f} < {threshold:.3f})", "below_threshold")
    if golden_score is not None and score < golden_score - tolerance - 1e-9:
        return v(False, f"regression: {score:.3f} < golden {golden_score:.3f} - tolerance {tolerance:.3f}", "regression")
    return v(True, "ok", "ok")
