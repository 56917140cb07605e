"""Regression gates side by side: the paired gate (comparison.compare) and the tolerance gate.

    python bench/cases_gates.py                     # simulated outcomes, 20 seeds, 300 examples
    python bench/cases_gates.py --through-evaluate  # the same through Evaluate on a loopback endpoint

The endpoint is deterministic per question: a hash of (endpoint salt, question) decides whether it
answers right. Two ways to set its accuracy:

* calibrated — the questions whose hash ranks in the lowest ``accuracy * n`` are right, so the score on
  these ``n`` questions is exactly ``accuracy``; the same salt at a lower accuracy answers a subset
  of the same questions right: a *pure regression* (only pass -> fail flips);
* nominal — a question is right when its hash is below ``accuracy``: another salt is another model of
  the same expected accuracy that answers a different subset right, and whose score on ``n``
  questions moves by chance, as a real model's does.

Cases (per seed; the golden is compiled at 0.80 on the same 300 questions):

1. pure regression 0.80 -> 0.77 (calibrated, 9 of the 240 right answers turn wrong);
2. equal accuracy, different subset (nominal 0.80 for both, independent salts);
3. equal accuracy, different subset, calibrated (both exactly 0.80).

Gates: *paired* = verdict "regressed" from ``compare(golden, run, alpha=0.05)``; *tolerance* =
``run score < golden score - 0.05`` (the pre-v2 gate). Not timing-sensitive; prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_dspex.evaluation.comparison import compare

Outcomes = dict[str, float]


def _h(salt: str, question: str) -> float:
    return int(hashlib.sha256(f"{salt}\x00{question}".encode()).hexdigest()[:12], 16) / 16**12


def questions(n: int) -> list[str]:
    return [f"What is {i} plus {i % 7}?" for i in range(n)]


def calibrated(salt: str, qs: list[str], accuracy: float) -> Callable[[str], bool]:
    """Right on exactly round(accuracy * n) of ``qs``: those with the lowest hashes."""
    ranked = sorted(qs, key=lambda q: _h(salt, q))
    right = set(ranked[: round(accuracy * len(qs))])
    return lambda q: q in right


def nominal(salt: str, accuracy: float) -> Callable[[str], bool]:
    return lambda q: _h(salt, q) < accuracy


def key(q: str) -> str:
    return "q:" + hashlib.sha256(q.encode()).hexdigest()[:8]


def simulate(endpoint: Callable[[str], bool], qs: list[str]) -> Outcomes:
    return {key(q): 1.0 if endpoint(q) else 0.0 for q in qs}


def cases(seed: int, qs: list[str]) -> dict[str, tuple[Callable[[str], bool], Callable[[str], bool]]]:
    return {
        "pure regression 0.80 -> 0.77": (calibrated(f"g{seed}", qs, 0.80), calibrated(f"g{seed}", qs, 0.77)),
        "equal accuracy, other subset (nominal 0.80)": (nominal(f"g{seed}", 0.80), nominal(f"o{seed}", 0.80)),
        "equal accuracy, other subset (exactly 0.80)": (calibrated(f"g{seed}", qs, 0.80), calibrated(f"o{seed}", qs, 0.80)),
    }


# -- through Evaluate on a loopback endpoint ----------------------------------------------------
class Endpoint:
    """A FakeLMServer responder answering right or wrong by ``self.right(question)``."""

    def __init__(self) -> None:
        self.right: Callable[[str], bool] = lambda q: True

    def __call__(self, body: dict[str, Any]) -> str:
        from pytest_dspex.testing.fake_server import last_user_message

        text = last_user_message(body)
        q = text.rsplit("Question:", 1)[-1].split("\n")[0].strip()
        return " " + (_answer(q) if self.right(q) else "wrong")


def _answer(q: str) -> str:
    a, b = q.removeprefix("What is ").removesuffix("?").split(" plus ")
    return str(int(a) + int(b))


def evaluate_outcomes(endpoint: Endpoint, right: Callable[[str], bool], qs: list[str], base_url: str) -> Outcomes:
    import pytest_dspex as dspex
    from pytest_dspex.evaluation.comparison import outcomes_from_records

    endpoint.right = right
    lm = dspex.LM("fake-model", base_url=base_url, api_key="test", cache=None, retries=0)
    program = dspex.Predict("question -> answer", lm=lm)
    devset = [dspex.Example(id=key(q), question=q, answer=_answer(q)).with_inputs("question") for q in qs]

    def exact(example: dspex.Example, prediction: dspex.Prediction, trace: object = None) -> bool:
        return bool(str(prediction.answer).strip() == example.answer)

    result = dspex.Evaluate(devset, metric=exact, concurrency=32)(program)
    assert result.n == len(qs) and not result.errors_by_kind, result.errors_by_kind
    return outcomes_from_records(result.records)


@dataclass
class Row:
    paired: int = 0
    tolerance: int = 0
    deltas: list[float] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    flips: list[tuple[int, int]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--through-evaluate", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    qs = questions(args.n)

    server = endpoint = None
    if args.through_evaluate:
        from pytest_dspex.testing.fake_server import FakeLMServer

        endpoint = Endpoint()
        server = FakeLMServer(endpoint).start()
    rows: dict[str, Row] = {}
    try:
        for seed in range(args.seeds):
            for name, (golden_ep, run_ep) in cases(seed, qs).items():
                if server is not None and endpoint is not None:
                    golden = evaluate_outcomes(endpoint, golden_ep, qs, server.base_url)
                    run = evaluate_outcomes(endpoint, run_ep, qs, server.base_url)
                    # the pipeline (adapter, LM client, Evaluate, records, keys) changes no outcome
                    assert golden == simulate(golden_ep, qs) and run == simulate(run_ep, qs)
                else:
                    golden, run = simulate(golden_ep, qs), simulate(run_ep, qs)
                cmp = compare(golden, run, alpha=args.alpha, tolerance=args.tolerance)
                tolerance_fail = cmp.current_score < cmp.baseline_score - args.tolerance - 1e-12
                row = rows.setdefault(name, Row())
                row.paired += cmp.verdict == "regressed"
                row.tolerance += tolerance_fail
                row.deltas.append(round(cmp.delta, 4))
                row.p.append(cmp.p_value)
                row.flips.append((len(cmp.regressions), len(cmp.fixes)))
    finally:
        if server is not None:
            server.stop()

    how = "through Evaluate + FakeLMServer" if args.through_evaluate else "simulated outcomes"
    print(f"## Regression gates, {args.seeds} seeds, n={args.n}, alpha={args.alpha}, tolerance={args.tolerance} ({how})\n")
    print("| case | paired gate: 'regressed' | tolerance gate: fails | delta range | p (median) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        ps = sorted(row.p)
        print(
            f"| {name} | {row.paired}/{args.seeds} | {row.tolerance}/{args.seeds} | "
            f"{min(row.deltas):+.3f} .. {max(row.deltas):+.3f} | {ps[len(ps) // 2]:.3g} |"
        )
    if args.json:
        print(json.dumps({name: row.__dict__ for name, row in rows.items()}, indent=1))

if __name__ == "__main__":
    main()


# -- power: detection rate against the true drop, over random flips ------------------------------
POWER_DROPS = (0.0, 0.02, 0.03, 0.05, 0.10)
POWER_NS = (100, 300, 1000)


def power_trial(rng: Any, n: int, drop: float, noisy: bool, base: float = 0.80) -> tuple[Outcomes, Outcomes]:
    """One golden/run pair of outcomes on ``n`` examples, accuracy ``base`` and a true drop ``drop``.

    * deterministic endpoints (temperature 0, a model change): the golden's outcomes are drawn once
      (each right with probability ``base``), and the run turns each right answer wrong with
      probability ``drop / base`` — a random number of pass -> fail flips, none the other way;
    * noisy endpoints (sampling): example ``i`` is answered right with its own probability ``p_i``
      (Beta(1.6, 0.4): mean 0.80, most examples nearly always or nearly never right, some in
      between); the golden and the run are independent draws, the run's ``p_i`` scaled by
      ``1 - drop / base`` — flips both ways, and at ``drop = 0`` only noise.
    """
    golden: Outcomes = {}
    run: Outcomes = {}
    for i in range(n):
        k = f"e{i}"
        if noisy:
            p = rng.betavariate(1.6, 0.4)
            golden[k] = float(rng.random() < p)
            run[k] = float(rng.random() < p * (1 - drop / base))
        else:
            right = rng.random() < base
            golden[k] = float(right)
            run[k] = float(right and rng.random() >= drop / base)
    return golden, run


def power_curve(trials: int, alpha: float = 0.05, tolerance: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Detection rates of the paired gate (``comparison.compare``, the gate's own code) and of the
    tolerance gate, per endpoint kind, n and true drop, over ``trials`` random trials each."""
    import random

    out: dict[str, Any] = {"trials": trials, "alpha": alpha, "tolerance": tolerance, "cells": []}
    for noisy in (False, True):
        for n in POWER_NS:
            for drop in POWER_DROPS:
                rng = random.Random(f"{seed}-{noisy}-{n}-{drop}")
                paired = tol = 0
                for _ in range(trials):
                    golden, run = power_trial(rng, n, drop, noisy)
                    cmp = compare(golden, run, alpha=alpha, tolerance=tolerance)
                    paired += cmp.verdict == "regressed"
                    tol += cmp.current_score < cmp.baseline_score - tolerance - 1e-12
                out["cells"].append({"noisy": noisy, "n": n, "drop": drop, "paired": paired / trials, "tolerance": tol / trials})
    return out


