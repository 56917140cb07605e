"""The paired gate against a noisy baseline, simulated: false alarms per baseline and drops caught.

    PYTHONPATH=. python bench/sim_noisy_gate.py                     # the table (counts, not timings)
    PYTHONPATH=. python bench/sim_noisy_gate.py --baselines 200 --runs 60 --draws 3 8 --rules "redraws, K=3" "no allowance"

The endpoint model of ``bench/cases_baseline.py`` without the LM machinery: 200 examples, each with
a stable outcome (right with p 0.80); on every call a share ``redraw`` (15% or 30%) of the answers is
drawn again (right with p 0.80). A *baseline* is ``k`` draws of every example; then ``--runs`` gate
runs of the unchanged program, and as many of a program that lost 6 ("0.03") or 10 ("0.05") of its
stably-right answers (wrong on every draw, redraws included), each judged by ``comparison.compare``
(alpha 0.05) — the code under test — with one answer per example (``--dspex-redraws=0``) and with the
run's redraws (``RedrawPlan`` picks the examples whose first answer disagrees with the baseline and
asks again up to K times), beside variants: re-asking wrong answers only, the mean over an example's
answers, the earlier rule (the run's spread from the differences *plus* the baseline's sd) and a test
without any allowance for the baseline's luck. Per rule: the share of all unchanged runs read
"regressed", the share of baselines whose own rate is above 5%, the share of baselines with 2 or more
of their first 30 runs "regressed" (what a 30-run benchmark of one compile shows), the worst
baseline's rate, the share of runs that caught each drop, and the examples re-asked and extra calls
per unchanged run. Seeded: the same arguments give the same table.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

N = 200
ACCURACY = 0.80
DROPS = {0.03: 6, 0.05: 10}

Rule = Callable[[Mapping[str, Any], Mapping[str, float]], bool]


def _phi_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def earlier_rule(base: Mapping[str, Sequence[float]], run: Mapping[str, float]) -> bool:
    """The rule before this change: z = S / (sqrt(sum d_i^2) + sd of the baseline's mean), p < 0.05."""
    diffs = [run[k] - sum(v) / len(v) for k, v in base.items()]
    sd_b = math.sqrt(sum(_var(v) / len(v) for v in base.values()))
    total = sum(diffs)
    spread = math.sqrt(sum(d * d for d in diffs)) + sd_b
    return total < 0 and _phi_tail(abs(total) / spread) < 0.05


def no_allowance(base: Mapping[str, Sequence[float]], run: Mapping[str, float]) -> bool:
    """The sum of the differences against both noises (variances added), no allowance for luck."""
    total = sum(run[k] - sum(v) / len(v) for k, v in base.items())
    var = sum(_var(v) * (1 + 1 / len(v)) for v in base.values())
    return total < 0 and var > 0 and _phi_tail(abs(total) / math.sqrt(var)) < 0.05


def shipped(base: Mapping[str, Sequence[float]], run: Mapping[str, float]) -> bool:
    from pytest_dspex.evaluation.comparison import compare

    return compare(base, run, alpha=0.05).regressed


# -- rules with redraws: ``rule(base, run, again)`` -> (regressed, extra calls, examples re-asked), where
# ``again(key)`` is a fresh answer of the example (a lost one stays wrong)
Again = Callable[[str], float]
RedrawRule = Callable[[Mapping[str, Sequence[float]], Mapping[str, float], Again], tuple[bool, int, int]]


def redrawn(limit: int) -> RedrawRule:
    """The code as shipped: ``RedrawPlan`` picks whom to re-ask, ``compare`` judges with the redraws."""
    from pytest_dspex.evaluation.comparison import RedrawPlan, compare

    def rule(base: Mapping[str, Sequence[float]], run: Mapping[str, float], again: Again) -> tuple[bool, int, int]:
        plan = RedrawPlan.of(base, limit)
        redraws: dict[str, list[float]] = {}
        for key, first in run.items():
            ask = plan.ask(key, first) if plan is not None else None
            if ask is None:
                continue
            target, n = ask
            scores = redraws[key] = []
            for _ in range(n):
                scores.append(again(key))
                if scores[-1] == target:
                    break
        c = compare(base, run, alpha=0.05, redraws=redraws, redraw_limit=limit)
        return c.regressed, sum(len(v) for v in redraws.values()), len(redraws)

    return rule


def one_sided(limit: int) -> RedrawRule:
    """A variant: only examples whose baseline leans right are re-asked (a wrong first answer); the
    others keep their one answer against the baseline's mean (the noisy test's terms)."""
    from pytest_dspex.evaluation.comparison import _noisy_p, _redraw_null

    def rule(base: Mapping[str, Sequence[float]], run: Mapping[str, float], again: Again) -> tuple[bool, int, int]:
        total = var_run = var_base = 0.0
        calls = asked = 0
        for key, draws in base.items():
            k, x = len(draws), round(sum(draws))
            if x / k < 0.5:
                v = _var(draws)
                total += run[key] - x / k
                var_run += v
                var_base += v / k
                continue
            n = min(limit, k - 1)
            f = run[key]
            if f == 0.0:
                asked += 1
                for _ in range(n):
                    calls += 1
                    if again(key) == 1.0:
                        f = 1.0
                        break
            g, vf, vg = _redraw_null(k, x, n)
            total += f - g
            var_run += vf
            var_base += vg
        p = _noisy_p(total, math.sqrt(var_run), math.sqrt(var_base), 0.05)
        return total < 0 and p < 0.05, calls, asked

    return rule


def run_mean(limit: int, either_way: bool = False) -> RedrawRule:
    """A variant: re-ask an example whose first answer is below its baseline mean (or, ``either_way``,
    above it) until a redraw is at/above it (below it), and judge each example by the mean of its
    answers with ``compare`` (its noise ``v_i / k_i``, ``k_i`` its answers)."""
    from pytest_dspex.evaluation.comparison import compare

    def rule(base: Mapping[str, Sequence[float]], run: Mapping[str, float], again: Again) -> tuple[bool, int, int]:
        answers: dict[str, list[float]] = {}
        calls = asked = 0
        for key, draws in base.items():
            m = sum(draws) / len(draws)
            got = answers[key] = [run[key]]
            low, high = got[0] < m, either_way and got[0] > m
            if low or high:
                asked += 1
                for _ in range(limit):
                    calls += 1
                    got.append(again(key))
                    if (low and got[-1] >= m) or (high and got[-1] <= m):
                        break
        return compare(base, answers, alpha=0.05).regressed, calls, asked

    return rule


def plain(rule: Rule) -> RedrawRule:
    return lambda base, run, again: (rule(base, run), 0, 0)


def _var(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0


def simulate(redraw: float, draws: int, rules: Mapping[str, RedrawRule], baselines: int, runs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{redraw}-{draws}")
    keys = [f"ex-{i}" for i in range(N)]
    out: dict[str, Any] = {r: {"fa": [], "first30": [], "calls": 0, "asked": 0, **{d: 0 for d in DROPS}} for r in rules}
    for _ in range(baselines):
        stable = [rng.random() < ACCURACY for _ in keys]
        p = {k: (1 - redraw) * s + redraw * ACCURACY for k, s in zip(keys, stable, strict=True)}
        base = {k: [1.0 if rng.random() < p[k] else 0.0 for _ in range(draws)] for k in keys}
        right = [k for k, s in zip(keys, stable, strict=True) if s]
        lost = {d: set(rng.sample(right, m)) for d, m in DROPS.items()}
        fa = {r: 0 for r in rules}
        first = {r: 0 for r in rules}
        for j in range(runs):
            run = {k: 1.0 if rng.random() < p[k] else 0.0 for k in keys}
            for name, rule in rules.items():
                regressed, calls, asked = rule(base, run, lambda k: 1.0 if rng.random() < p[k] else 0.0)
                out[name]["calls"] += calls
                out[name]["asked"] += asked
                if regressed:
                    fa[name] += 1
                    first[name] += j < 30
                for d in DROPS:
                    gone = lost[d]
                    dropped = {k: 0.0 if k in gone else v for k, v in run.items()}
                    out[name][d] += rule(base, dropped, lambda k, gone=gone: 0.0 if k in gone else 1.0 if rng.random() < p[k] else 0.0)[0]
        for name in rules:
            out[name]["fa"].append(fa[name] / runs)
            out[name]["first30"].append(first[name])
    return out


def table(results: list[tuple[float, int, dict[str, Any]]], baselines: int, runs: int) -> list[str]:
    lines = [
        "| redrawn | draws | test | false 'regressed' (all runs) | baselines > 5% | baselines ≥ 2 of 30 | worst baseline | drop 0.03 caught | drop 0.05 caught | re-asked per run | extra calls per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for redraw, draws, out in results:
        for name, o in out.items():
            fa = o["fa"]
            total = baselines * runs
            lines.append(
                f"| {redraw:.0%} | {draws} | {name} | {sum(fa) / len(fa):.2%} | {sum(f > 0.05 for f in fa) / len(fa):.1%} | "
                f"{sum(f >= 2 for f in o['first30']) / len(fa):.1%} | {max(fa):.0%} | "
                f"{o[0.03] / total:.0%} | {o[0.05] / total:.0%} | {o['asked'] / total:.1f} | {o['calls'] / total:.1f} |"
            )
    return lines


RULES: dict[str, RedrawRule] = {
    "one answer (compare, --dspex-redraws=0)": plain(shipped),
    "**redraws, K=1 (compare: chosen, the default)**": redrawn(1),
    "redraws, K=2": redrawn(2),
    "redraws, K=3": redrawn(3),
    "redraws, K=5": redrawn(5),
    "one-sided (re-ask wrong answers only), K=1": one_sided(1),
    "one-sided, K=3": one_sided(3),
    "run mean over redraws, K=3": run_mean(3),
    "run mean, either way, K=3": run_mean(3, either_way=True),
    "first fix: + the baseline's sd": plain(earlier_rule),
    "no allowance": plain(no_allowance),
}
#: what ``bench/run.py --only sim_noisy_gate`` and the script by default measure (the variants: ``--rules``)
SECTION_RULES = list(RULES)[:3]


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the noisy-baseline paired test, simulated (counts, not timings)."""
    baselines, runs = (40, 30) if ctx.fast else (200, 60)
    rules = {k: RULES[k] for k in SECTION_RULES}
    results = [(r, 8, simulate(r, 8, rules, baselines, runs, seed=0)) for r in (0.15, 0.30)]
    return [
        f"`bench/sim_noisy_gate.py`: {baselines} baselines × {runs} runs per row, 200 examples, 8 baseline draws; "
        "`comparison.compare` with one answer per example, with the run's redraws (K = 1, the default) and K = 2; "
        "the other variants: `--rules`. Counts, not timings.",
        "",
        *table(results, baselines, runs),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baselines", type=int, default=200)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--draws", type=int, nargs="+", default=[8])
    ap.add_argument("--redraw", type=float, nargs="+", default=[0.15, 0.30])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=SECTION_RULES, help="which tests: " + ", ".join(RULES))
    args = ap.parse_args(argv)
    rules = {k: RULES[k] for k in args.rules}
    results = []
    for redraw in args.redraw:
        for k in args.draws:
            results.append((redraw, k, simulate(redraw, k, rules, args.baselines, args.runs, args.seed)))
            print("\n".join(table(results[-1:], args.baselines, args.runs)[2:]), flush=True)
    print()
    print("\n".join(table(results, args.baselines, args.runs)))


if __name__ == "__main__":
    main()
