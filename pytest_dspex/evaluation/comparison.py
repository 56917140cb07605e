"""Paired comparison of two runs on the examples they share (the regression gate's statistics).

    cmp = compare(golden_outcomes, run_outcomes, alpha=0.05, tolerance=0.05)
    cmp.verdict        # "regressed" | "improved" | "no change"
    cmp.regressions    # keys that went pass -> fail (or whose graded score dropped; against a noisy
                       # baseline, only keys whose baseline draws all agreed)

Both sides map example keys (``datasets.example_key``) to scores in [0, 1]; a value may also be a
list of per-repeat scores, whose mean is the example's score. Only keys present on both sides are
compared. Why paired: 9 of 300 answers flipping right -> wrong is certain evidence of a regression,
while two independent scores of equally good programs on 300 examples differ by +-0.05 by chance.

* 0/1 scores: **exact McNemar** — a binomial test on the discordant pairs. ``b`` = pass -> fail,
  ``c`` = fail -> pass; under "no change" each discordant pair is a fair coin, so the one-sided
  p-value of a regression is P(X >= b), X ~ Binomial(b + c, 1/2) (of an improvement, P(X >= c)).
  The 95% interval of the delta is Newcombe's hybrid score interval for paired proportions
  (Newcombe 1998): Wilson intervals of both proportions joined by their correlation, the correlation
  continuity-corrected as in Altman et al., "Statistics with confidence" (2000) — slightly wider
  than the uncorrected method 10.
* Graded scores (any score strictly between 0 and 1, e.g. a mean over repeats): a **paired
  sign-flip permutation test** on the per-example differences (exact when at most 12 differ,
  10,000 seeded random flips up to 100, beyond that the normal limit of the sign-flip sum, whose
  variance is the sum of the squared differences) and a seeded **paired bootstrap** percentile
  interval of the mean difference. Deterministic: the same inputs and seed give the same result.

* A **noisy baseline** (a golden's baseline of several draws per example that disagree somewhere:
  an endpoint that is not repeatable): ``S`` = the sum of the per-example differences (the run
  minus the mean of the baseline's draws). Each example's noise ``v_i`` is the variance of its
  baseline draws (the unchanged program on the same example), so the spread does not grow when the
  program really got worse (a spread from the differences themselves does: the drop widens it).
  The run's sd is ``sd = sqrt(sum v_i / r_i)`` (``r_i`` its repeats) and the baseline mean's
  standard error ``se = sqrt(sum v_i / k_i)`` (``k_i`` its draws: it shrinks with more draws). The
  baseline may itself be lucky, so the test is against the least favourable baseline within
  ``z_g`` standard errors (Berger & Boos 1994, a p-value maximised over a confidence set of the
  nuisance and ``g`` added): ``p = Phi(-(|S| - z_g se) / sd) + g``, ``g = alpha / 5`` (0.01 at
  alpha 0.05, ``z_g`` = 2.33). Whatever the baseline drew, the unchanged program then fails a share
  of runs above ``alpha - g`` only for the 1 baseline in 100 that drew more than 2.33 standard errors
  well (so ``p`` is never below ``g``). The interval is ``delta +- 1.96 sqrt(sd^2 + se^2) / n``. ``test`` = ``paired-noisy-baseline``;
  chosen by measurement in ``bench/cases_baseline.py`` and ``bench/sim_noisy_gate.py``. Draws that
  agree on every example are no noise: the tests above apply.

* **Redraws against a noisy baseline** (``redraw_limit`` > 0, 0/1 scores): the run has asked again,
  with fresh draws, each example whose first answer disagreed with the side its baseline leans to
  (``RedrawPlan``: baseline mean >= 1/2 and the answer wrong, or mean < 1/2 and the answer right), up
  to ``K_i = min(redraw_limit, draws_i - 1)`` times, stopping at the first redraw on the baseline's
  side. A real drop (answers lost for good) stays wrong on every redraw; a noise flip is redrawn. Per
  example ``f_i`` = 1 if any of its ``K_i + 1`` answers was right (baseline mean >= 1/2), or if all were
  (< 1/2): under "no change" its expectation ``g_i`` is ``1 - q^(K_i+1)`` or ``p^(K_i+1)``, estimated
  without bias from the baseline's ``k_i`` draws (the share of ``K_i + 1``-subsets of them all wrong /
  all right: a U-statistic). ``S = sum(f_i - g_i)``; the run's variance ``sum e_i (1 - e_i)`` and the
  baseline's (the U-statistic's exact variance) at ``p~ = (x_i + 1/2)/(k_i + 1)``, then the same
  ``p = Phi(-(|S| - z_g se) / sd) + g`` as above. Choosing whom to re-ask by the first answer is part
  of ``f_i`` (its expectation accounts for it), so the test stays valid. ``regressions`` are the examples
  wrong on every answer against a baseline mostly right, ``fixes`` the reverse. Measured in
  ``bench/sim_noisy_gate.py``.

``p_value`` is one-sided in the direction of the observed delta: evidence of a regression when
``delta < 0``, of an improvement when ``delta > 0``; 1.0 when ``delta == 0``. The verdict is
"regressed"/"improved" when that p-value is below ``alpha``, else "no change".

**Power.** ``needed_n`` is the smallest number of shared examples at which a drop of ``tolerance``
could be detected at ``alpha`` at all, under the most favourable assumption: every discordant pair
points the same way. Then the exact p-value of ``k`` discordant pairs is ``0.5**k``, so at least
``k* = min{k : 0.5**k < alpha}`` are needed (5 at alpha = 0.05), and a drop of ``tolerance`` over
``n`` examples flips ``tolerance * n`` of them: ``n >= ceil(k* / tolerance)`` (100 at tolerance
0.05). The same bound holds for the sign-flip test. ``underpowered`` is ``shared < needed_n``: such
a run cannot show a regression of the tolerance's size, whatever happened.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from .stats import wilson_interval

__all__ = ["DEFAULT_REDRAWS", "Comparison", "RedrawPlan", "Verdict", "compare", "flaky_keys", "mcnemar_exact", "needed_n", "outcomes_from_records"]

Verdict = Literal["regressed", "improved", "no change"]
TestName = Literal["mcnemar-exact", "paired-permutation", "paired-noisy-baseline", "paired-redrawn"]
Score = float | Sequence[float]

#: how many more times a run asks an example whose first answer disagrees with a noisy baseline
#: (``--dspex-redraws``; 0: never). Measured in ``bench/sim_noisy_gate.py``: one redraw catches a
#: drop of 0.03 on 200 examples in most runs, with fewer false alarms than none; more redraws make
#: the baseline's estimate of a run's outcome rest on rarer events and the false alarms come back.
DEFAULT_REDRAWS = 1

_EXACT_FLIPS_MAX = 12
_MONTE_CARLO_MAX = 100
_PERMUTATIONS = 10_000
_BOOTSTRAPS = 2_000


@dataclass(frozen=True)
class Comparison:
    """The outcome of ``compare``: delta, its interval, p, verdict and the examples that moved."""

    delta: float
    delta_ci95: tuple[float, float]
    p_value: float
    verdict: Verdict
    regressions: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    shared: int = 0
    underpowered: bool = False
    needed_n: int | None = None
    test: TestName = "mcnemar-exact"
    baseline_score: float = 0.0
    current_score: float = 0.0
    alpha: float = 0.05
    tolerance: float = 0.05
    #: examples this run lost to LM errors: not measured, so not compared (``gates.judge`` sets it)
    lost: int = 0
    #: examples whose metric raised: not measured either, so not compared (``gates.judge`` sets it)
    metric_errors: int = 0
    #: against a noisy baseline: examples the run asked again (their first answer disagreed), and the
    #: extra LM answers that took (``RedrawPlan``)
    reasked: int = 0
    redraw_calls: int = 0
    #: against a noisy baseline: the standard deviation of ``delta`` that the endpoint's own noise gives
    #: an unchanged program (its draws' spread and the baseline mean's error); 0 when the draws agree
    noise_sd: float = 0.0
    #: the run scored each example by its repeats' worst / best draw (``"pass^3"`` / ``"pass@3"``), and the
    #: golden's draws were scored alike (``compare``'s ``reduction``); "" when not
    reduced: str = ""

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    def summary(self) -> str:
        """One line for a terminal or a failure message."""
        if self.shared == 0:
            return f"paired comparison: {nothing_compared(self.lost, metric_errors=self.metric_errors)}"
        lo, hi = self.delta_ci95
        if self.test == "mcnemar-exact" and not self.regressions and not self.fixes:  # nothing moved: no interval to show
            text = f"{self.verdict}: no example changed outcome (delta +0.000), {self.shared} shared examples"
            if self.underpowered and self.needed_n is not None:
                text += f"; underpowered: needs n >= {self.needed_n} to detect a drop of {self.tolerance:g}"
            return text
        moved = f"{len(self.regressions)} regressed, {len(self.fixes)} fixed"
        if self.test == "paired-noisy-baseline":
            moved += " (of the examples whose baseline draws agreed)"
        elif self.test == "paired-redrawn":
            moved = f"{len(self.regressions)} regressed (wrong on every answer), {len(self.fixes)} fixed (right on every answer)"
        # the redraw rule's p judges every answer, its interval only the first ones: say which is which (trial11
        # T11-4: "delta -0.096 (95% CI -0.191..-0.001), p=0.455" beside "no change" read as a contradiction)
        first, after = (" on the first answers", " with the redraws") if self.test == "paired-redrawn" else ("", "")
        text = (
            f"{self.verdict}: delta {self.delta:+.3f}{first} (95% CI {lo:+.3f}..{hi:+.3f}), p={_fmt_p(self.p_value)}{after} "
            f"[{self.test}], {moved}, {self.shared} shared examples"
        )
        if self.test == "paired-redrawn":
            text += f"; {self.redrawn_note()}"
        if self.reduced:
            text += f"; the golden's baseline draws scored as {self.reduced} too"
        if self.underpowered and self.needed_n is not None:
            text += f"; underpowered: needs n >= {self.needed_n} to detect a drop of {self.tolerance:g}"
        return text

    def redrawn_note(self) -> str:
        """``"7 examples re-asked (8 extra calls)"``: what the redraws against a noisy baseline cost."""
        return f"{self.reasked} example{'s' if self.reasked != 1 else ''} re-asked ({self.redraw_calls} extra call{'s' if self.redraw_calls != 1 else ''})"

    def to_json(self) -> dict[str, Any]:
        return {
            "delta": round(self.delta, 6),
            "delta_ci95": [round(self.delta_ci95[0], 6), round(self.delta_ci95[1], 6)],
            "p_value": self.p_value,
            "verdict": self.verdict,
            "regressions": list(self.regressions),
            "fixes": list(self.fixes),
            "shared": self.shared,
            "underpowered": self.underpowered,
            "needed_n": self.needed_n,
            "test": self.test,
            "baseline_score": round(self.baseline_score, 6),
            "current_score": round(self.current_score, 6),
            "alpha": self.alpha,
            "tolerance": self.tolerance,
            "lost": self.lost,
            "metric_errors": self.metric_errors,
            "reasked": self.reasked,
            "redraw_calls": self.redraw_calls,
            "noise_sd": round(self.noise_sd, 6),
            **({"reduced": self.reduced} if self.reduced else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        lo, hi = data["delta_ci95"]
        return cls(
            delta=float(data["delta"]),
            delta_ci95=(float(lo), float(hi)),
            p_value=float(data["p_value"]),
            verdict=data["verdict"],
            regressions=[str(k) for k in data.get("regressions", [])],
            fixes=[str(k) for k in data.get("fixes", [])],
            shared=int(data.get("shared", 0)),
            underpowered=bool(data.get("underpowered", False)),
            needed_n=None if data.get("needed_n") is None else int(data["needed_n"]),
            test=data.get("test", "mcnemar-exact"),
            baseline_score=float(data.get("baseline_score", 0.0)),
            current_score=float(data.get("current_score", 0.0)),
            alpha=float(data.get("alpha", 0.05)),
            tolerance=float(data.get("tolerance", 0.05)),
            lost=int(data.get("lost", 0)),
            metric_errors=int(data.get("metric_errors", 0)),
            reasked=int(data.get("reasked", 0)),
            redraw_calls=int(data.get("redraw_calls", 0)),
            noise_sd=float(data.get("noise_sd", 0.0)),
            reduced=str(data.get("reduced", "")),
        )


def nothing_compared(lost: int, long: bool = True, *, metric_errors: int = 0) -> str:
    """Why a paired comparison compared no example: none measured (all lost to LM errors or to a
    metric that raised) or none shared."""
    if lost or metric_errors:
        why = [f"{lost} lost to LM errors"] * bool(lost) + [f"{metric_errors} metric errors"] * bool(metric_errors)
        return f"none measured ({', '.join(why)})"
    return "no examples shared with the golden" if long else "none shared"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact (integer arithmetic)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n))


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that ``b`` (pass -> fail) outweighs ``c`` (fail -> pass)."""
    return binomial_tail(b, b + c)


