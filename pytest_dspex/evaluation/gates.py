"""Gates: one verdict per program, judged from an ``EvaluationResult`` (no pytest needed).

    verdict = judge(result, threshold=0.8, golden_score=0.85, tolerance=0.05, max_error_rate=0.05)

In order, the first that applies decides:

* ``no_examples``     nothing was evaluated;
* ``lm_errors``       more than ``max_error_rate`` of the examples were lost to infrastructure
                      errors (``INFRA_ERROR_KINDS``: unreachable endpoint, timeouts, HTTP errors,
                      spent budget, replay misses) — wherever in the run they fall. Not a low score:
                      the model was not measured. A replay miss fails it within the budget too
                      (``--dspex-cache=replay`` is offline CI: an example added since the recording
                      would otherwise be left out of the gate, unsaid);
* ``metric_errors``   the metric raised on more than ``max_error_rate`` of the examples (a typo such
                      as ``prediction.teem``): a bug in the test code, not a low score — the verdict
                      leads with "metric raised on k of n examples: <first exception>". A metric that
                      raises on a few examples (within the budget) scores them 0, as before;
* ``program_errors``  the program itself raised on more than ``max_error_rate`` of the examples (a
                      client without credentials, a bug in the code under test): "program raised on k
                      of n examples: <first exception> — not a low score", not paired with the golden;
* ``below_threshold`` the score is under the marker's threshold (an absolute floor); a regression
                      against the golden is named with it (every failed check is), and so is a cause
                      that is no drop (``threshold_cause``): the golden's own baseline below the threshold
                      too, or a noisy baseline within the endpoint's own noise of it;
* ``regression``      against the golden (see below);
* ``ok``.

**Regression.** With the golden's per-example outcomes (``golden_outcomes``, golden schema 2) the
run is compared with them *per example* on the keys both share (``comparison.compare``: exact
McNemar for 0/1 scores, a paired permutation test for graded ones, e.g. means over repeats):

* ``regressed`` (one-sided p < ``alpha``) fails the gate; the reason lists the regressed keys (the
  first 10, then "and N more"), the delta with its 95% CI and p;
* ``improved`` and ``no change`` pass — a same-accuracy run that moves the score by a few points
  on noise is not a regression;
* **underpowered** (fewer shared examples than ``needed_n``: even a drop of the whole tolerance
  could not reach p < alpha) — the paired test cannot see a tolerance-sized drop, so the tolerance
  gate applies as well, on the shared examples (golden's mean vs this run's mean on the same keys):
  a small dataset is never gated more loosely than before. The verdict says it was underpowered.
  Against a noisy baseline (draws that disagree: ``Comparison.noise_sd`` > 0) the unchanged program's
  score itself moves by the endpoint's noise, so the allowed drop is the tolerance plus
  ``z_(1-alpha)`` standard deviations of that noise (``tolerance_margin``): a run of an unchanged
  program reads "regression by the tolerance" in at most alpha of runs, not in every run whose first
  answers drew one or two examples worse on 20 examples (18 of 48 gates of 17 and 26 examples before,
  an endpoint redrawing 15% of its answers).

Examples this run lost to infrastructure errors (``INFRA_ERROR_KINDS``), and those whose metric raised,
are left out of the paired comparison: they were not measured (within the error budget they still count 0 in the score and
against the threshold). Without per-example outcomes (schema 1 goldens), or when the run shares no
example with them, the gate is the tolerance against the golden's recorded score (``golden_score``).

**A verdict only from a complete run.** A per-example test whose examples did not all run (``-x``,
an interruption, a crashed xdist worker, a ``-k`` selection) is not judged on the part that ran:
``incomplete(verdict, ran, expected, why)`` turns its verdict into ``incomplete`` ("incomplete: k of
n examples ran"), never a pass and never a threshold or regression verdict on a subset.

The plugin judges once per program (on the xdist controller for per-example items); shard
``combine`` calls the same function on merged records (both through ``reports.run.ProgramRun.judge``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .records import INFRA_ERROR_KINDS, ExampleRecord, failing_with, refused_with

if TYPE_CHECKING:
    from .comparison import Comparison, Score

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_ERROR_RATE",
    "GOLDEN_BELOW",
    "INCOMPLETE",
    "METRIC_ERRORS",
    "NOISE",
    "PROGRAM_ERRORS",
    "Verdict",
    "against_golden",
    "comparison_text",
    "gate_would_fail",
    "incomplete",
    "judge",
    "metric_errors_reason",
    "paired_outcomes",
    "program_errors_reason",
    "threshold_cause",
    "threshold_cause_words",
    "tolerance_margin",
    "tolerance_regression",
    "tolerance_words",
]

#: ``Verdict.kind`` of a program whose examples did not all run: no gate verdict
INCOMPLETE = "incomplete"
#: ``Verdict.kind`` of a program whose metric raised beyond the error budget: a test-code bug, no score
METRIC_ERRORS = "metric_errors"
#: ``Verdict.kind`` of a program that itself raised beyond the error budget: not a low score, not paired
PROGRAM_ERRORS = "program_errors"

#: One-sided significance level of the paired regression test (``--dspex-alpha``).
DEFAULT_ALPHA = 0.05
#: Regressed / fixed keys named in a verdict's reason before "and N more".
SHOWN_KEYS = 10

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
    @property
    def records(self) -> Sequence[ExampleRecord]: ...


def against_golden(
    score: float | None, golden_score: float | None, comparison: Mapping[str, Any] | None, *, incomplete: bool = False
) -> tuple[float | None, float | None, str]:
    """``(golden, delta, why_not)``: the golden's score to set this run against and the delta — the one
    computation behind the failure sentence, the terminal table and every report.

    With a paired comparison that shared examples, the golden's score on those examples and the paired
    delta (examples lost to LM errors were not measured, so are not compared); a comparison that shared
    none, or an incomplete run (a subset is not set against the whole golden), compares nothing:
    ``(None, None, "none shared" | "none measured (k lost to LM errors)" | "incomplete")``. Otherwise the golden's recorded score.
    """
    if comparison is not None and not comparison.get("shared"):
        from .comparison import nothing_compared

        lost, raised = int(comparison.get("lost") or 0), int(comparison.get("metric_errors") or 0)
        return None, None, nothing_compared(lost, long=False, metric_errors=raised)
    paired = comparison is not None and comparison.get("baseline_score") is not None
    golden = float(comparison["baseline_score"]) if paired and comparison is not None else golden_score
    if golden is None:
        return None, None, ""
    if incomplete and comparison is None:
        return None, None, "incomplete"
    if comparison is not None and comparison.get("delta") is not None:
        return float(golden), float(comparison["delta"]), ""
    return float(golden), None if score is None else round(float(score) - float(golden), 6), ""


@dataclass(frozen=True)
class Verdict:
    """What the gate decided and why (``kind`` is machine-readable, ``reason`` is for people)."""

    passed: bool
    reason: str
    score: float
    threshold: float | None
    golden_score: float | None
    tolerance: float
    # ok / no_examples / lm_errors / program_errors / metric_errors / below_threshold / regression / incomplete
    kind: str = "ok"
    details: list[str] = field(default_factory=list)
    #: the paired comparison with the golden's per-example outcomes (None: no outcomes to pair with)
    comparison: Comparison | None = None

    @property
    def delta(self) -> float | None:
        return None if self.golden_score is None else self.score - self.golden_score

    @property
    def incomplete(self) -> bool:
        return self.kind == INCOMPLETE

    def headline(self, program: str, n: int, ci: tuple[float, float] | None = None) -> str:
        if self.incomplete:
            return f"dspex gate INCOMPLETE for {program!r}: {self.reason} (score {self.score:.3f} on those {n})"
        if self.kind in (METRIC_ERRORS, PROGRAM_ERRORS):  # a bug in the code leads, not a score
            return f"dspex gate FAILED for {program!r}: {self.reason} (score {self.score:.3f} on n={n} not judged)"
        parts = [f"dspex gate {'passed' if self.passed else 'FAILED'} for {program!r}: score {self.score:.3f}"]
        if ci is not None:
            parts.append(f"(95% CI {ci[0]:.3f}-{ci[1]:.3f})")
        parts.append(f"on n={n}")
        if self.threshold is not None:
            parts.append(f"| threshold {self.threshold:.3f}")
        c = self.comparison.to_json() if self.comparison is not None else None
        golden, delta, why_not = against_golden(self.score, self.golden_score, c)  # as the table says it
        if golden is not None and delta is not None:
            parts.append(f"| golden {golden:.3f} (delta {round(delta, 3) + 0.0:+.3f}, tolerance {self.tolerance:.3f})")
        elif why_not:
            parts.append(f"| golden n/a ({why_not})")
        if not self.passed:
            parts.append(f"| {self.reason}")
        elif self.comparison is not None and self.comparison.shared:
            parts.append(f"| paired: {self.comparison.summary()}")
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
            "comparison": self.comparison.to_json() if self.comparison is not None else None,
        }


def incomplete(verdict: Verdict, ran: int, expected: int, why: str = "") -> Verdict:
    """The verdict of a program of which only ``ran`` of its ``expected`` examples ran: ``incomplete``.

    Not passed, and no threshold or regression verdict on the subset (the comparison is dropped);
    ``why`` says what cut it short (a selection, ``-x``, an interruption, a crashed worker).
    """
    from dataclasses import replace

    reason = f"incomplete: {ran} of {expected} examples ran" + (f" ({why})" if why else "")
    return replace(verdict, passed=False, kind=INCOMPLETE, reason=reason + "; no gate verdict", details=[], comparison=None)


def lm_errors_reason(errors_by_kind: Mapping[str, int], n: int, records: Iterable[ExampleRecord] = ()) -> str | None:
    """``"LM errors: k of n examples could not be answered (kinds…)"``, or None without infra errors;
    with ``records``, the HTTP status an endpoint refused them with and what to check (``refused_with``)."""
    infra = {k: v for k, v in errors_by_kind.items() if k in INFRA_ERROR_KINDS and v}
    records = list(records)  # read twice below
    k = sum(infra.values())
    if not k:
        return None
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(infra.items()))
    reason = f"LM errors: {k} of {n} examples could not be answered ({kinds})"
    refused = refused_with(records) if "lm_http" in infra else None
    failing = None if refused or not ({"lm_http", "lm_unavailable"} & set(infra)) else failing_with(records)
    if refused or failing:
        reason += f"; {refused or failing}"
    if "budget" in infra:
        reason += "; LM budget spent (raise --dspex-max-cost/--dspex-max-calls)"
    if "rate_limited" in infra:
        reason += (
            "; rate limited: the endpoint answered HTTP 429 (a spent quota or a rate limit): check the key's quota "
            "and billing, or lower --dspex-concurrency"
        )
    missing_folder = next((e for r in records if r.error_kind == "cache_miss" and " does not exist" in (e := r.error or "")), None)
    if "cache_miss" in infra and missing_folder:  # the folder itself is missing: no other hint applies
        reason += f"; no recorded answer for {infra['cache_miss']} example(s) in replay mode: " + missing_folder.split("replay mode: ", 1)[-1]
    elif "cache_miss" in infra:  # said once here: the examples' own lines are cut short
        reason += (
            f"; no recorded answer for {infra['cache_miss']} example(s) in replay mode: record them with a run in "
            "cache mode 'on' (the default), or check the model/settings match the recording and the requests are "
            "the recorded ones (an edited prompt, instructions, demos or function's messages are new requests)"
        )
        if not any(r.error_kind == "cache_miss" and "not by a URL" in (r.error or "") for r in records):
            reason += (  # not the embedded model, whose answers are keyed by its name
                " — the endpoint URL (--dspex-base-url) is part of the cache key, so a recording made at another "
                "URL does not replay"
            )
    return reason


def metric_errors_reason(records: Iterable[ExampleRecord], n: int, what: str = "examples") -> str | None:
    """``"metric raised on k of n examples: AttributeError: …"`` (the first exception), or None when it never raised."""
    raised = [r for r in records if r.error_kind == "metric"]
    if not raised:
        return None
    first = (raised[0].error or "").split(" raised ", 1)[-1][:300]
    # a metric that returned what is not a score ("metric m returned 'yes' (str)") did not raise
    returned = sum(1 for r in raised if " raised " not in (r.error or "") and " returned " in (r.error or ""))
    did = "returned no score" if returned == len(raised) else "raised" if not returned else "raised or returned no score"
    return f"metric {did} on {len(raised)} of {n} {what}" + (f": {first}" if first else "")


def program_errors_reason(records: Iterable[ExampleRecord], n: int) -> str | None:
    """``"program raised on k of n examples: OpenAIError: …"`` (the first exception), or None when it never raised."""
    raised = [r for r in records if r.error_kind == "program"]
    if not raised:
        return None
    first = (raised[0].error or "")[:300]
    return f"program raised on {len(raised)} of {n} examples" + (f": {first}" if first else "")


def tolerance_regression(comparison: Comparison | Mapping[str, Any] | None) -> bool:
    """A drop of more than the tolerance that the paired test is too small to call (underpowered, not
    regressed): a regression by the tolerance — whatever else failed (a threshold too)."""
    if comparison is None:
        return False
    c = comparison if isinstance(comparison, Mapping) else comparison.to_json()
    if not c.get("shared") or c.get("verdict") == "regressed" or not c.get("underpowered"):
        return False
    return float(c.get("delta") or 0.0) < -tolerance_margin(c) - 1e-9


def _noise_allowance(c: Mapping[str, Any]) -> float:
    """Against a noisy baseline, the drop the endpoint's own noise gives an unchanged program in all but
    alpha of runs (``z_(1-alpha)`` standard deviations of the delta); 0 against repeatable draws."""
    noise = float(c.get("noise_sd") or 0.0)
    if noise <= 0:
        return 0.0
    from statistics import NormalDist

    alpha = float(c.get("alpha") or DEFAULT_ALPHA)
    return NormalDist().inv_cdf(1 - alpha) * noise


def tolerance_margin(comparison: Comparison | Mapping[str, Any]) -> float:
    """How much lower than the golden's score on the shared examples an underpowered run may score before
    the tolerance calls it a regression: the tolerance, plus the noise allowance against a noisy baseline."""
    c = comparison if isinstance(comparison, Mapping) else comparison.to_json()
    return float(c.get("tolerance") or 0.0) + _noise_allowance(c)


def tolerance_words(comparison: Comparison | Mapping[str, Any]) -> str:
    """``"0.05"``, or against a noisy baseline ``"0.164: the tolerance 0.05 and the endpoint's own noise 0.114"``."""
    c = comparison if isinstance(comparison, Mapping) else comparison.to_json()
    tolerance = float(c.get("tolerance") or 0.0)
    extra = _noise_allowance(c)
    if extra <= 0:
        return f"{tolerance:g}"
    return f"{tolerance + extra:.3f}: the tolerance {tolerance:g} and the endpoint's own noise {extra:.3f}"


def tolerance_reason(c: Comparison) -> str:
    """Why an underpowered paired comparison is a regression by the tolerance, in words."""
    extra = _noise_allowance(c.to_json())
    noise = f" - the endpoint's own noise {extra:.3f}" if extra > 0 else ""
    return (
        f"regression: {c.current_score:.3f} < golden {c.baseline_score:.3f} - tolerance {c.tolerance:.3f}{noise} "
        f"on the {c.shared} shared examples ({len(c.regressions)} went pass -> fail: "
        f"{_keys(c.regressions)}); the paired test is underpowered (needs n >= {c.needed_n}), "
        "so the tolerance applies"
    )


#: ``threshold_cause`` of a failed floor the golden's own baseline is below too: the program as compiled never met it
GOLDEN_BELOW = "golden_below"
#: ``threshold_cause`` of a failed floor within a noisy baseline's own noise of it, no regression paired (T10-4)
NOISE = "noise"


def threshold_cause(threshold: float | None, golden_score: float | None, comparison: Mapping[str, Any] | None) -> str:
    """Why a score below the threshold need not be a drop from the golden, so the failure says it (trial10):
    ``GOLDEN_BELOW``, the golden's own baseline is below the threshold (raised since the compile, say);
    ``NOISE``, the baseline's draws disagree and it is within two of the endpoint's noise SDs above the
    threshold while the paired comparison calls no regression: an unchanged program falls below it in some
    runs; ``""`` otherwise. The one rule behind the verdict's reason and every view's verdict words."""
    if threshold is None or golden_score is None:
        return ""
    if golden_score < threshold:
        return GOLDEN_BELOW
    c = comparison
    if not c or not c.get("shared") or c.get("verdict") == "regressed" or tolerance_regression(c):
        return ""
    noise = float(c.get("noise_sd") or 0.0)
    return NOISE if noise > 0 and golden_score - threshold < 2 * noise else ""


def _threshold_cause_reason(cause: str, c: Comparison | None, golden_score: float, threshold: float, program: str) -> str:
    """The long form of ``threshold_cause`` that ends a ``below_threshold`` verdict's reason."""
    if cause == GOLDEN_BELOW:
        return (f"; the golden's own baseline {golden_score:.3f} is below the threshold {threshold:g}: lower the threshold "
                f"or recompile (pytest --dspex-compile={program or 'NAME'})")  # one line of <= 120 + the name: fmt: skip
    if cause == NOISE and c is not None:
        return (f"; the paired comparison with the golden says {c.verdict} (delta {c.delta:+.3f}): the golden's "
                f"baseline {golden_score:.3f} is within this endpoint's own noise (+-{2 * c.noise_sd:.3f}) of the "
                f"threshold {threshold:g}, so the unchanged program falls below it in some runs — more gate examples "
                "or a lower threshold make the floor reliable")  # fmt: skip
    return ""


