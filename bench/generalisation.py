"""Gate-set score beside a score on examples nothing was tuned on, per selection rule, on the embedded model.

    PYTHONPATH=. python bench/generalisation.py                          # every task, every rule
    PYTHONPATH=. python bench/generalisation.py --tasks triage --rules loo in-sample

Tasks: the example project's three programs (``triage``, ``find_product``, ``take_order``: its
trainset, its dev set as the gate set) and two 6-way intent tasks of ``bench/data`` (``intent``,
``travel``: 12 training examples; the test file's even lines are the gate set). The *unseen*
examples took part in nothing — neither the compile nor the choice of the example's settings:
for ``triage`` and ``find_product`` new messages from the example's own templates
(``example_project/tests/data/generate.py``) with another seed, none of them in its train or dev
file; for ``take_order`` ``bench/data/order_test.jsonl``; for the intent tasks the test file's odd
lines.

Rules (``compile_program`` as the plugin calls it, the example's settings: 4 bootstrapped + 8 labeled
demos, 4 shuffled candidates, seed 0, one baseline draw — the model is deterministic at temperature
0): ``loo`` (the default: chosen on the trainset, no answer from its own demo — each candidate on the
training examples that are none of its demos with 24+ of them, else each without its own demo;
``DSPEX_SELECTION_SKIP_OWN=0``: leave-one-out everywhere),
``in-sample`` (chosen on the gate set itself: what the compile did before issue 18). Per task and rule: the
chosen candidate, the selection score, the gate-set baseline, the unseen score with its 95% Wilson
interval, and the embedded server's work for the compile (requests, prompt tokens it evaluated —
the part its prefix cache did not reuse — and tokens generated: load-independent counts). One
response cache per bench run, shared by the rules (the same prompt is answered once).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "example_project"
sys.path[:0] = [str(HERE), str(EXAMPLE)]

#: how the compile chooses: on the trainset, each example without its own demo (the default), or on the gate set
RULES = {"loo": False, "in-sample": True}


def _templates() -> dict[str, Any]:
    """The example generator's templates (its code up to the first dataset it writes)."""
    source = (EXAMPLE / "tests" / "data" / "generate.py").read_text()
    head = source[: source.index("rows = []")]
    names: dict[str, Any] = {}
    exec(compile(head, "generate.py", "exec"), names)
    ptemps = source[source.index("ptemps = [") : source.index("prow = []")]
    products = source[source.index("products = [") : source.index("ptemps = [")]
    exec(compile(products + ptemps, "generate.py", "exec"), names)
    return names


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def unseen_triage(n_per_team: int = 10, seed: int = 2027) -> list[dict[str, Any]]:
    t = _templates()
    seen = {r["message"] for f in ("triage_train", "triage_dev") for r in _jsonl(EXAMPLE / "tests" / "data" / f"{f}.jsonl")}
    rng = random.Random(seed)
    rows = []
    for team in ("billing", "technical", "account", "other"):
        got: set[str] = set()
        for _ in range(10_000):
            text = rng.choice(t[team])
            for k, vals in t["fill"].items():
                text = text.replace("{" + k + "}", rng.choice(vals))
            if text not in seen:
                got.add(text)
            if len(got) == n_per_team:
                break
        rows += [{"message": m, "team": team} for m in sorted(got)]
    rng.shuffle(rows)
    return rows


def unseen_products(n: int = 40, seed: int = 2027) -> list[dict[str, Any]]:
    t = _templates()
    seen = {r["message"] for f in ("product_train", "product_dev") for r in _jsonl(EXAMPLE / "tests" / "data" / f"{f}.jsonl")}
    combos = [{"message": tpl.format(p=p), "product": p} for p in t["products"] for tpl in t["ptemps"]]
    fresh = [r for r in combos if r["message"] not in seen]
    random.Random(seed).shuffle(fresh)
    return fresh[:n]


def tasks() -> dict[str, dict[str, Any]]:
    import cases_local
    from support_bot import metrics, programs

    data = EXAMPLE / "tests" / "data"
    out: dict[str, dict[str, Any]] = {
        "triage": {"program": programs.triage, "metric": metrics.team_matches, "train": _jsonl(data / "triage_train.jsonl"),
                   "gate": _jsonl(data / "triage_dev.jsonl"), "unseen": unseen_triage()},
        "find_product": {"program": programs.find_product, "metric": metrics.same_product, "train": _jsonl(data / "product_train.jsonl"),
                         "gate": _jsonl(data / "product_dev.jsonl"), "unseen": unseen_products()},
        "take_order": {"program": programs.take_order, "metric": metrics.same_order, "train": _jsonl(data / "order_train.jsonl"),
                       "gate": _jsonl(data / "order_dev.jsonl"), "unseen": _jsonl(HERE / "data" / "order_test.jsonl")},
    }  # fmt: skip
    for name, make in (("intent", cases_local._intent_program), ("travel", cases_local._travel_program)):
        test = _jsonl(HERE / "data" / f"{name}_test.jsonl")
        out[name] = {"program": make(), "metric": cases_local.intent_matches, "train": _jsonl(HERE / "data" / f"{name}_train.jsonl"),
                     "gate": test[0::2], "unseen": test[1::2]}  # fmt: skip
    return out


