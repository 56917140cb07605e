"""The paired gate against a noisy baseline, simulated: false alarms per baseline and drops caught.

    PYTHONPATH=. python bench/sim_noisy_gate.py                     # the table (counts, not timings)
    PYTHONPATH=. python bench/sim_noisy_gate.py --baselines 200 --runs 100 --draws 3 5 8

The endpoint model of ``bench/cases_baseline.py`` without the LM machinery: 200 examples, each with
a stable outcome (right with p 0.80); on every call a share ``redraw`` (15% or 30%) of the answers is
drawn again (right with p 0.80). A *baseline* is ``k`` draws of every example; then ``--runs``
single-draw gate runs of the unchanged program, and as many of a program that lost 6 ("0.03") or 10
("0.05") of its stably-right answers, each judged by ``comparison.compare`` (alpha 0.05) — the code
under test — beside the earlier rule (the run's spread from the differences *plus* the baseline's
sd, before this change) and a test without any allowance for the baseline's luck. Per rule: the
share of all unchanged runs read "regressed", the share of baselines whose own rate is above 5%,
the share of baselines with 2 or more of their first 30 runs "regressed" (what a 30-run benchmark
of one compile shows), and the share of runs that caught each drop. Seeded: the same arguments
give the same table.
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


def _var(values: Sequence[float]) -> float:
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0


def simulate(redraw: float, draws: int, rules: Mapping[str, Rule], baselines: int, runs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{redraw}-{draws}")
    keys = [f"ex-{i}" for i in range(N)]
    out: dict[str, Any] = {r: {"fa": [], "first30": [], **{d: 0 for d in DROPS}} for r in rules}
    for _ in range(baselines):
        stable = [rng.random() < ACCURACY for _ in keys]
        p = [(1 - redraw) * s + redraw * ACCURACY for s in stable]
        base = {k: [1.0 if rng.random() < pi else 0.0 for _ in range(draws)] for k, pi in zip(keys, p, strict=True)}
        right = [i for i, s in enumerate(stable) if s]
        lost = {d: set(rng.sample(right, m)) for d, m in DROPS.items()}
        fa = {r: 0 for r in rules}
        first = {r: 0 for r in rules}
        for j in range(runs):
            run = {k: 1.0 if rng.random() < pi else 0.0 for k, pi in zip(keys, p, strict=True)}
            dropped = {d: {k: 0.0 if i in lost[d] else run[k] for i, k in enumerate(keys)} for d in DROPS}
            for name, rule in rules.items():
                if rule(base, run):
                    fa[name] += 1
                    first[name] += j < 30
                for d in DROPS:
                    out[name][d] += rule(base, dropped[d])
        for name in rules:
            out[name]["fa"].append(fa[name] / runs)
            out[name]["first30"].append(first[name])
    return out


def table(results: list[tuple[float, int, dict[str, Any]]], baselines: int, runs: int) -> list[str]:
    lines = [
        "| redrawn | draws | test | false 'regressed' (all runs) | baselines > 5% | baselines ≥ 2 of 30 | worst baseline | drop 0.03 caught | drop 0.05 caught |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for redraw, draws, out in results:
        for name, o in out.items():
            fa = o["fa"]
            lines.append(
                f"| {redraw:.0%} | {draws} | {name} | {sum(fa) / len(fa):.1%} | {sum(f > 0.05 for f in fa) / len(fa):.0%} | "
                f"{sum(f >= 2 for f in o['first30']) / len(fa):.0%} | {max(fa):.0%} | "
                f"{o[0.03] / (baselines * runs):.0%} | {o[0.05] / (baselines * runs):.0%} |"
            )
    return lines


RULES: dict[str, Rule] = {"now (compare)": shipped, "first fix: + the baseline's sd": earlier_rule, "no allowance": no_allowance}


def section(ctx: Any) -> list[str]:
    """bench/run.py section: the noisy-baseline paired test, simulated (counts, not timings)."""
    baselines, runs = (40, 40) if ctx.fast else (200, 100)
    results = [(r, k, simulate(r, k, RULES, baselines, runs, seed=0)) for r in (0.15, 0.30) for k in (3, 8)]
    return [
        f"`bench/sim_noisy_gate.py`: {baselines} baselines × {runs} runs per row, 200 examples, `comparison.compare` "
        "beside the earlier rule. Counts, not timings.",
        "",
        *table(results, baselines, runs),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baselines", type=int, default=200)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--draws", type=int, nargs="+", default=[3, 8])
    ap.add_argument("--redraw", type=float, nargs="+", default=[0.15, 0.30])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=list(RULES), help="which tests: " + ", ".join(RULES))
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