def needed_n(alpha: float, tolerance: float) -> int | None:
    """Smallest n at which a drop of ``tolerance`` is detectable at ``alpha`` (see module docs)."""
    if tolerance <= 0 or not 0 < alpha < 1:
        return None
    k = 1
    while 0.5**k >= alpha:
        k += 1
    return math.ceil(k / tolerance - 1e-9)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _score(value: Score) -> float:
    if isinstance(value, int | float):
        return float(value)
    values = [float(v) for v in value]
    if not values:
        raise ValueError("an example with an empty list of repeat scores")
    return _mean(values)


def compare(
    baseline: Mapping[str, Score],
    current: Mapping[str, Score],
    *,
    alpha: float = 0.05,
    tolerance: float = 0.05,
    seed: int = 0,
    redraws: Mapping[str, Sequence[float] | None] | None = None,
    redraw_limit: int = 0,
    reduction: tuple[str, int] | None = None,
) -> Comparison:
    """Compare ``current`` with ``baseline`` on their shared example keys (see the module docs).

    ``redraws``: against a noisy baseline, the scores of the answers the run asked again per key
    (``RedrawPlan``, at most ``redraw_limit`` each; None: a redraw failed on an LM error).
    ``reduction``: ``("all", k)`` / ``("any", k)`` when each ``current`` score is the worst / best of k
    repeats (pass^k / pass@k); against a noisy baseline its draws are then scored alike (``_reduced``)."""
    keys = [k for k in current if k in baseline]
    base = [_score(baseline[k]) for k in keys]
    cur = [_score(current[k]) for k in keys]
    n = len(keys)
    need = needed_n(alpha, tolerance)
    common: dict[str, Any] = {
        "shared": n,
        "needed_n": need,
        "underpowered": need is not None and n < need,
        "baseline_score": _mean(base),
        "current_score": _mean(cur),
        "alpha": alpha,
        "tolerance": tolerance,
    }
    binary = all(s in (0.0, 1.0) for s in (*base, *cur))
    if n == 0:
        return Comparison(0.0, (0.0, 0.0), 1.0, "no change", test="mcnemar-exact", **common)
    diffs = [c - b for b, c in zip(base, cur, strict=True)]
    delta = _mean(diffs)
    noise = [_draw_noise(baseline[k]) for k in keys]
    kind, k_draws = reduction if reduction is not None else ("mean", 1)
    if kind in ("all", "any") and k_draws > 1 and any(v > 0 for v, _ in noise) and _zero_one(baseline, current, keys):
        # pass^k / pass@k against single draws would read every noisy example as a drop / a gain
        return _reduced(keys, baseline, current, kind, k_draws, alpha, common)
    if any(v > 0 for v, _ in noise) and redraw_limit > 0 and redraws is not None and _zero_one(baseline, current, keys):
        return _redrawn(keys, baseline, current, redraws, redraw_limit, diffs, alpha, common)
    if any(v > 0 for v, _ in noise):
        # the baseline is several draws that disagree: its own noise is part of the comparison
        reps = [_repeats(current[k]) for k in keys]
        sd = math.sqrt(sum(v / r for (v, _), r in zip(noise, reps, strict=True)))
        se = math.sqrt(sum(v / k for v, k in noise))
        p = _noisy_p(sum(diffs), sd, se, alpha)
        half = 1.96 * math.sqrt(sd * sd + se * se) / n
        ci = (max(-1.0, delta - half), min(1.0, delta + half))
        order = sorted(range(n), key=lambda i: diffs[i])
        noisy_verdict: Verdict = "no change"
        if p < alpha and delta < 0:
            noisy_verdict = "regressed"
        elif p < alpha and delta > 0:
            noisy_verdict = "improved"
        # fixed / regressed: only an example whose baseline draws all agreed can flip; against a graded
        # mean, every example would count as above or below it (an unchanged program: "41 fixed")
        stable = {i for i in range(n) if noise[i][0] == 0}
        return Comparison(
            delta, ci, p, noisy_verdict,
            [keys[i] for i in order if diffs[i] < 0 and i in stable],
            [keys[i] for i in reversed(order) if diffs[i] > 0 and i in stable],
            test="paired-noisy-baseline", noise_sd=math.sqrt(sd * sd + se * se) / n, **common,
        )  # fmt: skip
    if binary:
        b = sum(1 for d in diffs if d < 0)
        c = sum(1 for d in diffs if d > 0)
        a = sum(1 for x, y in zip(base, cur, strict=True) if x == 1.0 and y == 1.0)
        p = mcnemar_exact(b, c) if b > c else mcnemar_exact(c, b) if c > b else 1.0
        ci = _newcombe_paired(a, b, c, n - a - b - c)
        test: TestName = "mcnemar-exact"
        regressions = [k for k, d in zip(keys, diffs, strict=True) if d < 0]
        fixes = [k for k, d in zip(keys, diffs, strict=True) if d > 0]
    else:
        rng = random.Random(seed)
        p = _sign_flip_p(diffs, rng) if delta != 0 else 1.0
        ci = _bootstrap_ci(diffs, rng)
        test = "paired-permutation"
        order = sorted(range(n), key=lambda i: diffs[i])
        regressions = [keys[i] for i in order if diffs[i] < 0]
        fixes = [keys[i] for i in reversed(order) if diffs[i] > 0]
    verdict: Verdict = "no change"
    if p < alpha and delta < 0:
        verdict = "regressed"
    elif p < alpha and delta > 0:
        verdict = "improved"
    return Comparison(delta, ci, p, verdict, regressions, fixes, test=test, **common)


