"""A DSPy program (``dspy.LM(..., api_base=...)``, through LiteLLM and the ``openai`` SDK) behind the
loopback endpoint: recorded, replayed with no upstream call, stopped by the budget, attributed per
example, and gated as a plain function by the plugin.

Runs in ``tox -e dspy`` (``DSPEX_REQUIRE_DSPY=1``: a missing DSPy fails there); skipped elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

try:
    import dspy
except ImportError:
    if os.environ.get("DSPEX_REQUIRE_DSPY"):
        raise
    pytest.skip("DSPy is not installed (tox -e dspy runs the interop tests)", allow_module_level=True)

import pytest_dspex as dspex
from pytest_dspex.programs.loopback import LoopbackEndpoint
from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder

CANARY = "sk-canary-dspy-0b8e6f"
MESSAGES = [f"I was charged twice, case {i}" if i % 2 else f"the app crashes, case {i}" for i in range(6)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "true")  # DSPy would fetch model metadata from the web


@pytest.fixture
def upstream() -> Any:
    with FakeLMServer(triage_responder) as server:
        yield server


def session_lm(upstream: FakeLMServer, tmp_path: Path, mode: str = "on", **kwargs: Any) -> dspex.LM:
    cache = dspex.ResponseCache(tmp_path / "cache", mode)  # type: ignore[arg-type]
    return dspex.LM("fake-model", base_url=upstream.base_url, api_key=CANARY, cache=cache, backoff_base=0.01, **kwargs)


def dspy_triage(base_url: str) -> Any:
    lm = dspy.LM("openai/gpt-4o-mini", api_base=base_url, api_key="not-the-key", cache=False, num_retries=0)
    predict = dspy.Predict("message -> team")
    predict.set_lm(lm)

    def triage(message: str) -> str:
        return str(predict(message=message).team)

    return triage


def examples() -> list[dspex.Example]:
    return [
        dspex.Example(message=m, team="billing" if "charged" in m else "technical").with_inputs("message") for m in MESSAGES
    ]


def evaluate(triage: Any) -> dspex.EvaluationResult:
    program = dspex.program(triage, outputs=["team"])
    return dspex.Evaluate(examples(), metric=lambda e, p, t=None: e.team == p.team, concurrency=3)(program)


def test_record_then_replay_a_dspy_program_with_no_upstream_call(upstream: FakeLMServer, tmp_path: Path) -> None:
    lm = session_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm) as endpoint:
        recorded = evaluate(dspy_triage(endpoint.base_url))
    lm.close()
    assert recorded.score == 1.0
    assert upstream.requests == len(MESSAGES)
    assert [r.usage["calls"] for r in recorded.records] == [1] * len(MESSAGES)  # attributed per example
    assert all(h["Authorization"] == f"Bearer {CANARY}" for h in upstream.headers)
    replay = session_lm(upstream, tmp_path, "replay")
    with LoopbackEndpoint(replay) as endpoint:
        replayed = evaluate(dspy_triage(endpoint.base_url))
    replay.close()
    assert upstream.requests == len(MESSAGES)  # nothing reached the upstream
    assert replayed.score == recorded.score
    assert [r.usage["cache_hits"] for r in replayed.records] == [1] * len(MESSAGES)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes()


def test_a_spent_budget_is_the_examples_lm_error(upstream: FakeLMServer, tmp_path: Path) -> None:
    lm = session_lm(upstream, tmp_path, "off", budget=dspex.Budget(max_calls=2))
    with LoopbackEndpoint(lm) as endpoint:
        result = evaluate(dspy_triage(endpoint.base_url))
    lm.close()
    assert upstream.requests == 2
    assert result.errors_by_kind == {"budget": len(MESSAGES) - 2}


def test_a_dspy_module_wrapped_whole_is_a_program(upstream: FakeLMServer, tmp_path: Path) -> None:
    """Trial 9 (T9-2): README's "wrap DSPy code with dspex.program(module, outputs=[...])" with the
    module itself: its input fields were unknown ("pass input_keys=[...]" at the marker) and the
    dspy.Prediction it returns was a ``ConfigError`` on every example ("Predict returned Prediction; a
    program function returns ... a Prediction"), after its LM calls were made."""

    class Route(dspy.Module):
        def __init__(self, predict: Any) -> None:
            super().__init__()
            self.predict = predict

        def forward(self, message: str) -> Any:
            return self.predict(message=message)

    lm = session_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm) as endpoint:
        predict = dspy.Predict("message -> team")
        predict.set_lm(dspy.LM("openai/gpt-4o-mini", api_base=endpoint.base_url, api_key="x", cache=False, num_retries=0))
        for module in (predict, Route(predict)):
            program = dspex.program(module, outputs=["team"])
            assert program.input_keys == ("message",)
            result = evaluate(module)
            assert result.score == 1.0, [r.error for r in result.records]
            assert [r.prediction["team"] for r in result.records] == [e.team for e in examples()]
    lm.close()


