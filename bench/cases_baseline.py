"""Gate stability after a compile: false "regressed" on an unchanged program, and real drops caught.

    PYTHONPATH=. python bench/cases_baseline.py                    # the table (counts, not timings)
    PYTHONPATH=. python bench/cases_baseline.py --runs 30 --seeds 1 2 3 --json out.json

The endpoint (in process, ``httpx.MockTransport``) answers 200 arithmetic questions. Per prompt (the
messages before the question: instructions and demos, i.e. per candidate program) each question has
a *stable* answer, right with probability 0.80 (a hash of seed, prompt and question); on every call a
share ``redraw`` (15% or 30%) of the answers is drawn again, right with probability 0.80 — an endpoint
that is not perfectly repeatable, as every hosted model and any model sampled above temperature 0.

Per (redraw, seed, candidates): ``compile_program`` exactly as the plugin calls it (the plugin's
``valset``/gate-set arguments of the code under test: before issue 18 the gate dataset was the
selection set and the chosen candidate's selection pass the golden's outcomes), then ``--runs``
fresh gate runs of the unchanged program (no cache), each judged by ``gates.judge`` against the
golden as the plugin does; then, with ``--drops``, the same number of runs of a program that lost
``round(drop * 200)`` of its stably-right answers (they are always wrong: a true drop of ~``drop``)
and how many of them the gate caught. Counts, not timings: valid on a busy machine.
Works against the code before issue 18 (``compile_program`` without ``gateset``) and after.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import random
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

N_GATE = 200
N_TRAIN = 50
REDRAWS = 1  # --dspex-redraws' default; bench/cases_baseline.py --redraws N
REDRAWS_USED = [REDRAWS]
ACCURACY = 0.80


def _h(*parts: object) -> float:
    text = "\x00".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def _question(i: int) -> str:
    return f"What is {13 * i + 7} plus {i % 23 + 2}?"


def _answer(q: str) -> str:
    a, b = re.findall(r"\d+", q)[-2:]
    return str(int(a) + int(b))


class Endpoint:
    """The non-repeatable arithmetic endpoint (see the module docstring)."""

    def __init__(self, seed: int, redraw: float, gate: list[str]) -> None:
        self.seed, self.redraw, self.gate = seed, redraw, gate
        self.rng = random.Random(f"calls-{seed}-{redraw}")
        self.lock = threading.Lock()
        self.drop = 0  # how many stably-right gate answers are turned wrong (a worse program)
        self.calls = 0
        self._drops: dict[tuple[str, int], set[str]] = {}

    def stable(self, prompt: str, q: str) -> bool:
        return _h(self.seed, prompt, q) < ACCURACY

    def dropped(self, prompt: str) -> set[str]:
        if (prompt, self.drop) not in self._drops:
            order = sorted(self.gate, key=lambda q: _h("drop", self.seed, q))
            self._drops[prompt, self.drop] = set([q for q in order if self.stable(prompt, q)][: self.drop])
        return self._drops[prompt, self.drop]

    def right(self, prompt: str, q: str) -> bool:
        if self.drop and q in self.dropped(prompt):
            return False
        with self.lock:
            self.calls += 1
            redraw = self.rng.random() < self.redraw
            fresh = self.rng.random() < ACCURACY
        return fresh if redraw else self.stable(prompt, q)

    def handle(self, request: Any) -> Any:
        import httpx

        body = json.loads(request.content)
        messages = body["messages"]
        last = str(messages[-1]["content"])
        q = re.findall(r"What is \d+ plus \d+\?", last)[-1]
        prompt = hashlib.sha256(json.dumps(messages[:-1]).encode()).hexdigest()
        ans = _answer(q) if self.right(prompt, q) else str(int(_answer(q)) + 1)
        system = str(messages[0].get("content", ""))
        if "[[ ## " in system:
            text = f"[[ ## answer ## ]]\n{ans}\n\n[[ ## completed ## ]]"
        elif "JSON" in system:
            text = json.dumps({"answer": ans})
        else:
            text = f" {ans}"
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        })  # fmt: skip


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return str(getattr(prediction, "answer", "")).strip() == example.answer


def _examples(qs: list[str]) -> list[Any]:
    import pytest_dspex as dspex

    return [dspex.Example(question=q, answer=_answer(q)).with_inputs("question") for q in qs]


def _baseline(golden: Any) -> Any:
    """The golden's outcomes the gate pairs with (after issue 18 the baseline; before, the selection pass)."""
    for name in ("baseline_outcomes",):
        if hasattr(golden, name):
            return getattr(golden, name)
    return golden.validation_examples


def _baseline_score(golden: Any) -> float:
    return float(getattr(golden, "baseline_score", None) or golden.validation_score)