@dataclass(frozen=True)
class RedrawPlan:
    """Which examples a run asks again against a noisy baseline, and until when (module docs).

        plan = RedrawPlan.of(golden_outcomes, limit=1)   # None: the baseline is not noisy, or limit 0
        plan.ask(key, first_score)                       # (target, n): up to n redraws until one scores target
    """

    baseline: Mapping[str, Score]
    limit: int

    @classmethod
    def of(cls, baseline: Mapping[str, Score] | None, limit: int) -> RedrawPlan | None:
        """A plan when ``baseline`` is several 0/1 draws that disagree somewhere (a noisy endpoint)."""
        if not baseline or limit <= 0:
            return None
        noisy = False
        for value in baseline.values():
            draws = [value] if isinstance(value, int | float) else list(value)
            if any(float(d) not in (0.0, 1.0) for d in draws):
                return None  # graded scores: the redraw test is for 0/1 outcomes
            noisy = noisy or len(set(draws)) > 1
        return cls(baseline, limit) if noisy else None

    def ask(self, key: str, first: float) -> tuple[float, int] | None:
        """``(target, n)`` when the run's first answer ``first`` disagrees with the side example ``key``'s
        baseline leans to: ask again up to ``n`` times, stopping at a redraw scoring ``target``."""
        value = self.baseline.get(key)
        if value is None or isinstance(value, int | float) or len(value) < 2 or first not in (0.0, 1.0):
            return None
        k = len(value)
        mean = sum(float(v) for v in value) / k
        target = 1.0 if mean >= 0.5 else 0.0
        n = min(self.limit, k - 1)
        return (target, n) if first != target and n > 0 else None

    def expected_calls(self, keys: Iterable[str]) -> tuple[float, int]:
        """``(about, at most)`` redraw calls an unchanged program's run over ``keys`` makes (``--dspex-estimate``):
        an example whose baseline leans right is asked again when its first answer is wrong (the share of its
        draws that were: ``q``), each redraw again with chance ``q``: ``q + q^2 + … + q^n``. An example leaning
        wrong is left out: the estimate's answer (its label) disagrees with it, so its redraws are counted
        as calls already."""
        about, most = 0.0, 0
        for key in keys:
            value = self.baseline.get(key)
            if value is None or isinstance(value, int | float) or len(value) < 2:
                continue
            k = len(value)
            right = sum(float(v) for v in value)
            if right / k < 0.5:
                continue
            q, n = (k - right) / k, min(self.limit, k - 1)
            about += sum(q**j for j in range(1, n + 1))
            most += n
        return about, most