PROJECT = '''
import os
import dspy
import pytest

lm = dspy.LM("openai/gpt-4o-mini", api_base=os.environ["OPENAI_BASE_URL"], cache=False, num_retries=0)
predict = dspy.Predict("message -> team")
predict.set_lm(lm)

def triage(message):
    return predict(message=message).team

@pytest.mark.dspex_program(triage, outputs=["team"])
@pytest.mark.dspex_metric(lambda example, prediction, trace=None: example.team == prediction.team, threshold=0.8)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


def _project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """A user's project: ``source`` as its test file, the messages as its dataset, the canary as its key."""
    import json

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    rows = [{"message": m, "team": "billing" if "charged" in m else "technical"} for m in MESSAGES]
    pytester.makefile(".jsonl", **{"data/dev": "\n".join(json.dumps(r) for r in rows) + "\n"})
    pytester.makepyfile(test_app=source)


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_the_plugin_gates_a_dspy_program_and_replays_it(
    pytester: pytest.Pytester, upstream: FakeLMServer, monkeypatch: pytest.MonkeyPatch, mode: list[str]
) -> None:
    _project(pytester, monkeypatch, PROJECT)
    opts = [f"--dspex-base-url={upstream.base_url}", "--dspex-model=fake-model", "--dspex-openai-env", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*opts, *mode, "--dspex-compile", timeout=300)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*nothing to optimize*"])
    recorded = upstream.requests
    assert recorded >= len(MESSAGES)
    second = pytester.runpytest_subprocess(*opts, *mode, "--dspex-cache=replay", timeout=300)
    second.assert_outcomes(passed=1)
    assert upstream.requests == recorded
    second.stdout.fnmatch_lines(["*no change*"])
    for output in (first, second):
        assert CANARY not in output.stdout.str() + output.stderr.str()
    for path in Path(pytester.path).rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


WRAPPED = '''
import os
import dspy
import pytest
import pytest_dspex as dspex

predict = dspy.Predict("message -> team")
predict.set_lm(dspy.LM("openai/gpt-4o-mini", api_base=os.environ["OPENAI_BASE_URL"], cache=False, num_retries=0))

@pytest.mark.dspex_program(dspex.program(predict, outputs=["team"]), name="triage")
@pytest.mark.dspex_metric(lambda example, prediction, trace=None: example.team == prediction.team, threshold=0.8)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_the_plugin_gates_a_dspy_module_wrapped_whole(
    pytester: pytest.Pytester, upstream: FakeLMServer, monkeypatch: pytest.MonkeyPatch, mode: list[str]
) -> None:
    """T9-2 through pytest: no ``input_keys=``, the module's ``dspy.Prediction`` is its answer."""
    _project(pytester, monkeypatch, WRAPPED)
    result = pytester.runpytest_subprocess(f"--dspex-base-url={upstream.base_url}", "--dspex-model=fake-model",
                                           "--dspex-openai-env", "--dspex-missing-golden=zero-shot", "-p",
                                           "no:cacheprovider", *mode, timeout=300)  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*triage*dataset*1.000*pass*"])
    assert upstream.requests == len(MESSAGES)


@pytest.mark.filterwarnings("ignore:Item.*ReadOnly. qualifier:UserWarning")  # LiteLLM's types, on first use
def test_litellm_records_and_replays_through_the_endpoint(upstream: FakeLMServer, tmp_path: Path) -> None:
    """LiteLLM on its own (DSPy's former client; installed with DSPy): ``litellm.completion(api_base=...)``."""
    litellm = pytest.importorskip("litellm")

    def triage(message: str) -> str:
        reply = litellm.completion(model="openai/gpt-4o-mini", api_base=endpoint.base_url, api_key="not-the-key",
                                   messages=[{"role": "user", "content": f"Message: {message}"}], num_retries=0)  # fmt: skip
        return str(reply.choices[0].message.content).strip()

    lm = session_lm(upstream, tmp_path)
    with LoopbackEndpoint(lm) as endpoint:
        recorded = evaluate(triage)
    lm.close()
    assert recorded.score == 1.0 and upstream.requests == len(MESSAGES), [r.error or r.prediction for r in recorded.records]
    assert [r.usage["calls"] for r in recorded.records] == [1] * len(MESSAGES)
    replay = session_lm(upstream, tmp_path, "replay")
    with LoopbackEndpoint(replay) as endpoint:
        replayed = evaluate(triage)
    replay.close()
    assert upstream.requests == len(MESSAGES) and replayed.score == 1.0
    assert [r.usage["cache_hits"] for r in replayed.records] == [1] * len(MESSAGES)
