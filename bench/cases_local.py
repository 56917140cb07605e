"""Compile on the embedded model (Gemma 3 270M under llama.cpp): time, calls and scores.

    python bench/cases_local.py intent                 # the 6-way intent task (bench/data/intent_*.jsonl)
    python bench/cases_local.py travel                 # a second 6-way intent task, airline words (bench/data/travel_*.jsonl)
    python bench/cases_local.py triage find_product    # the example project's programs, its pytest.ini settings
    python bench/cases_local.py coverage               # how often a demo draw misses a label (no LM)
    options: --url URL (a running server; default: start the embedded one), --no-grammar, --no-race,
             --no-cover, --no-calibrate, --plugin-defaults, --seed N, --candidates N, --no-answer-hint (CompactAdapter(answer_hint=False))

Each case prints one JSON line: compile seconds, LM calls, the candidates' scores and, for intent,
the compiled program's score on the 48 held-out examples. No response cache: every call is made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "example_project"

INTENTS = ("lost_card", "check_balance", "transfer_money", "reset_password", "close_account", "loan_info")
TRAVEL = ("book_flight", "cancel_booking", "baggage_policy", "flight_status", "change_seat", "refund_request")


def _intent_program() -> Any:
    import pytest_dspex as dspex

    class Intent(dspex.Signature):
        """Classify the bank customer's message by intent."""

        message: str = dspex.InputField()
        intent: Literal["lost_card", "check_balance", "transfer_money", "reset_password", "close_account", "loan_info"] = (
            dspex.OutputField()
        )

    return dspex.Predict(Intent)


def _travel_program() -> Any:
    import pytest_dspex as dspex

    class TravelIntent(dspex.Signature):
        """Classify the airline customer's message by intent."""

        message: str = dspex.InputField()
        intent: Literal["book_flight", "cancel_booking", "baggage_policy", "flight_status", "change_seat", "refund_request"] = (
            dspex.OutputField()
        )

    return dspex.Predict(TravelIntent)


def intent_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.intent == prediction.intent)


def _lm(url: str, concurrency: int) -> Any:
    import pytest_dspex as dspex

    # as the plugin does for the embedded model: a small base model never answers in JSON
    dspex.configure(json_fallback=False)
    # the embedded server's identity, so the search knows it serves one request at a time
    return dspex.LM("gemma-3-270m", base_url=url, cache=None, max_tokens=64, concurrency=concurrency,
                    cache_identity="embedded:gemma-3-270m")  # fmt: skip


def _optimizer(metric: Any, args: argparse.Namespace, **kw: Any) -> Any:
    from pytest_dspex.optimize import BootstrapFewShotWithRandomSearch

    return BootstrapFewShotWithRandomSearch(
        metric, racing=not args.no_race, cover_labels=not args.no_cover, calibrate=not args.no_calibrate, **kw
    )


def _hint(program: Any, args: argparse.Namespace) -> None:
    if args.no_answer_hint:
        from pytest_dspex.programs.adapters import CompactAdapter

        for p in program.predictors():
            p.adapter = CompactAdapter(answer_hint=False)