def _u_all(count: int, k: int, m: int) -> float:
    """Unbiased estimate of ``P(m fresh draws all fall in a class)`` from ``count`` of ``k`` draws in it."""
    return math.comb(count, m) / math.comb(k, m) if count >= m else 0.0


@functools.lru_cache(maxsize=1024)
def _redraw_null(k: int, x: int, n: int) -> tuple[float, float, float]:
    """Under "no change", for an example whose baseline drew ``x`` right of ``k`` and a run allowed ``n``
    redraws: ``f``'s expectation estimated from the draws (``g``, a U-statistic), ``f``'s variance and
    ``g``'s, both at the Jeffreys-smoothed rate of the baseline's minority side."""
    hi = x / k >= 0.5
    u = _u_all(k - x if hi else x, k, n + 1)
    g = 1.0 - u if hi else u
    r = (k - x + 0.5) / (k + 1) if hi else (x + 0.5) / (k + 1)  # the minority side's rate
    e = r ** (n + 1)
    probs = [math.comb(k, j) * r**j * (1 - r) ** (k - j) for j in range(k + 1)]
    values = [_u_all(j, k, n + 1) for j in range(k + 1)]
    mean = sum(p * v for p, v in zip(probs, values, strict=True))
    return g, e * (1 - e), sum(p * (v - mean) ** 2 for p, v in zip(probs, values, strict=True))


