"""Every LM call of a run is in its spend: a compile's fresh baseline draws and a re-baseline's
passes are counted (new-user trial, finding 2).

The compile's line said ``compile spent 10 LM calls`` while the server answered 36 more (the
baseline's draws), and a ``--dspex-rebaseline`` run said ``every answer came from the LM cache ...
the endpoint was not asked`` after it had asked the endpoint 26 times. The fake server counts the
requests it answers: the printed figures must add up to it.
"""

from __future__ import annotations

import re

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer

from .test_infra_verdicts import TESTS, project
from .test_plugin import MODES


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


def spent(out: str) -> int:
    """Requests the run's spend line says reached the endpoint: its calls less the cached ones."""
    m = re.search(r"dspex LM spend in this run \(gates and [a-z-]+\): (\d+) LM calls \((\d+) cached\)", out)
    assert m, out
    return int(m[1]) - int(m[2])


def compile_project(pytester: pytest.Pytester) -> None:
    project(pytester, n=12)
    pytester.makefile(".jsonl", **{"data/train": (pytester.path / "data/dev.jsonl").read_text()})
    pytester.makepyfile(test_triage=TESTS.replace('name="triage")', 'name="triage", trainset="data/train.jsonl")'))


def run(pytester: pytest.Pytester, server: FakeLMServer, *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "-p", "no:cacheprovider", "-k", "not each"]
    return pytester.runpytest_subprocess(*opts, *args, timeout=300)


def test_a_compiles_baseline_draws_are_in_its_spend(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]) -> None:
    compile_project(pytester)
    result = run(pytester, server, *mode, "--dspex-compile", "--dspex-baseline-draws=3")
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    compiled = re.search(r"compile spent (\d+) LM calls \((\d+) cached\)", out)
    assert compiled, out
    # 12 gate examples x at least 2 draws are the baseline alone: the compile's figure holds them
    assert int(compiled[1]) - int(compiled[2]) >= 24
    assert spent(out) == server.requests  # every request the endpoint answered, none counted twice


def test_a_rebaseline_counts_its_calls_and_prints_its_spend(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str]) -> None:
    compile_project(pytester)
    assert run(pytester, server, "-p", "no:xdist", "--dspex-compile").ret == 0
    source = (pytester.path / "test_triage.py").read_text()
    edited = source.replace("Route a customer message", "Route each customer message")
    pytester.makepyfile(test_triage=edited)
    before = server.requests
    result = run(pytester, server, *mode, "--dspex-rebaseline=triage")
    out = result.stdout.str()
    assert result.ret == 0, out
    asked = server.requests - before
    assert asked >= 12  # the edited instructions had no cached answer: the endpoint was asked
    assert "the endpoint was not asked" not in out
    assert re.search(r"golden rebaselined: .*; re-baseline spent \d+ LM calls", out), out
    assert spent(out) == asked
