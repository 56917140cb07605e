"""The gate on small gate sets against a noisy baseline, simulated: the paired test and the tolerance rule.

    PYTHONPATH=. python bench/sim_small_noisy_gate.py            # the table (counts, not timings)

Below ``needed_n`` shared examples (100 at alpha 0.05, tolerance 0.05) the paired test is underpowered
and the gate applies the tolerance as well. Against a noisy baseline (8 draws that disagree) the
unchanged program's first answers move by the endpoint's own noise; this counts how often the
unchanged program reads "regressed" (either rule) and how often a real loss is caught. Each trial: a
baseline of 8 draws per example (right with probability p), a run's first answers with the same p (or
``lost`` examples always wrong), one redraw of each first answer that disagrees with its baseline's side
(the default ``--dspex-redraws``), then ``comparison.compare`` and ``gates.tolerance_regression``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_dspex.evaluation.comparison import compare
from pytest_dspex.evaluation.gates import tolerance_regression

#: (shared examples, p right, examples lost for good)
CASES = [(17, 0.85, 0), (26, 0.85, 0), (40, 0.85, 0), (60, 0.9, 0), (17, 0.85, 3), (26, 0.85, 4), (40, 0.85, 6)]


def trial(rng: random.Random, n: int, p: float, lost: int, draws: int = 8) -> tuple[bool, bool]:
    """One baseline and one run: (the paired test says regressed, the tolerance rule does)."""
    base = {f"k{i}": [1.0 if rng.random() < p else 0.0 for _ in range(draws)] for i in range(n)}
    gone = set(rng.sample(range(n), lost))
    current: dict[str, float] = {}
    redraws: dict[str, list[float] | None] = {}
    for i in range(n):
        k = f"k{i}"
        first = 0.0 if i in gone else (1.0 if rng.random() < p else 0.0)
        current[k] = first
        mean = sum(base[k]) / draws
        if (mean >= 0.5) != (first == 1.0):
            redraws[k] = [0.0 if i in gone else (1.0 if rng.random() < p else 0.0)]
    c = compare(base, current, redraws=redraws, redraw_limit=1)
    return c.regressed, tolerance_regression(c)


def table(trials: int, seed: int = 1) -> list[str]:
    rows = ["| shared examples | p right | lost for good | paired test: regressed | tolerance rule: regressed | either |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for n, p, lost in CASES:
        rng = random.Random(seed)
        reg = tol = either = 0
        for _ in range(trials):
            a, b = trial(rng, n, p, lost)
            reg, tol, either = reg + a, tol + b, either + (a or b)
        rows.append(f"| {n} | {p} | {lost} | {reg / trials:.3f} | {tol / trials:.3f} | {either / trials:.3f} |")
    return rows


def section(ctx: Any) -> list[str]:
    """bench/run.py section: false alarms and catches on small noisy gate sets (counts, not timings)."""
    trials = 500 if ctx.fast else 2000
    return [
        f"`bench/sim_small_noisy_gate.py`: {trials} trials per row, 8 baseline draws, one redraw (the default); "
        "rows with 0 lost are the unchanged program (false alarms), the others a real loss. Counts, not timings.",
        "",
        *table(trials),
    ]


if __name__ == "__main__":
    print("\n".join(table(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)))