def _redraw_term(draws: Sequence[float], first: float, again: Sequence[float] | None, limit: int) -> tuple[float, float, float] | None:
    """One example's ``(f - g, Var f, Var g)`` under the redraw rule, or None when it cannot be scored
    (a redraw lost to an LM error, or fewer redraws than the rule asks)."""
    k = len(draws)
    x = round(sum(draws))
    n = min(limit, k - 1)
    hi = x / k >= 0.5
    target = 1.0 if hi else 0.0
    if first != target and (again is None or (target not in again and len(again) < n)):
        return None  # a redraw lost to an LM error, or a run that asked fewer than the rule does
    answers = [first, *(again or ())]
    # hi: f = 1 unless every answer was wrong; lo: f = 1 only if every answer was right
    f = (0.0 if all(a == 0.0 for a in answers) else 1.0) if hi else (1.0 if all(a == 1.0 for a in answers) else 0.0)
    g, var_f, var_g = _redraw_null(k, x, n)
    return f - g, var_f, var_g


def _redrawn(
    keys: list[str], baseline: Mapping[str, Score], current: Mapping[str, Score],
    redraws: Mapping[str, Sequence[float] | None], limit: int, diffs: list[float], alpha: float,
    common: dict[str, Any],
) -> Comparison:
    """The paired test against a noisy baseline with the run's redraws (module docs)."""
    total = var_run = var_base = 0.0
    regressions: list[str] = []
    fixes: list[str] = []
    reasked = calls = 0
    for k in keys:
        value = baseline[k]
        draws = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        first = _score(current[k])
        again = redraws.get(k, ())
        if again:
            reasked += 1
            calls += len(again)
        if len(draws) < 2:  # one draw: no spread of its own to judge a redraw by
            continue
        term = _redraw_term(draws, first, again, limit)
        if term is None:
            continue
        d, vf, vg = term
        total += d
        var_run += vf
        var_base += vg
        answers = [first, *(again or ())]
        mean = sum(draws) / len(draws)
        if mean >= 0.5 and all(a == 0.0 for a in answers):
            regressions.append(k)
        elif mean < 0.5 and all(a == 1.0 for a in answers):
            fixes.append(k)
    n = len(keys)
    delta = _mean(diffs)
    sd, se = math.sqrt(var_run), math.sqrt(var_base)
    p = _noisy_p(total, sd, se, alpha)
    spread = math.sqrt(sum(_draw_noise(baseline[k])[0] for k in keys))  # the first answers' noise, for the interval
    noise_sd = math.sqrt(spread**2 + sum(_draw_noise(baseline[k])[0] / _draw_noise(baseline[k])[1] for k in keys)) / n
    half = 1.96 * noise_sd
    ci = (max(-1.0, delta - half), min(1.0, delta + half))
    verdict: Verdict = "no change"
    if p < alpha and total < 0:
        verdict = "regressed"
    elif p < alpha and total > 0:
        verdict = "improved"
    return Comparison(
        delta, ci, p, verdict, regressions, fixes, test="paired-redrawn", reasked=reasked, redraw_calls=calls,
        noise_sd=noise_sd, **common,
    )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _reduced_null(m: int, x: int, k: int, kind: str) -> tuple[float, float, float]:
    """Under "no change", an example whose baseline drew ``x`` right of ``m``, scored by the worst
    (``kind`` ``all``: pass^k) or the best (``any``: pass@k) of ``k`` fresh draws: that score's
    expectation estimated from the draws (``g``: a U-statistic, or the draws' rate to the k-th power when
    k > m), its variance and ``g``'s, both at the Jeffreys-smoothed rate (as ``_redraw_null``)."""

    def estimate(j: int) -> float:
        if kind == "all":
            return _u_all(j, m, k) if k <= m else (j / m) ** k
        return 1.0 - (_u_all(m - j, m, k) if k <= m else ((m - j) / m) ** k)

    r = (x + 0.5) / (m + 1)
    e = r**k if kind == "all" else 1.0 - (1.0 - r) ** k
    probs = [math.comb(m, j) * r**j * (1 - r) ** (m - j) for j in range(m + 1)]
    values = [estimate(j) for j in range(m + 1)]
    mean = sum(p * v for p, v in zip(probs, values, strict=True))
    return estimate(x), e * (1 - e), sum(p * (v - mean) ** 2 for p, v in zip(probs, values, strict=True))


