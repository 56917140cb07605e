"""Each registered optimizer (``--dspex-optimizer``): what one compile spends, by kind of LM call.

    python bench/optimizers.py              # every name in pytest_dspex.optimize.registry.OPTIMIZERS
    python bench/run.py --only optimizers

A loopback fake endpoint answers a billing/technical router that needs demos: with none it answers
"unsure"; with demos it is right on a case unless ``case % 5 == 0`` and it has fewer than 4 demos
(so more demos help). 24 training examples (cases 100-123), a valset of 30 (cases 200-229), a gate
set of 20 (cases 0-19): a request is counted by the case it asks about — a training case is a
teacher run (selection is on the valset), a valset case the selection, a gate case the baseline.
Counts are the requests the server received (exact; valid on a busy machine). No cache.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _examples(n: int, offset: int) -> list[Any]:
    import pytest_dspex as dspex

    return [
        dspex.Example(message=f"case {i}: " + ("I was charged twice" if i % 2 else "the app crashes"),
                      team="billing" if i % 2 else "technical").with_inputs("message")
        for i in range(offset, offset + n)
    ]  # fmt: skip


class _Router:
    """The endpoint's answers, and the cases it was asked about by kind."""

    def __init__(self) -> None:
        self.asked = {"teacher": 0, "selection": 0, "baseline": 0}

    def __call__(self, body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        last = text.rsplit("Message:", 1)[-1]
        case = int(re.search(r"case (\d+)", last).group(1))  # type: ignore[union-attr]
        kind = "teacher" if 100 <= case < 200 else "selection" if case >= 200 else "baseline"
        self.asked[kind] += 1
        demos = text.count("Message:") - 1
        if demos == 0:
            return " unsure"
        if case % 5 == 0 and demos < 4:
            return " other"
        return " billing" if "charged" in last else " technical"


def measure(name: str) -> dict[str, Any]:
    """One compile with the optimizer ``name``: calls by kind, the choice, its demos."""
    import pytest_dspex as dspex
    from pytest_dspex.optimize.compile import CompileSettings, compile_program
    from pytest_dspex.testing.fake_server import FakeLMServer

    class Triage(dspex.Signature):
        """Route a customer message to the team that should handle it."""

        message: str = dspex.InputField()
        team: str = dspex.OutputField()

    def team_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
        return bool(example.team == prediction.team)

    router = _Router()
    server = FakeLMServer(router).start()
    lm = dspex.LM("fake", base_url=server.base_url, api_key="bench", cache=None, retries=0)
    folder = Path(tempfile.mkdtemp(prefix="dspex-bench-optimizers-"))
    try:
        with dspex.context(lm=lm):
            compile_program(
                dspex.Predict(Triage), name="triage", metric=team_matches, trainset=_examples(24, 100),
                valset=_examples(30, 200), gateset=_examples(20, 0), input_keys=("message",),
                path=folder / "__dspex__" / "bench" / "triage.json",
                settings=CompileSettings(optimizer=name, labeled_demos=4, baseline_draws=1, calibrate=False),
            )  # fmt: skip
        golden = json.loads((folder / "__dspex__" / "bench" / "triage.json").read_text())
    finally:
        lm.close()
        server.stop()
    demos = golden["predictors"]["self"]["demos"]
    return {
        "optimizer": name,
        **router.asked,
        "total": sum(router.asked.values()),
        "candidates": len(golden["optimizer"]["candidates"]),
        "chosen": golden["selection"]["chosen"],
        "selection_score": golden["selection"]["score"],
        "baseline_score": golden["baseline"]["score"],
        "demos": f"{sum(1 for d in demos if not d['bootstrapped'])} labeled, {sum(1 for d in demos if d['bootstrapped'])} bootstrapped",
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| optimizer | teacher calls | selection calls | baseline calls | total | candidates | chosen | selection score | baseline score | demos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['teacher']} | {r['selection']} | {r['baseline']} | {r['total']} | {r['candidates']} | "
            f"{r['chosen']} | {r['selection_score']:.3f} | {r['baseline_score']:.3f} | {r['demos']} |"
        )
    return lines


def rows() -> list[dict[str, Any]]:
    from pytest_dspex.optimize.registry import OPTIMIZERS

    return [measure(name) for name in sorted(OPTIMIZERS)]


def section(ctx: Any) -> list[str]:
    """bench/run.py's section: the table; the labeled optimizer makes no teacher call."""
    found = rows()
    for r in found:
        if r["optimizer"] == "labeled":
            ctx.target("--dspex-optimizer=labeled: teacher calls in a compile", str(r["teacher"]), "0", r["teacher"] == 0)
    return [*table(found), "", "Calls are the requests the fake server received, by the case each asked about (exact)."]


if __name__ == "__main__":
    print("\n".join(table(rows())))
