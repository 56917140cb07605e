"""``--dspex-estimate``: collection and cache lookups, no LM call; per program what a run would cost."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .conftest import triage_examples
from .test_plugin import MODES

TEST = '''
import pytest
import pytest_dspex as dspex

triage = dspex.Predict("message -> team")

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, name="triage", trainset="data/dev.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl", limit=LIMIT)
'''


def _project(pytester: pytest.Pytester, limit: int | None) -> None:
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(e.toDict()) for e in triage_examples(10)) + "\n"})
    pytester.makepyfile(test_estimate=TEST.replace("LIMIT", repr(limit)))


def _table(out: str) -> dict[str, Any]:
    line = next(line for line in out.splitlines() if line.startswith("triage "))
    cells = line.split()
    total = re.search(r"a run would make (\d+) LM calls, about ([\d,]+) tokens", out)
    assert total is not None, out[-2000:]
    return {"examples": int(cells[2]), "cached": int(cells[3]), "calls": int(cells[4]), "tokens": int(cells[5].replace(",", "")),
            "total_calls": int(total.group(1))}  # fmt: skip


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_estimate_makes_no_call_and_matches_the_run(pytester, server_factory, monkeypatch, mode):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory()
    args = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache-dir=cache",
            "--dspex-missing-golden=zero-shot", *mode]  # fmt: skip
    _project(pytester, 4)  # half the cache: 4 of the 10 examples answered once
    assert pytester.runpytest_subprocess(*args).ret == 0
    assert server.requests == 4
    _project(pytester, None)
    estimate = pytester.runpytest_subprocess(*args, "--dspex-estimate", "--dspex-max-calls=5")
    assert estimate.ret == 0, estimate.stdout.str()[-3000:]
    assert server.requests == 4  # no LM call
    out = estimate.stdout.str()
    got = _table(out)
    assert got == {"examples": 10, "cached": 4, "calls": 6, "tokens": got["tokens"], "total_calls": 6}
    assert "over the budget: 6 calls estimated, --dspex-max-calls=5" in out
    assert "no price known for this model" in out
    real = pytester.runpytest_subprocess(*args, "--dspex-report=report.json")
    assert real.ret == 0
    assert server.requests == 4 + 6  # the calls the estimate named
    (row,) = json.loads((pytester.path / "report.json").read_text())["programs"]
    tokens = row["usage"]["prompt_tokens"] + row["usage"]["completion_tokens"]
    assert abs(got["tokens"] - tokens) <= 0.1 * tokens, (got["tokens"], tokens)  # learned from the cached answers


def test_estimate_prices_a_known_model_and_plans_a_compile(pytester, server_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = server_factory()
    _project(pytester, None)
    result = pytester.runpytest_subprocess(
        f"--dspex-base-url={server.base_url}", "--dspex-model=gpt-4o-mini", "--dspex-cache=off", "--dspex-estimate",
        "--dspex-compile", "--dspex-candidates=4", "-p", "no:xdist",
    )  # fmt: skip
    assert result.ret == 0 and server.requests == 0
    out = result.stdout.str()
    assert re.search(r"triage\s+dataset\s+10\s+0\s+10\s+[\d,]+\s+\$0\.\d{4}", out), out[-2000:]
    assert "triage: compile plan: up to 10 teacher runs (10 training examples x 1 rounds), 4 candidates x 10 selection examples" in out
    assert not (pytester.path / "__dspex__").exists()  # nothing compiled, no golden written