def _reduced(
    keys: list[str], baseline: Mapping[str, Score], current: Mapping[str, Score], kind: str, k: int,
    alpha: float, common: dict[str, Any],
) -> Comparison:
    """The paired test of a pass^k / pass@k run against a noisy baseline of single draws: each example's
    reduced score against its expectation ``g`` from the baseline's draws (``_reduced_null``), then the
    noisy baseline's ``p`` (module docs). The golden's score shown is the mean of the ``g``."""
    total = var_run = var_base = 0.0
    expected: list[float] = []
    diffs: list[float] = []
    for key in keys:
        value = baseline[key]
        draws = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        g, var_f, var_g = _reduced_null(len(draws), round(sum(draws)), k, kind)
        expected.append(g)
        diffs.append(_score(current[key]) - g)
        total += diffs[-1]
        var_run += var_f
        var_base += var_g
    n = len(keys)
    delta = total / n
    noise_sd = math.sqrt(var_run + var_base) / n
    ci = (max(-1.0, delta - 1.96 * noise_sd), min(1.0, delta + 1.96 * noise_sd))
    p = _noisy_p(total, math.sqrt(var_run), math.sqrt(var_base), alpha)
    verdict: Verdict = "regressed" if p < alpha and total < 0 else "improved" if p < alpha and total > 0 else "no change"
    # moved: only an example whose baseline draws all agreed (its expectation is 0 or 1)
    order = sorted(range(n), key=lambda i: diffs[i])
    stable = {i for i in range(n) if expected[i] in (0.0, 1.0)}
    return Comparison(
        delta, ci, p, verdict,
        [keys[i] for i in order if diffs[i] < 0 and i in stable],
        [keys[i] for i in reversed(order) if diffs[i] > 0 and i in stable],
        test="paired-noisy-baseline", noise_sd=noise_sd,
        reduced=f"pass^{k}" if kind == "all" else f"pass@{k}", **{**common, "baseline_score": _mean(expected)},
    )  # fmt: skip


