"""BootstrapFewShot: LM calls and demos, pytest-dspex vs DSPy 3.4.1 on the same data and endpoint.

    python bench/bootstrap_calls.py                    # DSPy from bench/.dspy-venv (or DSPEX_BENCH_DSPY_VENV)
    python bench/bootstrap_calls.py --accuracy 0.5 --n 50

A loopback fake endpoint (``pytest_dspex.testing.fake_server.FakeLMServer``, 50 ms a call) answers a
billing/technical router; the teacher is right on training example ``i`` iff
``floor((i + 1) * a) > floor(i * a)`` (accuracy ``a``, passes spread evenly, the first at
``i = ceil(1 / a) - 1``; at 0.05, 2 of 50 pass and both walk the whole trainset). Both sides: ``max_bootstrapped_demos=4, max_labeled_demos=16``, no cache,
a ``Predict("message -> team")`` and a two-step Module (``draft: message -> team``, then
``check: message, draft -> team``). Calls are the requests the server received (exact, valid on a
busy machine); wall times are rough on a shared machine. The Module's ``check`` step has a field
(``draft``) no training example holds: DSPy gives it labeled demos without it, pytest-dspex none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
DSPY_VENV = Path(os.environ.get("DSPEX_BENCH_DSPY_VENV", HERE / ".dspy-venv"))

CASE = r'''
import json, os, sys, tempfile, time
side, url, n, program = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp())
if side == "dspy":
    import dspy as lib
    lm = lib.LM("openai/fake", api_base=url, api_key="bench", cache=False, num_retries=0)
    lib.configure(lm=lm)
    opt_cls = lib.BootstrapFewShot
    kwargs = {}
else:
    import pytest_dspex as lib
    from pytest_dspex.optimize import BootstrapFewShot as opt_cls
    lib.configure(lm=lib.LM("fake", base_url=url, api_key="bench", cache=None, retries=0, concurrency=16))
    kwargs = {"concurrency": 16}
train = [lib.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                     team="billing" if i % 2 else "technical").with_inputs("message") for i in range(n)]

def metric(example, prediction, trace=None):
    return example.team == prediction.team

class TwoStep(lib.Module):
    def __init__(self):
        super().__init__()
        self.draft = lib.Predict("message -> team")
        self.check = lib.Predict("message, draft -> team")
    def forward(self, message):
        return self.check(message=message, draft=self.draft(message=message).team)

student = lib.Predict("message -> team") if program == "predict" else TwoStep()
opt = opt_cls(metric=metric, max_bootstrapped_demos=4, max_labeled_demos=16, **kwargs)
t0 = time.perf_counter()
compiled = opt.compile(student, trainset=train)
wall = time.perf_counter() - t0
demos = {name: [(d["message"].split(":")[0], bool(d.get("augmented"))) for d in p.demos] for name, p in compiled.named_predictors()}
print(json.dumps({"wall_s": wall, "demos": demos, "waits": getattr(getattr(opt, "report", None), "waits", None)}))
'''


def passes(i: int, accuracy: float) -> bool:
    return math.floor((i + 1) * accuracy) > math.floor(i * accuracy)


def responder(accuracy: float):
    def respond(body: dict) -> str:
        last = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
        last = last.rsplit("Message:", 1)[-1].rsplit("[[ ## message ## ]]", 1)[-1]
        i = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
        team = ("billing" if "charged" in last else "technical") if passes(i, accuracy) else "other"
        system = str(body["messages"][0].get("content", ""))
        if "[[ ## " in system:
            return f"[[ ## team ## ]]\n{team}\n\n[[ ## completed ## ]]"
        return json.dumps({"team": team}) if "JSON" in system else f" {team}"

    return respond


def run(python: str, side: str, url: str, n: int, program: str) -> dict:
    out = subprocess.run([python, "-c", CASE, side, url, str(n), program], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(python: str, side: str, accuracy: float, n: int, program: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from pytest_dspex.testing.fake_server import FakeLMServer

    server = FakeLMServer(responder(accuracy), latency=0.05)
    server.keep_bodies = False
    server.start()
    try:
        res = run(python, side, server.base_url, n, program)
        res["calls"] = server.requests
    finally:
        server.stop()
    return res


def median_of(python: str, side: str, accuracy: float, n: int, program: str, repeats: int) -> dict:
    """``repeats`` fresh runs of one side; calls and wall time are their medians (the same on both sides)."""
    runs = [measure(python, side, accuracy, n, program) for _ in range(repeats)]
    mid = sorted(runs, key=lambda r: (r["calls"], r["wall_s"]))[len(runs) // 2]
    return {**mid, "calls": statistics.median(r["calls"] for r in runs), "waits_all": [r.get("waits") for r in runs],
            "calls_all": [r["calls"] for r in runs], "wall_s": statistics.median(r["wall_s"] for r in runs)}  # fmt: skip


def rows(dspy: str | None, accuracies: list[float], n: int, repeats: int = 3) -> list[dict]:
    """One dict per (program, accuracy): our and DSPy's calls, wall times and demo comparison."""
    out = []
    for program in ("predict", "module"):
        for acc in accuracies:
            ours = median_of(sys.executable, "dspex", acc, n, program, repeats)
            theirs = median_of(dspy, "dspy", acc, n, program, repeats) if dspy else None
            row = {"program": program, "accuracy": acc, "ours": ours, "theirs": theirs}
            if theirs is not None:
                row["same_boot"] = all([d for d in ours["demos"][k] if d[1]] == [d for d in theirs["demos"][k] if d[1]] for k in ours["demos"])
                row["labeled"] = ", ".join(
                    f"{k}: " + ("same" if (a := [d for d in ours["demos"][k] if not d[1]]) == (b := [d for d in theirs["demos"][k] if not d[1]])
                                else f"{len(a)} vs DSPy's {len(b)}")
                    for k in ours["demos"]
                )  # fmt: skip
            out.append(row)
    return out


