"""Gates: a score must reach the threshold and must not regress below the golden's score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Verdict", "judge"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # ok / below threshold / regression / LM unavailable / no examples
    score: float
    threshold: float | None
    golden_score: float | None
    tolerance: float
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
            "score": self.score,
            "threshold": self.threshold,
            "golden_score": self.golden_score,
            "tolerance": self.tolerance,
        }


def judge(
    *,
    score: float,
    n: int,
    threshold: float | None,
    golden_score: float | None,
    tolerance: float,
    lm_unavailable: bool = False,
    budget_spent: int = 0,
) -> Verdict:
    def v(passed: bool, reason: str) -> Verdict:
        return Verdict(passed, reason, score, threshold, golden_score, tolerance)

    if n == 0:
        return v(False, "no examples were evaluated")
    if lm_unavailable:
        return v(False, "LM unavailable: most examples could not reach the endpoint (not a low score)")
    if budget_spent:
        return v(False, f"LM budget spent: {budget_spent} examples were not run (raise --dspex-max-cost/--dspex-max-calls)")
    if threshold is not None and score < threshold:
        return v(False, f"below threshold ({score:.3f} < {threshold:.3f})")
    if golden_score is not None and score < golden_score - tolerance - 1e-9:
        return v(False, f"regression: {score:.3f} < golden {golden_score:.3f} - tolerance {tolerance:.3f}")
    return v(True, "ok")