def _zero_one(baseline: Mapping[str, Score], current: Mapping[str, Score], keys: Iterable[str]) -> bool:
    """Every baseline draw and every run score of ``keys`` is 0 or 1."""
    for k in keys:
        for value in (baseline[k], current[k]):
            if any(float(v) not in (0.0, 1.0) for v in ([value] if isinstance(value, int | float) else value)):
                return False
    return True


def _draw_noise(value: Score) -> tuple[float, int]:
    """An example's variance over its baseline draws (sample variance; 0 for one draw or draws that
    agree) and how many draws there were."""
    if isinstance(value, int | float) or len(value) < 2:
        return 0.0, 1
    values = [float(v) for v in value]
    m = _mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1), len(values)


def _repeats(value: Score) -> int:
    """How many repeats an example's run score is the mean of (1 for a number)."""
    return 1 if isinstance(value, int | float) else max(1, len(value))


def _noisy_p(total: float, sd: float, se: float, alpha: float) -> float:
    """One-sided p of a sum of differences ``total`` against a baseline that may be off by ``z_g`` of
    its standard errors ``se`` (the module docs: Berger & Boos), the run's own sd ``sd``."""
    if total == 0 or sd <= 0:
        return 1.0
    g = alpha / 5
    z_g = NormalDist().inv_cdf(1 - g)
    t = (abs(total) - z_g * se) / sd
    return min(1.0, 0.5 * math.erfc(t / math.sqrt(2)) + g)