def wilson(k: float, n: int) -> tuple[float, float]:
    from pytest_dspex.evaluation.stats import wilson_interval

    return wilson_interval(round(k), n)


_PROMPT = re.compile(r"prompt eval time\s*=\s*[\d.]+ ms\s*/\s*(\d+) tokens")
_EVAL = re.compile(r"(?<!prompt )eval time\s*=\s*[\d.]+ ms\s*/\s*(\d+) runs")


def _work(log: Path, start: int) -> tuple[dict[str, int], int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    part = text[start:]
    prompt = [int(n) for n in _PROMPT.findall(part)]
    return {"requests": len(prompt), "prompt_tokens": sum(prompt), "generated": sum(int(n) for n in _EVAL.findall(part))}, len(text)


def run(task_names: list[str], rules: list[str], log: Path, out: Path | None) -> list[dict[str, Any]]:
    import _llama_counts  # noqa: F401 - the embedded server, verbose, logging to $DSPEX_BENCH_SERVER_LOG

    import pytest_dspex as dspex
    from pytest_dspex.optimize.compile import CompileSettings, compile_program
    from pytest_dspex.programs.primitives import as_examples

    all_tasks = tasks()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dspex-gen-") as tmp, dspex.embedded_lm(
        max_tokens=64, concurrency=8, cache_dir=str(Path(tmp) / "cache")
    ):
        pos = _work(log, 0)[1]
        for name in task_names:
            t = all_tasks[name]
            for rule in rules:
                in_sample = RULES[rule]
                settings = CompileSettings(demos=4, labeled_demos=8, candidates=4, seed=0, concurrency=8, baseline_draws=1)
                path = Path(tmp) / rule / "tests" / "__dspex__" / f"test_{name}" / f"{name}.json"
                t0, c0 = time.perf_counter(), time.process_time()
                done = compile_program(
                    t["program"], name=name, metric=t["metric"], trainset=t["train"], valset=None, gateset=t["gate"],
                    input_keys=("message",), path=path, settings=settings, in_sample=in_sample,
                )  # fmt: skip
                wall = time.perf_counter() - t0
                work, pos = _work(log, pos)
                unseen = dspex.Evaluate(as_examples(t["unseen"], ["message"]), t["metric"], concurrency=8)(done.program)
                _, pos = _work(log, pos)
                record = done.record or json.loads(path.read_text())
                sel, base = record.get("selection") or {}, record.get("baseline") or {}
                lo, hi = wilson(unseen.score * unseen.n, unseen.n)
                glo, ghi = wilson(float(base.get("score", 0)) * int(base.get("n", 0)), int(base.get("n", 0)))
                row = {
                    "task": name, "rule": rule, "set": sel.get("set"), "chosen": sel.get("chosen"),
                    "selection_n": sel.get("n"), "selection_score": sel.get("score"),
                    "gate_n": base.get("n"), "gate_score": base.get("score"), "gate_ci95": [round(glo, 3), round(ghi, 3)],
                    "unseen_n": unseen.n, "unseen_score": round(unseen.score, 3), "unseen_ci95": [round(lo, 3), round(hi, 3)],
                    "compile_wall_s": round(wall, 1), "compile_cpu_s_client": round(time.process_time() - c0, 1), **work,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                if out is not None:
                    out.write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| task | rule | chosen | selection (set, n, score) | gate set (n): baseline, 95% CI | unseen (n): score, 95% CI | requests | prompt tokens evaluated | generated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['rule']} | {r['chosen']} | {r['set']}, {r['selection_n']}, {float(r['selection_score'] or 0):.3f} | "
            f"({r['gate_n']}) {float(r['gate_score']):.3f} [{r['gate_ci95'][0]:.3f}, {r['gate_ci95'][1]:.3f}] | "
            f"({r['unseen_n']}) {r['unseen_score']:.3f} [{r['unseen_ci95'][0]:.3f}, {r['unseen_ci95'][1]:.3f}] | "
            f"{r['requests']} | {r['prompt_tokens']} | {r['generated']} |"
        )
    return lines


def section(ctx: Any) -> list[str]:
    """bench/run.py section: gate-set baseline beside unseen examples, default selection vs in-sample."""
    names = ["triage", "take_order"] if ctx.fast else ["triage", "find_product", "take_order", "intent", "travel"]
    log = Path(os.environ.setdefault("DSPEX_BENCH_SERVER_LOG", str(Path(tempfile.mkdtemp(prefix="dspex-gen-log-")) / "server.log")))
    rows = run(names, list(RULES), log, None)
    inside = [r for r in rows if r["rule"] == "loo" and r["gate_ci95"][0] <= r["unseen_score"] <= r["gate_ci95"][1]]
    loo = [r for r in rows if r["rule"] == "loo"]
    ctx.target("unseen score within the gate-set baseline's 95% CI (default selection)", f"{len(inside)} of {len(loo)} tasks",
               "every task", len(inside) == len(loo))  # fmt: skip
    return ["`bench/generalisation.py`: the embedded model, the example's compile settings; counts, not timings.", "", *table(rows)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["triage", "find_product", "take_order", "intent", "travel"])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    log = Path(os.environ.setdefault("DSPEX_BENCH_SERVER_LOG", str(Path(tempfile.mkdtemp(prefix="dspex-gen-log-")) / "server.log")))
    rows = run(args.tasks, args.rules, log, args.json)
    print()
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