def table(found: list[dict]) -> list[str]:
    lines = ["| program | accuracy | pytest-dspex calls | DSPy calls | wall (ours / DSPy) | same bootstrapped demos | labeled demos per predictor |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in found:
        ours, theirs = r["ours"], r["theirs"]
        waits = f"; waits {', '.join(map(str, ours['waits_all']))}" if None not in ours["waits_all"] else ""
        if theirs is None:
            lines.append(f"| {r['program']} | {r['accuracy']} | {ours['calls']:g} ({', '.join(map(str, ours['calls_all']))}{waits}) | - | {ours['wall_s']:.2f} s | - | - |")
            continue
        ratio = ours["wall_s"] / theirs["wall_s"]
        lines.append(f"| {r['program']} | {r['accuracy']} | {ours['calls']:g} ({', '.join(map(str, ours['calls_all']))}{waits}) | {theirs['calls']:g} | "
                     f"{ours['wall_s']:.2f} s / {theirs['wall_s']:.2f} s ({ratio:.3f}x) | {r['same_boot']} | {r['labeled']} |")  # fmt: skip
    return lines


def section(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    """bench/run.py's section: the table, a target per row (calls <= DSPy's), wall time at 0.15."""
    found = rows(ctx.dpy, [0.15, 0.9] if ctx.fast else [0.05, 0.15, 0.5, 0.9], 50, 1 if ctx.fast else 3)
    for r in found:
        if r["theirs"] is None:
            continue
        ours, theirs = r["ours"]["calls"], r["theirs"]["calls"]
        ctx.target(f"BootstrapFewShot {r['program']}, accuracy {r['accuracy']}: calls (median of runs)", f"{ours:g} (DSPy {theirs:g})", "≤ DSPy's", ours <= theirs)
        if r["accuracy"] == 0.15:
            ratio = r["ours"]["wall_s"] / r["theirs"]["wall_s"]
            ctx.target(f"BootstrapFewShot {r['program']}, accuracy 0.15: wall time", f"{ratio:.3f}x DSPy's", "≤ 0.10x", ratio <= 0.10)
    return [*table(found), "", "Each side: the median of its fresh runs (3 on a full run; our calls per run in brackets, with the times",
            "our window waited for answers: each wait is one teacher run, a 50 ms call for the Predict and two for the Module). Calls are the",
            "requests the fake server received (exact); wall times are rough on a busy machine."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accuracy", type=float, nargs="*", default=[0.05, 0.15, 0.5, 0.9])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--no-dspy", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dspy = None if args.no_dspy else str(DSPY_VENV / "bin" / "python")
    print("\n".join(table(rows(dspy, args.accuracy, args.n, args.repeats))))


if __name__ == "__main__":
    main()