def threshold_cause_words(cause: str, comparison: Mapping[str, Any] | None, golden_score: float | None) -> str:
    """The short form for a verdict's words (markdown, HTML, the terminal line under ``--tb=no``): ``", as is
    the golden's own baseline 0.853: lower the threshold or recompile"``, ``", within this endpoint's own noise
    (+-0.126) of the golden's baseline 0.800 (paired: no change)"``; ``""`` for no cause."""
    if cause == GOLDEN_BELOW and golden_score is not None:
        return f", as is the golden's own baseline {golden_score:.3f}: lower the threshold or recompile"
    if cause == NOISE and comparison is not None and golden_score is not None:
        spread = 2 * float(comparison.get("noise_sd") or 0.0)
        return (f", within this endpoint's own noise (+-{spread:.3f}) of the golden's baseline {golden_score:.3f} "
                f"(paired: {comparison.get('verdict')})")  # fmt: skip
    return ""


def paired_outcomes(records: Iterable[ExampleRecord]) -> dict[str, float]:
    """``{key: score}`` of the records measured: infrastructure errors and examples whose metric raised
    are left out (not measured, so never paired as a regression)."""
    return {r.key: r.score for r in records if r.error_kind not in INFRA_ERROR_KINDS and r.error_kind != "metric"}