def case_intent(url: str, args: argparse.Namespace, task: str = "intent") -> dict[str, Any]:
    from pytest_dspex.evaluation.datasets import load_dataset
    from pytest_dspex.evaluation.evaluate import Evaluate
    from pytest_dspex.programs.constrained import set_constrained_decoding

    lm = _lm(url, 4)
    if args.no_grammar:
        set_constrained_decoding(lm, "off")
    train = load_dataset(HERE / "data" / f"{task}_train.jsonl", ["message"])
    test = load_dataset(HERE / "data" / f"{task}_test.jsonl", ["message"])
    program = _intent_program() if task == "intent" else _travel_program()
    program.set_lm(lm)
    _hint(program, args)
    if args.plugin_defaults:  # what `pytest --dspex-compile` uses (CompileSettings' defaults)
        from pytest_dspex.optimize.compile import CompileSettings

        cs = CompileSettings()
        opt = _optimizer(intent_matches, args, num_candidates=cs.candidates, max_bootstrapped_demos=cs.demos,
                         max_labeled_demos=cs.labeled_demos, concurrency=cs.concurrency, seed=args.seed)  # fmt: skip
    else:
        opt = _optimizer(intent_matches, args, num_candidates=args.candidates, max_bootstrapped_demos=4,
                         max_labeled_demos=16, concurrency=4, seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    result = opt.compile(program, trainset=train)
    compile_s = time.perf_counter() - t0
    calls = lm.usage.calls
    held_out = Evaluate(test, intent_matches, concurrency=4)(result.program)
    return {
        "case": task, "compile_s": round(compile_s, 1), "calls": calls, "chosen": result.best.name,
        "train_score": round(result.validation.score, 3), "test_score": round(held_out.score, 3),
        "test_errors": len(held_out.errors), "candidates": [c.to_dict() for c in result.candidates],
    }  # fmt: skip


def case_example(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """One example-project program, compiled as ``pytest --dspex-compile`` does (its pytest.ini settings)."""
    from pytest_dspex.evaluation.datasets import load_dataset
    from pytest_dspex.programs.constrained import set_constrained_decoding

    sys.path.insert(0, str(EXAMPLE))
    from support_bot import metrics, programs

    program, metric, data = {
        "triage": (programs.triage, metrics.team_matches, "triage"),
        "find_product": (programs.find_product, metrics.same_product, "product"),
    }[name]
    lm = _lm(url, 8)
    if args.no_grammar:
        set_constrained_decoding(lm, "off")
    student = program.reset_copy()
    student.set_lm(lm)
    _hint(student, args)
    train = load_dataset(EXAMPLE / "tests" / "data" / f"{data}_train.jsonl", ["message"])
    dev = load_dataset(EXAMPLE / "tests" / "data" / f"{data}_dev.jsonl", ["message"])
    opt = _optimizer(metric, args, num_candidates=args.candidates, max_bootstrapped_demos=4, max_labeled_demos=8,
                     concurrency=8)  # fmt: skip
    t0 = time.perf_counter()
    result = opt.compile(student, trainset=train, valset=dev)
    return {
        "case": name, "compile_s": round(time.perf_counter() - t0, 1), "calls": lm.usage.calls,
        "chosen": result.best.name, "score": round(result.validation.score, 3),
        "candidates": [c.to_dict() for c in result.candidates],
    }  # fmt: skip


def case_coverage() -> dict[str, Any]:
    """Share of demo draws (8 of 12, 2 per label, 6 labels) that leave a label without a demo."""
    from pytest_dspex.optimize.coverage import cover_sample

    items = [(label, i) for label in INTENTS for i in range(2)]
    out = {}
    for name, label_of in (("random", None), ("covering", lambda x: x[0])):
        missing = 0
        for seed in range(10_000):
            picked = cover_sample(items, 8, random.Random(seed), label_of)
            missing += len(INTENTS) - len({x[0] for x in picked})
        out[f"{name}_labels_missed_per_draw"] = missing / 10_000
        out[f"{name}_p_label_missed"] = missing / 10_000 / len(INTENTS)
    return {"case": "coverage", **out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--url")
    parser.add_argument("--no-grammar", action="store_true")
    parser.add_argument("--no-race", action="store_true")
    parser.add_argument("--no-cover", action="store_true")
    parser.add_argument("--no-answer-hint", action="store_true")
    parser.add_argument("--no-calibrate", action="store_true")
    parser.add_argument("--plugin-defaults", action="store_true", help="the optimizer settings of pytest --dspex-compile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=2)
    args = parser.parse_args()
    url = args.url
    run_id = None
    if url is None and any(c != "coverage" for c in args.cases):
        from pytest_dspex.lm.local.embedded import ensure_server

        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        url = ensure_server(run_id, os.getpid())
    try:
        for case in args.cases:
            if case == "coverage":
                row = case_coverage()
            elif case in ("intent", "travel"):
                row = case_intent(url, args, case)  # type: ignore[arg-type]
            else:
                row = case_example(case, url, args)  # type: ignore[arg-type]
            print(json.dumps(row), flush=True)
    finally:
        if run_id is not None:
            from pytest_dspex.lm.local.embedded import stop_server

            stop_server(run_id)


if __name__ == "__main__":
    main()
