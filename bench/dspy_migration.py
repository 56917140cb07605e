"""Issue 25 reproductions: what a DSPy 3.4.1 user meets when moving to pytest-dspex.

    LITELLM_LOCAL_MODEL_COST_MAP=True PYTHONPATH=. /work/dspy-venv/bin/python bench/dspy_migration.py

Needs DSPy 3.4.1 in the interpreter (it makes the saves against the repo's fake server, no network).
Prints one line per reproduction: ``ok`` or the first line of the error a user sees. Counts, not times.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

import pytest_dspex as dspex
from pytest_dspex.golden.dspy_state import from_dspy_state, to_dspy_state
from pytest_dspex.golden.file import GoldenFile
from pytest_dspex.golden.record import golden_record
from pytest_dspex.testing.fake_server import FakeLMServer
from tests.interop.dspy_saves import QA, dspy_saves, make_dspex_programs, sum_responder

results: list[tuple[str, str]] = []


def attempt(name: str, fn: Any) -> None:
    try:
        out = fn()
        results.append((name, "ok" if out is None else str(out)))
    except Exception as exc:  # the point is to show what the user sees
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        results.append((name, text[:200]))
        if os.environ.get("VERBOSE"):
            traceback.print_exc()


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    saves = dspy_saves(folder)
    ours = make_dspex_programs()
    for key, path in sorted(saves.items()):
        kind = key.split("_", 1)[1]
        state = json.loads(path.read_text(encoding="utf-8"))

        def imp(state: dict[str, Any] = state, kind: str = kind, key: str = key) -> str:
            prog = from_dspy_state(state, ours[kind], source=f"{key}.json")
            n = sum(len(p.demos) for p in prog.predictors())
            instr = {p.signature.instructions for p in prog.predictors()}
            return f"ok: {n} demos, instructions {sorted(instr)}"

        def roundtrip(state: dict[str, Any] = state, kind: str = kind) -> str:
            prog = from_dspy_state(state, ours[kind])
            record = golden_record(prog, name=kind, validation=(1.0, 1))
            back = to_dspy_state(GoldenFile(Path("g.json"), record), ours[kind])
            theirs = {"predict": dspy.Predict(QA), "cot": dspy.ChainOfThought(QA)}.get(kind)
            if theirs is None:
                from tests.interop.dspy_saves import Pipe

                theirs = Pipe()
            (folder / "back.json").write_text(json.dumps(back), encoding="utf-8")
            theirs.load(str(folder / "back.json"))
            theirs.save(str(folder / "again.json"))
            again = json.loads((folder / "again.json").read_text(encoding="utf-8"))
            diffs = []
            pairs = [("self", state, again)] if "demos" in state else [(k, state[k], again[k]) for k in state if k != "metadata"]
            for path_, a, b in pairs:
                if a["demos"] != b["demos"]:
                    diffs.append(f"{path_}: demos differ")
                if a["signature"]["instructions"] != b["signature"]["instructions"]:
                    diffs.append(f"{path_}: instructions {a['signature']['instructions']!r} -> {b['signature']['instructions']!r}")
                if a["signature"]["fields"] != b["signature"]["fields"]:
                    diffs.append(f"{path_}: fields {a['signature']['fields']} -> {b['signature']['fields']}")
            return "equal" if not diffs else "; ".join(diffs)[:300]

        attempt(f"import {key}", imp)
        if key.startswith("opt_"):
            def keep(v: dict[str, Any]) -> dict[str, Any]:
                return {**v, "demos": [d for d in v["demos"] if d.get("augmented")]}

            flat = "demos" in state
            only = keep(state) if flat else {k: (keep(v) if k != "metadata" else v) for k, v in state.items()}
            attempt(f"import {key}, bootstrapped demos only", lambda only=only: imp(only))
            attempt(f"round trip {key}, bootstrapped demos only", lambda only=only: roundtrip(only))

        attempt(f"round trip DSPy->golden->DSPy {key}", roundtrip)

    with FakeLMServer(sum_responder) as server:
        attempt("LM(model, api_base=...)", lambda: dspex.LM("fake", api_base=server.base_url, api_key="x") and None)
        lm = dspex.LM("fake", base_url=server.base_url, api_key="x", cache=None)
        dev = [dspy.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question") for i in range(5)]
        ours_dev = [dspex.Example(question=f"What is {i} + 1?", answer=str(i + 1)).with_inputs("question") for i in range(5)]
        metric = lambda ex, pred, trace=None: ex.answer == pred.answer  # noqa: E731
        prog = dspex.Predict("question -> answer", lm=lm, adapter="chat")
        attempt("Evaluate(devset, metric, num_threads=4)", lambda: dspex.Evaluate(ours_dev, metric, num_threads=4)(prog).score)
        attempt("Evaluate over a dspy.Example devset", lambda: dspex.Evaluate(dev, metric)(prog).score)
        attempt("dspex.BootstrapFewShot", lambda: dspex.BootstrapFewShot and None)
        attempt("Predict(sig, n=3)", lambda: dspex.Predict("question -> answer", lm=lm, adapter="chat", n=3)(question="What is 1 + 1?"))
        attempt("Predict(sig, temprature=0.5) (a typo)", lambda: dspex.Predict("question -> answer", lm=lm, adapter="chat", temprature=0.5)(question="What is 1 + 1?"))
        attempt("configure(track_usage=True)", lambda: dspex.configure(track_usage=True))
        attempt("Evaluate(..., max_errors=5)", lambda: dspex.Evaluate(ours_dev, metric, max_errors=5) and None)
    width = max(len(n) for n, _ in results)
    for name, outcome in results:
        print(f"{name:<{width}}  {outcome}")


if __name__ == "__main__":
    main()