def reduced_by(records: Iterable[ExampleRecord]) -> tuple[str, int] | None:
    """``("all", 3)``: the records' scores are the worst (``any``: best) of 3 repeats; None: their mean."""
    return next(((r.reduction, len(r.repeats)) for r in records if r.reduction and r.repeats and len(r.repeats) > 1), None)


def redrawn(records: Iterable[ExampleRecord]) -> dict[str, list[float] | None]:
    """``{key: scores of its redraws}`` of the records asked again (None: a redraw lost to an LM error)."""
    return {r.key: None if r.redraw_lost else list(r.redraws or ()) for r in records if r.redraws is not None or r.redraw_lost}


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def regression_reason(comparison: Comparison) -> str:
    """Why a paired comparison is a regression, in words: which examples, delta, CI, p."""
    c = comparison
    lo, hi = c.delta_ci95
    moved = {"mcnemar-exact": "went pass -> fail", "paired-redrawn": "were wrong on every answer"}.get(c.test, "scored lower")
    text = (
        f"regression against the golden: {len(c.regressions)} of {c.shared} shared examples {moved} "
        f"({_keys(c.regressions)})"
    )
    if c.fixes:
        text += f", {len(c.fixes)} improved"
    p = f"{c.p_value:.2g}" if c.p_value < 0.001 else f"{c.p_value:.3f}"
    if float(p) >= c.alpha:  # rounded up to alpha ("p=0.050 < alpha 0.05"): the digits that show it is below
        p = f"{c.p_value:.4g}"
    text += f"; delta {c.delta:+.3f} (95% CI {lo:+.3f}..{hi:+.3f}), p={p} < alpha {c.alpha:g} [{c.test}]"
    return text + (f"; {c.redrawn_note()} against the golden's noisy baseline" if c.test == "paired-redrawn" else "")


