"""``EvaluationResult``: one program's records over a dataset, and what they add up to (score, CIs,
errors by kind, flaky examples, latency, the summary a failing test prints)."""


from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..lm.usage import Usage
from .records import INFRA_ERROR_KINDS, ExampleRecord, failing_with, refused_with
from .stats import clustered_confidence_interval, confidence_interval

__all__ = ["EvaluationResult"]


@dataclass
class EvaluationResult:
    """Scores and accounting of one evaluation, built from its records."""

    records: list[ExampleRecord]
    usage: Usage = field(default_factory=Usage)
    elapsed_s: float = 0.0
    program: str = ""
    metric: str = ""

    @classmethod
    def from_records(
        cls,
        records: Iterable[ExampleRecord],
        *,
        program: str = "",
        metric: str = "",
        usage: Usage | None = None,
        elapsed_s: float = 0.0,
    ) -> EvaluationResult:
        """The result of records gathered anywhere (workers, shards); usage summed from them if not given."""
        recs = sorted(records, key=lambda r: r.index)
        if usage is None:
            usage = Usage()
            for r in recs:
                u = r.usage
                usage.add(
                    Usage(
                        int(u.get("calls", 0)),
                        int(u.get("cache_hits", 0)),
                        int(u.get("prompt_tokens", 0)),
                        int(u.get("completion_tokens", 0)),
                        float(u.get("cost", 0.0)),
                        retries=int(u.get("retries", 0)),
                        hedges=int(u.get("hedges", 0)),
                        estimated=int(u.get("estimated", 0)),
                        estimated_limit=int(u.get("estimated_limit", 0)),
                        repeated=int(u.get("repeated", 0)),
                    )
                )
        return cls(recs, usage, elapsed_s, program, metric)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def score(self) -> float:
        """Mean score over every example, errors included as 0 (in [0, 1])."""
        return sum(r.score for r in self.records) / self.n if self.records else 0.0

    @property
    def percent(self) -> float:
        """``score`` on DSPy's 0–100 scale (DSPy's ``Evaluate`` returns ``round(100 * mean, 2)``)."""
        return round(100 * self.score, 2)

    @property
    def errors(self) -> list[ExampleRecord]:
        return [r for r in self.records if r.error_kind is not None]

    @property
    def errors_by_kind(self) -> dict[str, int]:
        return dict(Counter(r.error_kind for r in self.records if r.error_kind is not None))

    @property
    def infra_errors(self) -> int:
        """Examples lost to the infrastructure (``INFRA_ERROR_KINDS``), not to the model."""
        return sum(1 for r in self.records if r.error_kind in INFRA_ERROR_KINDS)

    @property
    def error_rate(self) -> float:
        """Share of examples lost to infrastructure errors (what ``--dspex-max-error-rate`` bounds)."""
        return self.infra_errors / self.n if self.n else 0.0

    @property
    def lm_unavailable(self) -> bool:
        """True when most examples failed because the LM could not be reached."""
        down = sum(1 for r in self.records if r.error_kind == "lm_unavailable")
        return self.n > 0 and down * 2 > self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """95% confidence interval of the score (Wilson for pass/fail scores, normal otherwise);
        with repeats scored by their mean, clustered by example (``stats.clustered_confidence_interval``);
        a pass^k / pass@k score is one outcome per example."""
        if any(r.repeats is not None and len(r.repeats) > 1 and r.reduction is None for r in self.records):
            return clustered_confidence_interval([r.repeats or [r.score] for r in self.records])
        return confidence_interval([r.score for r in self.records])

    @property
    def flaky(self) -> list[str]:
        """Keys of the examples whose repeats disagree (empty without repeats)."""
        from .comparison import flaky_keys

        return flaky_keys(self.records)

    def by_key(self) -> dict[str, float]:
        """Per-example scores keyed by the stable example key (what the paired gate compares)."""
        return {r.key: r.score for r in self.records}

    def latency_percentiles(self) -> dict[str, float]:
        lat = sorted(r.latency_s for r in self.records)
        if not lat:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0}

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))]

        return {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99)}

    def worst(self, k: int = 5) -> list[ExampleRecord]:
        """The ``k`` lowest-scoring examples (errors first)."""
        return sorted(self.records, key=lambda r: (r.score, r.error_kind is None, r.index))[:k]

    def summary(self, worst: int = 5, regressed: Sequence[str] = ()) -> str:
        """Score, errors and usage, then the examples to look at: those that ``regressed`` against the
        golden first (under a regression they are the news, not the ones that were always wrong), then
        the worst others. Each is named by its key, with its inputs, expected outputs and answer."""
        lo, hi = self.ci95
        head = (
            f"{self.program or 'program'}: score {self.score:.3f} (95% CI {lo:.3f}–{hi:.3f}) on n={self.n}"
            f"; errors {len(self.errors)}"
        )
        if self.errors_by_kind:
            head += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_kind.items())) + ")"
        head += (
            f"; LM calls {self.usage.calls} (cache hits {self.usage.cache_hits}), tokens {self.usage.tokens}"
            f", cost ${self.usage.cost:.4f}"
        )
        lines = [head]
        failing = failing_with(self.records) if self.lm_unavailable or any(r.error_kind == "lm_http" for r in self.records) else None
        if failing and sum(1 for r in self.records if r.error_kind in ("lm_http", "lm_unavailable")) * 2 > self.n:
            lines.append(f"LM endpoint failing: {failing} (this is not a low score)")
        elif self.lm_unavailable:
            lines.append("LM unavailable: most examples could not reach the LM endpoint (this is not a low score)")
        elif sum(1 for r in self.records if r.error_kind == "lm_http") * 2 > self.n and (refused := refused_with(self.records)):
            lines.append(f"LM endpoint refused most examples: {refused} (this is not a low score)")
        from .records import split_expected

        def line(r: ExampleRecord) -> str:
            got = r.error or r.prediction
            expected, _meta = split_expected(r.to_json())  # the row's id is its key, not an expected output
            return f"  {r.key} (#{r.index}) score={r.score:.2f} inputs={_short(r.inputs)} expected={_short(expected)} got={_short(got)}"

        by_key = {r.key: r for r in self.records}
        first = [by_key[k] for k in regressed if k in by_key][:worst]
        if first:
            more = len(regressed) - len(first)
            lines.append(f"examples that went pass -> fail against the golden{f', first {len(first)} of {len(regressed)}' if more > 0 else ''}:")
            lines += [line(r) for r in first]
        shown = {r.key for r in first} | set(regressed)  # a regression beyond the first ones is not "other"
        same = _same_infra_error([r for r in self.records if r.score < 1.0 and r.key not in shown])
        bad = [r for r in self.worst(worst + len(shown)) if r.score < 1.0 and r.key not in shown][:worst]
        if same is not None:  # a dead or refusing endpoint: one line, not 5 identical examples (trial2 F8)
            lines.append(same)
        elif bad:
            lines.append("other low-scoring examples:" if first else "worst examples:")
            lines += [line(r) for r in bad]
        return "\n".join(lines)

    def to_dict(self, *, records: bool = True) -> dict[str, Any]:
        lo, hi = self.ci95
        d: dict[str, Any] = {
            "program": self.program,
            "metric": self.metric,
            "score": self.score,
            "n": self.n,
            "ci95": [lo, hi],
            "errors": len(self.errors),
            "errors_by_kind": self.errors_by_kind,
            "infra_errors": self.infra_errors,
            "lm_unavailable": self.lm_unavailable,
            "usage": self.usage.to_dict(),
            "latency_s": self.latency_percentiles(),
            "elapsed_s": self.elapsed_s,
        }
        if records:
            d["records"] = [r.to_json() for r in self.records]
        return d


