"""Acceptance: a plain function that calls the ``openai`` SDK, gated like any program.

The user's code builds its client from the environment (``--dspex-openai-env``); a second run
with ``--dspex-cache=replay`` makes no upstream call and gives the same verdict; a spent budget
stops cleanly as "LM errors"; ``--dspex-compile`` has nothing to optimize and records a baseline;
the upstream key (a canary) appears in no file and no output. With ``-n 2`` and ``-p no:xdist``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer

from .test_plugin import MODES, rows

pytest.importorskip("openai")

CANARY = "sk-canary-7e3b9d1c5a"

PROJECT = '''
import os
import openai
import pytest
import pytest_dspex as dspex

client = openai.OpenAI()            # from the environment, at import: what application code does
aclient = openai.AsyncOpenAI()

def triage(message: str) -> str:
    assert os.environ["OPENAI_API_KEY"] == "sk-dspex-loopback"  # a placeholder: never the upstream key
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    return reply.choices[0].message.content.strip()

async def triage_streamed(message: str) -> dict:
    messages = [{"role": "system", "content": "One word."}, {"role": "user", "content": message}]
    stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    return {"team": text.strip()}

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_dataset(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

@pytest.mark.dspex_program(dspex.program(triage_streamed), name="streamed")
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''


def respond(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    return "billing" if "charged" in text else "technical"


@pytest.fixture
def upstream(server_factory: Any) -> FakeLMServer:
    return server_factory(respond)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    pytester.makefile(".jsonl", **{"data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_openai_env = true\n")
    pytester.makepyfile(test_app=PROJECT)
    return pytester


def run(pytester: pytest.Pytester, upstream: FakeLMServer, *args: str) -> pytest.RunResult:
    opts = [f"--dspex-base-url={upstream.base_url}", "--dspex-model=fake-model", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, *args, timeout=180)


def assert_no_canary(pytester: pytest.Pytester, *results: pytest.RunResult) -> None:
    for path in Path(pytester.path).rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    for result in results:
        assert CANARY not in result.stdout.str() + result.stderr.str()


def table_row(result: pytest.RunResult, program: str) -> list[str]:
    line = next(line for line in result.outlines if re.match(rf"{program}\s+(dataset|per-example)\s", line))
    return line.split()


@pytest.mark.parametrize("mode", list(MODES))
def test_record_then_replay_with_no_upstream_call(project: pytest.Pytester, upstream: FakeLMServer, mode: str) -> None:
    first = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot", "--dspex-report=first.json")
    first.assert_outcomes(passed=11)
    assert upstream.requests == 20  # 10 examples, two programs
    assert all(h["Authorization"] == f"Bearer {CANARY}" for h in upstream.headers)
    recorded = upstream.requests
    replay = run(project, upstream, *MODES[mode], "--dspex-missing-golden=zero-shot", "--dspex-cache=replay")
    replay.assert_outcomes(passed=11)
    assert upstream.requests == recorded  # replay: nothing reached the endpoint
    for program in ("triage", "streamed"):
        row = table_row(replay, program)
        assert row[2] == "1.000" and row[-1] == "pass"
        assert row[-5:-3] == ["10", "10"]  # 10 calls, all 10 cached: counted per example, in both modes
    assert table_row(first, "triage")[-5:-3] == table_row(first, "streamed")[-5:-3] == ["10", "0"]
    assert_no_canary(project, first, replay)


def test_a_spent_budget_stops_cleanly_as_lm_errors(project: pytest.Pytester, upstream: FakeLMServer) -> None:
    result = run(project, upstream, "-p", "no:xdist", "--dspex-missing-golden=zero-shot", "--dspex-cache=off",
                 "--dspex-max-calls=3", "-k", "test_dataset")  # fmt: skip
    result.assert_outcomes(failed=1, deselected=10)
    assert upstream.requests == 3
    result.stdout.fnmatch_lines(["*LM errors: 7 of 10 examples could not be answered (budget: 7)*"])
    assert "openai.RateLimitError" not in result.stdout.str()
    assert_no_canary(project, result)


@pytest.mark.parametrize("mode", list(MODES))
def test_compile_has_nothing_to_optimize_and_records_a_baseline_for_the_paired_gate(
    project: pytest.Pytester, upstream: FakeLMServer, mode: str
) -> None:
    compiled = run(project, upstream, *MODES[mode], "--dspex-compile")
    compiled.assert_outcomes(passed=11)
    compiled.stdout.fnmatch_lines(["golden created: __dspex__/test_app/triage.json*", "*nothing to optimize (no predictors*"])
    assert (project.path / "__dspex__" / "test_app" / "streamed.json").exists()
    gated = run(project, upstream, *MODES[mode], "--dspex-cache=replay")
    gated.assert_outcomes(passed=11)
    gated.stdout.fnmatch_lines(["*triage [[]dataset] vs golden: no change*"])
    upstream.responder = lambda body: "technical"  # the model changed: every billing message now goes wrong
    changed = run(project, upstream, *MODES[mode], "--dspex-cache=off", "-k", "test_dataset")
    assert changed.ret == 1
    changed.stdout.fnmatch_lines(["*triage*regressed*"])
    assert_no_canary(project, compiled, gated, changed)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_rebaseline_says_the_function_was_measured_not_instructions_or_demos(
    project: pytest.Pytester, upstream: FakeLMServer, mode: str
) -> None:
    # trial8 T8-5: a plain function's re-baseline said "re-baselined (same instructions; demos kept)"
    assert run(project, upstream, *MODES[mode], "--dspex-compile", "-k", "test_dataset").ret == 0
    upstream.responder = lambda body: "technical"  # the function's answers changed: billing ones go wrong
    args = ("--dspex-rebaseline=triage", "--dspex-force", "--dspex-cache=off", "-k", "test_dataset")
    again = run(project, upstream, *MODES[mode], *args)
    assert "golden rebaselined" in again.stdout.str(), again.stdout.str()
    line = next(line for line in again.outlines if line.startswith("golden rebaselined: __dspex__/test_app/triage.json"))
    assert "re-baselined (the function as it is now): 10 gate examples x " in line, line
    assert "instructions" not in line and "demos" not in line, line
    same = run(project, upstream, *MODES[mode], *args)  # the function answers as it did: the same outcomes
    same.stdout.fnmatch_lines(["*re-baseline changed nothing (same model and baseline outcomes: 10 gate examples*"])
    assert_no_canary(project, again, same)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_compile_against_a_dead_endpoint_names_its_lm_errors(project: pytest.Pytester, upstream: FakeLMServer, mode: str) -> None:
    # trial8 T8-6: a plain function's compile (its baseline only) said "golden not written: the compile
    # run was over its error budget (100% of the validation examples failed with LM errors …)": no kind,
    # no "connection refused", where a Predict's compile names both
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"--dspex-base-url=http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens there
    result = run(project, upstream, *MODES[mode], "--dspex-compile", "-k", "test_dataset", dead)
    assert result.ret == 1
    out = result.stdout.str()
    assert (
        "compile stopped at its error budget: LM errors: 10 of 10 gate answers could not be answered (lm_unavailable: 10)"
        in out
    ), out
    assert "connection refused" in out and "golden not written (an existing one is kept)" in out
    assert not (project.path / "__dspex__" / "test_app" / "triage.json").exists()


def test_the_endpoint_fixture_and_a_function_that_fails_its_format(project: pytest.Pytester, upstream: FakeLMServer) -> None:
    project.makepyfile(test_more='''
import openai
import pytest

def test_direct(dspex_endpoint):
    with openai.OpenAI(base_url=dspex_endpoint.base_url, api_key="anything") as client:
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "I was charged"}])
    assert reply.choices[0].message.content == "billing"

def two_fields(message):
    return "billing"

@pytest.mark.dspex_program(two_fields, outputs=["team", "priority"])
@pytest.mark.dspex_metric(lambda e, p, t=None: True, threshold=0.5)
def test_wrong_shape(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
''')
    result = run(project, upstream, "-p", "no:xdist", "--dspex-missing-golden=zero-shot", "test_more.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*two_fields returned a string; a string answers one output field*"])


AROUND = '''
import openai
import pytest

client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-app", max_retries=0)  # around the session

def triage(message: str) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    return reply.choices[0].message.content.strip()

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_dataset(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_calls_that_go_around_the_session_are_lm_errors_with_the_way_through(
    pytester: pytest.Pytester, upstream: FakeLMServer, xdist: list[str]
) -> None:
    pytester.makefile(".jsonl", **{"data/dev": rows(4)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n")
    pytester.makepyfile(test_app=AROUND)
    result = run(pytester, upstream, *xdist)
    out = result.stdout.str()
    result.assert_outcomes(failed=1)
    assert "lm_unavailable" in out and "not a low score" in out, out
    assert "below threshold" not in out
    assert "not through pytest-dspex (use --dspex-openai-env or dspex_endpoint): APIConnec" in out
    assert upstream.requests == 0


APP = '''
import openai

client = openai.OpenAI()   # built when conftest.py imports the application, before any test module

def triage(message: str) -> str:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": message}])
    return reply.choices[0].message.content.strip()
'''

APP_TEST = '''
import pytest
from support_app import triage

def team_matches(example, prediction, trace=None):
    return example.team == prediction.team

@pytest.mark.dspex_program(triage, outputs=["team"])
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_dataset(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


@pytest.mark.parametrize("mode", list(MODES))
def test_an_application_imported_by_conftest_goes_through_the_endpoint(
    pytester: pytest.Pytester, upstream: FakeLMServer, server_factory: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """trial5 T5-1: a conftest.py that imports the application builds its client before pytest_configure;
    it went to OPENAI_BASE_URL directly (a replay run called the LM with the real key, counted 0 calls, passed)."""
    direct = server_factory(respond)  # the provider the user's environment names
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", direct.base_url)
    pytester.makefile(".jsonl", **{"data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_openai_env = true\n"
                     "dspex_missing_golden = zero-shot\n")  # fmt: skip
    pytester.makepyfile(support_app=APP, conftest="import support_app  # noqa: F401\n", test_app=APP_TEST)
    first = run(pytester, upstream, *MODES[mode])
    first.assert_outcomes(passed=1)
    assert direct.requests == 0, "the application's client went around the session"
    assert upstream.requests == 10
    assert table_row(first, "triage")[-5:-3] == ["10", "0"]
    replay = run(pytester, upstream, *MODES[mode], "--dspex-cache=replay")
    replay.assert_outcomes(passed=1)
    assert direct.requests == 0 and upstream.requests == 10
    assert table_row(replay, "triage")[-5:-3] == ["10", "10"]
    assert_no_canary(pytester, first, replay)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_refusal_the_function_cannot_handle_is_said_with_its_error(
    project: pytest.Pytester, server_factory: Any, mode: str
) -> None:
    """trial5 T5-4: the endpoint relays a refusal (content null); the function's `.strip()` raised and the
    verdict said only "program raised on 10 of 10 examples: AttributeError: 'NoneType' object …", nothing
    of the model refusing. Still the program's error (it crashes on a refusal), now said after it."""
    from pytest_dspex.testing.fake_server import Faults

    refusing = server_factory(respond, faults=Faults(refusal=1.0))
    result = run(project, refusing, *MODES[mode], "--dspex-missing-golden=zero-shot", "-k", "test_dataset")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*program raised on 10 of 10 examples: AttributeError: 'NoneType' object has no attribute "
                                 "'strip' (it raised after the model refused this example's request: *can't help with that*"])  # fmt: skip
    assert_no_canary(project, result)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_one_draw_baseline_is_what_the_compile_runs_gate_reads(
    project: pytest.Pytester, upstream: FakeLMServer, mode: str
) -> None:
    # the example's compile asked the embedded model twice for each of route's 8 examples: once for
    # the baseline (under a rollout id of its own), once more for the same run's gate
    compiled = run(project, upstream, *MODES[mode], "--dspex-compile", "--dspex-baseline-draws=1", "-k", "test_dataset")
    assert compiled.ret == 0 and compiled.parseoutcomes()["passed"] == 1
    assert upstream.requests == 10  # one pass over the 10 gate examples, not two
    gated = run(project, upstream, *MODES[mode], "--dspex-cache=replay", "-k", "test_dataset")
    assert gated.ret == 0 and gated.parseoutcomes()["passed"] == 1
    gated.stdout.fnmatch_lines(["*triage [[]dataset] vs golden: no change*"])
    assert upstream.requests == 10