def gate_would_fail(comparison: Comparison) -> bool:
    """Whether the gate calls this comparison a regression (``judge``'s rule): the paired test says
    regressed, or it is underpowered and the shared examples' mean is more than the tolerance lower."""
    return comparison.shared > 0 and (comparison.regressed or tolerance_regression(comparison))


def comparison_text(comparison: Comparison) -> str:
    """``comparison.summary()``, led by "regression by the tolerance" when that is what fails it (never
    "no change" for a drop the gate fails)."""
    c = comparison
    if tolerance_regression(c):
        return (
            f"regression by the tolerance: {c.current_score:.3f} vs {c.baseline_score:.3f} on {c.shared} shared examples "
            f"(more than {tolerance_words(c)} lower); the paired test alone would say {c.summary()}"
        )
    return c.summary()


def judge(
    result: Judged,
    *,
    threshold: float | None = None,
    golden_score: float | None = None,
    tolerance: float = 0.05,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    golden_outcomes: Mapping[str, Score] | None = None,
    alpha: float = DEFAULT_ALPHA,
    redraw_limit: int = 0,
    program: str = "",
) -> Verdict:
    """The verdict on one program's result (see the module docstring for the order of the checks).

    ``golden_outcomes`` (the golden's per-example validation scores by key) turn the regression
    check into the paired comparison; the verdict carries it (``verdict.comparison``).
    ``redraw_limit``: the evaluation re-asked examples against a noisy baseline up to this many times
    (``comparison.RedrawPlan``); their answers (``record.redraws``) go into the paired test.
    ``program``: its name, for the command a below-threshold reason may suggest.
    """
    from dataclasses import replace

    score, n = result.score, result.n
    comparison: Comparison | None = None
    if golden_outcomes is not None:
        from .comparison import compare

        comparison = compare(
            golden_outcomes, paired_outcomes(result.records), alpha=alpha, tolerance=tolerance,
            redraws=redrawn(result.records) if redraw_limit > 0 else None, redraw_limit=redraw_limit,
            reduction=reduced_by(result.records),
        )  # fmt: skip
        lost = sum(1 for r in result.records if r.error_kind in INFRA_ERROR_KINDS)
        raised = sum(1 for r in result.records if r.error_kind == "metric")
        if lost or raised:
            comparison = replace(comparison, lost=lost, metric_errors=raised)

    refused = result.errors_by_kind.get("refused", 0)

    def v(passed: bool, reason: str, kind: str) -> Verdict:
        if refused and not passed and kind != "no_examples":
            reason += f"; the model refused {refused} of {n} examples (scored 0)"
        return Verdict(passed, reason, score, threshold, golden_score, tolerance, kind, comparison=comparison)

    if n == 0:
        return v(False, "no examples were evaluated", "no_examples")
    by_kind = result.errors_by_kind
    infra = sum(count for kind, count in by_kind.items() if kind in INFRA_ERROR_KINDS)
    if infra > max_error_rate * n + 1e-9:
        reason = lm_errors_reason(by_kind, n, result.records) or ""
        return v(False, f"{reason} — over the error budget of {max_error_rate:.0%} (not a low score)", "lm_errors")
    if by_kind.get("cache_miss", 0):  # replay is offline CI: an example never recorded is not left out of the gate
        reason = lm_errors_reason(by_kind, n, result.records) or ""
        return v(False, f"{reason} — a replay run fails on any miss (within the error budget of {max_error_rate:.0%})", "lm_errors")
    crashed = by_kind.get("program", 0)
    if crashed > max_error_rate * n + 1e-9:  # the code under test raised: not measured, so not paired
        reason = program_errors_reason(result.records, n) or f"program raised on {crashed} of {n} examples"
        return replace(
            v(False, f"{reason} — not a low score (over the error budget of {max_error_rate:.0%})", PROGRAM_ERRORS),
            comparison=None,
        )
    raised = by_kind.get("metric", 0)
    if raised > max_error_rate * n + 1e-9:
        reason = metric_errors_reason(result.records, n) or f"metric raised on {raised} of {n} examples"
        return v(
            False,
            f"{reason} — a bug in the test's metric, not a low score (over the error budget of {max_error_rate:.0%})",
            METRIC_ERRORS,
        )
    if threshold is not None and score < threshold:
        reason = f"below threshold ({score:.3f} < {threshold:.3f})"
        if comparison is not None and comparison.shared and comparison.regressed:  # every failed check is named
            reason += "; and " + regression_reason(comparison)
        elif comparison is not None and tolerance_regression(comparison):
            reason += "; and " + tolerance_reason(comparison)
        cause = threshold_cause(threshold, golden_score, comparison.to_json() if comparison is not None else None)
        if cause and golden_score is not None:  # said after any regression: that one is a drop all the same
            reason += _threshold_cause_reason(cause, comparison, golden_score, threshold, program)
        return v(False, reason, "below_threshold")
    if comparison is not None and comparison.shared:
        c = comparison
        if c.regressed:
            return v(False, regression_reason(c), "regression")
        if tolerance_regression(c):
            return v(False, tolerance_reason(c), "regression")
        return v(True, "ok", "ok")
    if golden_score is not None and score < golden_score - tolerance - 1e-9:
        return v(False, f"regression: {score:.3f} < golden {golden_score:.3f} - tolerance {tolerance:.3f}", "regression")
    return v(True, "ok", "ok")