def _same_infra_error(records: Sequence[ExampleRecord]) -> str | None:
    """One line when the ``records`` (more than one) all failed with the same infrastructure error:
    the same kind and, for a refusal, the same HTTP status (a fail-fast error after the breaker opened
    names it too), else the same text. None when they differ or one is not an infrastructure error."""
    import http
    import re

    def cause(r: ExampleRecord) -> str | None:
        if r.error_kind not in INFRA_ERROR_KINDS or not r.error:
            return None
        status = re.search(r"HTTP (\d\d\d)\b", r.error) if r.error_kind == "lm_http" else None
        if status is None:  # a replay miss names its request's key: the same miss for every example
            return re.sub(r" \(key [0-9a-f]+…\)", "", r.error) if r.error_kind == "cache_miss" else r.error
        try:
            return f"HTTP {status.group(1)} {http.HTTPStatus(int(status.group(1))).phrase}"
        except ValueError:
            return f"HTTP {status.group(1)}"

    if len(records) < 2:
        return None
    causes = {cause(r) for r in records}
    if len(causes) != 1 or None in causes or len({r.error_kind for r in records}) != 1:
        return None
    (said,) = causes
    detail = said if said and said.startswith("HTTP ") else _short(said, 200).strip("'\"")
    return f"all {len(records)} examples below 1.0 failed with the same LM error ({records[0].error_kind}): {detail}"


def _short(value: Any, n: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"
