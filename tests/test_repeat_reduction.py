"""pass^k and pass@k: ``--dspex-repeats N`` with a reduction (``mean``, ``all``, ``any``) that makes an
example's score from its draws; the gate, the flaky list and the reports use the reduced score."""

from __future__ import annotations

import collections
import json
import re
from typing import Any

import pytest

import pytest_dspex as dspex

from .test_plugin import MODES

# four examples: case 0 and 1 always right, case 2 right on its first draw only, case 3 never right
DATA = "\n".join(
    json.dumps({"message": f"{'I was charged twice' if i % 2 else 'the app crashes'}, case {i}", "team": "billing" if i % 2 else "technical"})
    for i in range(4)
) + "\n"  # fmt: skip

TEST = '''
import pytest
import pytest_dspex as dspex

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=0.0 MARKER)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


def _sometimes_right() -> Any:
    seen: collections.Counter[int] = collections.Counter()

    def respond(body: dict[str, Any]) -> str:
        text = str(body["messages"][-1]["content"])
        case = int(re.findall(r"case (\d+)", text)[-1])
        seen[case] += 1
        right = "billing" if case % 2 else "technical"
        wrong = "technical" if case % 2 else "billing"
        answer = right if case < 2 or (case == 2 and seen[case] == 1) else wrong
        system = str(body["messages"][0]["content"])
        return f"[[ ## team ## ]]\n{answer}\n\n[[ ## completed ## ]]" if "[[ ## " in system else f" {answer}"

    return respond


def _run(pytester, server_factory, monkeypatch, mode: list[str], *args: str, marker: str = "") -> dict[str, Any]:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(_sometimes_right())
    pytester.makefile(".jsonl", **{"data/dev": DATA})
    pytester.makepyfile(test_reduce=TEST.replace(" MARKER", marker))
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-temperature=0.7",
        "--dspex-missing-golden=zero-shot", "--dspex-report=report.json", *args, *mode,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-3000:]
    report = json.loads((pytester.path / "report.json").read_text())
    (row,) = report["programs"]
    return {"row": row, "out": result.stdout.str(), "requests": server.requests}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize(("reduction", "score"), [("mean", (1 + 1 + 1 / 3 + 0) / 4), ("all", 0.5), ("any", 0.75)])
def test_repeats_reduced(pytester, server_factory, monkeypatch, mode, reduction, score):
    got = _run(pytester, server_factory, monkeypatch, mode, "--dspex-repeats=3", f"--dspex-repeat-reduction={reduction}")
    assert got["requests"] == 12  # four examples, three draws each
    assert got["row"]["score"] == pytest.approx(score)
    assert got["row"]["repeat_reduction"] == reduction
    flaky_line = [line for line in got["out"].splitlines() if "flaky example" in line]
    assert flaky_line and "1 flaky example(s)" in flaky_line[0], got["out"][-2000:]
    if reduction == "all":
        assert "pass^3" in flaky_line[0]


def test_marker_sets_repeats_and_reduction(pytester, server_factory, monkeypatch):
    got = _run(pytester, server_factory, monkeypatch, MODES["no-xdist"], marker=', repeats=3, repeat_reduction="any"')
    assert got["requests"] == 12 and got["row"]["score"] == pytest.approx(0.75)


def test_marker_rejects_an_unknown_reduction(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory(_sometimes_right())
    pytester.makefile(".jsonl", **{"data/dev": DATA})
    pytester.makepyfile(test_reduce=TEST.replace(" MARKER", ', repeat_reduction="median"'))
    result = pytester.runpytest_subprocess(f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "-p", "no:xdist")
    assert result.ret != 0
    assert "repeat_reduction='median' must be 'mean', 'all' (pass^k) or 'any' (pass@k)" in result.stdout.str()


def test_evaluate_reduces_repeats_in_python(server_factory, make_lm):
    server = server_factory(_sometimes_right())
    lm = make_lm(server, cache=None, temperature=0.7)
    devset = [dspex.Example(**json.loads(line)).with_inputs("message") for line in DATA.splitlines()]
    program = dspex.Predict("message -> team", lm=lm)
    result = dspex.Evaluate(devset, lambda e, p, t=None: e.team == p.team, repeats=3, repeat_reduction="all")(program)
    assert result.score == pytest.approx(0.5)
    assert [r.repeats for r in result.records][2] == [1.0, 0.0, 0.0]
    assert result.records[2].to_json()["reduction"] == "all"
    with pytest.raises(ValueError, match="repeat_reduction must be one of mean, all, any"):
        dspex.Evaluate(devset, lambda e, p, t=None: True, repeat_reduction="best")