def power_section(ctx: Any) -> list[str]:
    """bench/run.py section: the paired gate's power curve and false-alarm rate."""
    import math
    import time as _time

    trials = 200 if ctx.fast else 1000
    t0 = _time.process_time()
    res = power_curve(trials)
    cpu = _time.process_time() - t0
    lines = [
        f"`comparison.compare` (the gate's code) on random outcome pairs, {trials} trials per cell, golden accuracy",
        "0.80, alpha 0.05; the tolerance gate (run score < golden score − 0.05) beside it. Counts of",
        f"outcomes, not timings ({cpu:.0f} s of CPU). Drop 0 is the false-alarm rate.",
        "",
        "| endpoints | n | " + " | ".join(f"drop {d:.2f}" for d in POWER_DROPS) + " |",
        "|---|---|" + "---|" * len(POWER_DROPS),
    ]
    cells = {(c["noisy"], c["n"], c["drop"]): c for c in res["cells"]}
    for noisy in (False, True):
        for n in POWER_NS:
            row = [f"{cells[(noisy, n, d)]['paired']:.0%} (tol. {cells[(noisy, n, d)]['tolerance']:.0%})" for d in POWER_DROPS]
            lines.append(f"| {'noisy (sampling)' if noisy else 'deterministic'} | {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Deterministic: the golden's outcomes drawn once (each right with p 0.80), the run turns each",
        "right answer wrong with probability drop/0.80 (pass → fail flips only). Noisy: each example its",
        "own p_i ~ Beta(1.6, 0.4) (mean 0.80), golden and run independent draws, the run's p_i scaled by",
        "1 − drop/0.80 (flips both ways). Cells: the paired gate's \"regressed\" rate (tolerance gate's fail rate).",
    ]
    se = math.sqrt(0.05 * 0.95 / trials)
    worst = max(cells[(True, n, 0.0)]["paired"] for n in POWER_NS)
    ctx.target("paired gate false alarms at no change, noisy endpoints (worst n)", f"{worst:.1%}",
               f"≤ alpha 5% (+2 SE = {0.05 + 2 * se:.1%})", worst <= 0.05 + 2 * se)  # fmt: skip
    d300 = cells[(False, 300, 0.03)]["paired"]
    ctx.target("paired gate detects a 0.03 drop, n=300, deterministic endpoints", f"{d300:.0%}", "", None)
    return lines