def _newcombe_paired(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """95% interval of p_current - p_baseline for paired 0/1 outcomes (Newcombe 1998, method 10).

    a = pass/pass, b = pass -> fail, c = fail -> pass, d = fail/fail.
    """
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n  # baseline, current
    l1, u1 = wilson_interval(a + b, n)
    l2, u2 = wilson_interval(a + c, n)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    # the correlation of the two outcomes, shrunk towards 0 as in Newcombe's paper and Altman et al.,
    # "Statistics with confidence" (2000), p. 52: ad - bc above n/2 is reduced by n/2, 0 < ad - bc <= n/2 is 0
    raw = a * d - b * c
    cross = raw - n / 2 if raw > n / 2 else float(raw) if raw < 0 else 0.0
    phi = cross / math.sqrt(denom) if denom > 0 else 0.0
    delta = p2 - p1
    lo2 = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    hi2 = (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2
    return (max(-1.0, delta - math.sqrt(max(0.0, lo2))), min(1.0, delta + math.sqrt(max(0.0, hi2))))


def _sign_flip_p(diffs: Sequence[float], rng: random.Random) -> float:
    """One-sided p that the mean difference is this far from 0 in its direction, under sign symmetry."""
    nz = [d for d in diffs if d != 0]
    observed = sum(nz)
    mags = [abs(d) for d in nz]
    target = abs(observed) - 1e-12
    k = len(mags)
    if k <= _EXACT_FLIPS_MAX:
        hits = 0
        for mask in range(2**k):
            s = sum(m if mask >> i & 1 else -m for i, m in enumerate(mags))
            hits += s >= target
        return hits / (1 << k)
    if k > _MONTE_CARLO_MAX:
        # many differing examples: the sign-flip sum is close to normal, mean 0, variance sum(d^2)
        return 0.5 * math.erfc(abs(observed) / math.sqrt(2 * sum(m * m for m in mags)))
    hits = 0
    for _ in range(_PERMUTATIONS):
        bits = rng.getrandbits(k)
        s = sum(m if bits >> i & 1 else -m for i, m in enumerate(mags))
        hits += s >= target
    return (hits + 1) / (_PERMUTATIONS + 1)


def _bootstrap_ci(diffs: Sequence[float], rng: random.Random) -> tuple[float, float]:
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(_BOOTSTRAPS))
    lo = means[int(0.025 * _BOOTSTRAPS)]
    hi = means[min(_BOOTSTRAPS - 1, math.ceil(0.975 * _BOOTSTRAPS) - 1)]
    return (lo, hi)


def outcomes_from_records(records: Iterable[Any]) -> dict[str, float]:
    """``{example key: score}`` from ``ExampleRecord`` objects or their JSON dicts.

    A record's key is its ``key`` (``"key"``) when it has one, else ``example_key`` of its example;
    its score is ``score`` (already the mean over repeats), or the mean of ``repeats`` when only those
    are given. Two records with the same key are an error (the dataset must have unique keys).
    """
    from ..errors import DatasetError
    from .datasets import example_key

    out: dict[str, float] = {}
    for rec in records:
        get = rec.get if isinstance(rec, Mapping) else (lambda name, r=rec: getattr(r, name, None))
        key = get("key")
        if key is None:
            example = get("example")
            if example is None:
                raise ValueError(f"record {rec!r} has neither a 'key' nor an 'example'")
            key = example_key(example)
        score = get("score")
        if score is None:
            repeats = get("repeats")
            if not repeats:
                raise ValueError(f"record {key!r} has no score")
            score = _mean([float(s) for s in repeats])
        key = str(key)
        if key in out:
            raise DatasetError(f"duplicate example key {key!r} among the records")
        out[key] = float(score)
    return out


def flaky_keys(records: Iterable[Any]) -> list[str]:
    """Keys of the examples whose repeats disagree (some repeats scored differently from others).

    ``records`` are ``ExampleRecord`` objects or their JSON dicts; records without ``repeats`` (or with
    one) are never flaky. Order: as given.
    """
    out: list[str] = []
    for rec in records:
        get = rec.get if isinstance(rec, Mapping) else (lambda name, r=rec: getattr(r, name, None))
        repeats = get("repeats") or []
        if len({float(s) for s in repeats}) > 1:
            out.append(str(get("key")))
    return out