def case(seed: int, redraw: float, candidates: int, runs: int, drops: list[float]) -> dict[str, Any]:
    import httpx

    import pytest_dspex as dspex
    from pytest_dspex.evaluation.gates import judge
    from pytest_dspex.optimize.compile import CompileSettings, compile_program

    gate_q = [_question(i) for i in range(N_GATE)]
    train_q = [_question(1000 + i) for i in range(N_TRAIN)]
    gate, train = _examples(gate_q), _examples(train_q)
    endpoint = Endpoint(seed, redraw, gate_q)
    lm = dspex.LM("fake", base_url="http://fake.test/v1", api_key="bench", cache=None, retries=0,
                  transport=httpx.MockTransport(endpoint.handle), hedge_after=None)  # fmt: skip
    student = dspex.Predict("question -> answer", lm=lm)
    after = "gateset" in inspect.signature(compile_program).parameters
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "__dspex__" / "test_arith" / "arith.json"
        kwargs: dict[str, Any] = {"gateset": gate, "valset": None} if after else {"valset": gate}
        calls0 = endpoint.calls
        done = compile_program(
            student, name="arith", metric=exact, trainset=train, input_keys=("question",), path=path,
            settings=CompileSettings(candidates=candidates, seed=0), **kwargs,
        )  # fmt: skip
        compile_calls = endpoint.calls - calls0
        golden = done.golden
    program = golden.apply(student)
    baseline = _baseline(golden)
    out: dict[str, Any] = {
        "seed": seed, "redraw": redraw, "candidates": candidates, "code": "after" if after else "before",
        "golden_score": _baseline_score(golden), "chosen": done.result.best.name if done.result else "",
        "compile_calls": compile_calls,
    }  # fmt: skip

    # since the redraws (``--dspex-redraws``): the gate run re-asks the examples whose first answer disagrees
    # with a noisy baseline, as the plugin does; older code has no redraws
    redraws = REDRAWS_USED[0] if "redraws" in inspect.signature(dspex.Evaluate.__init__).parameters else 0
    extra: dict[str, Any] = {"golden_outcomes": baseline, "redraws": redraws} if redraws else {}
    judged: dict[str, Any] = {"redraw_limit": redraws} if redraws else {}
    calls: list[int] = []

    def gate_runs(drop: float) -> tuple[int, list[float]]:
        endpoint.drop = round(drop * N_GATE)
        regressed, scores = 0, []
        for _ in range(runs):
            before = endpoint.calls
            result = dspex.Evaluate(gate, exact, concurrency=32, **extra)(program)
            verdict = judge(result, golden_score=_baseline_score(golden), golden_outcomes=baseline, alpha=0.05, **judged)
            regressed += verdict.kind == "regression"
            scores.append(result.score)
            if not drop:
                calls.append(endpoint.calls - before)
        return regressed, scores

    false, scores = gate_runs(0.0)
    out["redraws"] = redraws
    out["calls_per_run"] = sum(calls) / len(calls)  # the endpoint's calls per unchanged gate run (200 + redraws)
    out["false_regressed"] = false
    out["rerun_mean"] = sum(scores) / len(scores)
    out["golden_minus_rerun"] = out["golden_score"] - out["rerun_mean"]
    for drop in drops:
        caught, dscores = gate_runs(drop)
        out[f"caught_{drop:g}"] = caught
        out[f"drop_mean_{drop:g}"] = sum(dscores) / len(dscores)
    out["runs"] = runs
    return out


def table(rows: list[dict[str, Any]], drops: list[float]) -> list[str]:
    lines = [
        "| code | candidates | redrawn | seed | golden | rerun mean | golden - rerun | false 'regressed' |"
        + "".join(f" drop {d:g} caught |" for d in drops) + " calls per gate run |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(drops) + "---|",
    ]
    for r in rows:
        caught = "".join(f" {r[f'caught_{d:g}']}/{r['runs']} |" if f"caught_{d:g}" in r else " - |" for d in drops)
        lines.append(
            f"| {r['code']} | {r['candidates']} | {r['redraw']:.0%} | {r['seed']} | {r['golden_score']:.3f} | "
            f"{r['rerun_mean']:.3f} | {r['golden_minus_rerun']:+.3f} | {r['false_regressed']}/{r['runs']} |{caught}"
            f" {r.get('calls_per_run', N_GATE):.1f} |"
        )
    return lines


def section(ctx: Any) -> list[str]:
    """bench/run.py section: gate stability after a compile (counts of outcomes, not timings)."""
    runs, seeds = (10, [1, 2]) if ctx.fast else (30, [1, 2, 3, 4, 5])
    candidates, redraws, drops = ([4], [0.15], [0.05]) if ctx.fast else ([4, 16], [0.15, 0.30], [0.03, 0.05])
    rows = [
        case(seed, redraw, c, runs, drops if c == 4 else [])
        for c in candidates for redraw in redraws for seed in seeds
    ]  # fmt: skip
    lines = [
        f"`bench/cases_baseline.py`: {N_GATE} arithmetic questions, an endpoint right 80% of the time that redraws a",
        "share of its answers on every call; `compile_program` as the plugin calls it, then fresh gate runs of the",
        "unchanged program (no cache) judged by `gates.judge`, and runs of a program that lost `drop × 200` of its",
        "right answers. Counts, not timings. Before/after issue 18: `bench/RESULTS-issue18.md`.",
        "",
        *table(rows, drops),
    ]
    worst = max(r["false_regressed"] / r["runs"] for r in rows)
    gaps = [r["golden_minus_rerun"] for r in rows]
    mean_gap = sum(gaps) / len(gaps)
    ctx.target("false 'regressed' on the unchanged program after a compile, worst compile", f"{worst:.0%}", "≤ 5% every seed", worst <= 0.05)
    ctx.target("golden minus the reruns' mean, over the compiles", f"{mean_gap:+.3f} (each {min(gaps):+.3f}..{max(gaps):+.3f})",
               "≤ 0.01", mean_gap <= 0.01)  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--redraw", type=float, nargs="+", default=[0.15, 0.30])
    parser.add_argument("--candidates", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--drops", type=float, nargs="*", default=[0.03, 0.05])
    parser.add_argument("--drops-for", type=int, nargs="*", default=[4], help="candidate counts measured with drops")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redraws", type=int, default=REDRAWS, help="re-asks per discordant example (0: none)")
    args = parser.parse_args(argv)
    REDRAWS_USED[0] = args.redraws
    rows = []
    for candidates in args.candidates:
        for redraw in args.redraw:
            for seed in args.seeds:
                drops = args.drops if candidates in args.drops_for else []
                row = case(seed, redraw, candidates, args.runs, drops)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    print()
    print("\n".join(table(rows, args.drops)))


if __name__ == "__main__":
    main()
