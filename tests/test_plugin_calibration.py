"""Calibrated classifiers through the pytest layer: ``pytest --dspex-compile`` then a normal run.

A user's project (a 3-intent classifier, a trainset and a dev set in JSONL) is run by pytest in a
subprocess against an in-test HTTP endpoint (``BiasedServer``) that answers like a small model with
a label bias: the first answer token's alternatives always favour ``lost`` strongly, with a weaker
lift for the true label, so the text it writes is ``lost card`` for every input. It sends
``top_logprobs`` (OpenAI chat layout) only when the request asked for them, and only if it is an
endpoint that has them at all. Without demos it does not know the labels (answers ``unsure``), so
the compile has to choose a candidate with demos.

Uncalibrated, every candidate scores 1/3 on the dev set (4 of 12 messages are about a card);
calibrated, the bias is divided out and the dev set scores 1.0.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from pytest_dspex.programs.calibration import TOP_LOGPROBS
from pytest_dspex.testing.fake_server import FakeLMServer

from .test_calibration import FIRST_TOKEN, LABELS, SHOWN, messages, true_label

MODES = {"xdist": ["-n", "2"], "no-xdist": ["-p", "no:xdist"]}
GOLDEN = "__dspex__/test_intent/intent.json"

TEST_FILE = '''
from typing import Literal

import pytest
import pytest_dspex as dspex


class Intent(dspex.Signature):
    """Classify the message by intent."""

    message: str = dspex.InputField()
    intent: Literal["lost_card", "check_balance", "transfer_money"] = dspex.OutputField()


intent = dspex.Predict(Intent)


def intent_matches(example, prediction, trace=None):
    return example.intent == prediction.intent


@pytest.mark.dspex_program(intent, name="intent", trainset="data/train.jsonl", valset="data/dev.jsonl")
@pytest.mark.dspex_metric(intent_matches, threshold=THRESHOLD)
def test_intent(dspex_evaluate):
    result = dspex_evaluate("data/dev.jsonl")
    assert result.n == 12
'''


def rows(per_label: int, start: int) -> str:
    """JSONL of ``per_label`` messages per intent, interleaved (every label in every prefix)."""
    out = [{"message": messages(label, 1, start + i)[0], "intent": label} for i in range(per_label) for label in LABELS]
    return "".join(json.dumps(r) + "\n" for r in out)


def first_token_probabilities(message: str) -> dict[str, float]:
    """``lost`` 0.5 whatever the input, +0.2 for the true label; 0.2 on tokens that name no label."""
    p = {" lost": 0.5, " check": 0.05, " transfer": 0.05, "\n": 0.1, " I": 0.1}
    p[FIRST_TOKEN[true_label(message)]] += 0.2
    return p


class BiasedServer(FakeLMServer):
    """``FakeLMServer`` answering chat completions with first-token ``logprobs`` when asked.

    The fake server's responder returns text only; this one also builds ``choices[0].logprobs``.
    ``has_logprobs=False`` is an endpoint that ignores ``logprobs`` (never sends them).
    """

    def __init__(self, *, has_logprobs: bool = True) -> None:
        super().__init__()
        self.has_logprobs = has_logprobs

    def answer(self, body: dict[str, Any]) -> tuple[str, dict[str, float]]:
        user = str(body["messages"][-1]["content"])
        if user.count("Message:") < 2:  # zero-shot: the model does not know the labels
            return " unsure", {" The": 0.6, "\n": 0.4}
        m = re.search(r"Message: (.*)\nIntent:\s*$", user.rsplit("\n\n", 1)[-1])
        assert m is not None, user
        p = first_token_probabilities(m.group(1))
        top_token = max((t for t in p if t.strip()), key=p.__getitem__)
        label = next(v for v, t in FIRST_TOKEN.items() if t == top_token)
        return f" {SHOWN[label]}", p

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        self.bodies.append(body)  # handled on the server's one event-loop thread
        self.counts["ok"] += 1
        text, p = self.answer(body)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if self.has_logprobs and body.get("logprobs"):
            ranked = sorted(p.items(), key=lambda kv: -kv[1])[: int(body.get("top_logprobs") or 1)]
            top = [{"token": t, "logprob": math.log(q), "bytes": None} for t, q in ranked]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        return web.json_response(
            {
                "id": "chatcmpl-biased",
                "object": "chat.completion",
                "model": body.get("model", self.model),
                "choices": [choice],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }
        )

    def asked_for_logprobs(self) -> list[bool]:
        return [bool(b.get("logprobs")) and b.get("top_logprobs") == TOP_LOGPROBS for b in self.bodies]


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-calibration")
    pytester.makefile(".jsonl", **{"data/train": rows(4, 0), "data/dev": rows(4, 100)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def write(threshold: float) -> None:
        pytester.makepyfile(test_intent=TEST_FILE.replace("THRESHOLD", str(threshold)))

    write(0.9)
    return write


@pytest.fixture
def biased_server():
    started: list[BiasedServer] = []

    def make(**kwargs: Any) -> BiasedServer:
        s = BiasedServer(**kwargs).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def run(pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str) -> pytest.RunResult:
    opts = [
        "--dspex-model=fake-model",
        f"--dspex-base-url={server.base_url}",
        "--dspex-cache=off",
        "--dspex-retries=0",
        "-p",
        "no:cacheprovider",
    ]
    return pytester.runpytest_subprocess(*opts, *mode, *args, timeout=120)


def golden(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / GOLDEN).read_text())


def test_compile_calibrates_the_classifier_and_a_normal_run_answers_calibrated(pytester, project, biased_server, mode):
    server = biased_server()
    compiled = run(pytester, server, mode, "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    compiled.stdout.fnmatch_lines([f"*golden created: {GOLDEN} (selection 1.000, n=12, chosen: *+calibrated)*"])
    record = golden(pytester)
    calibration = record["predictors"]["self"]["calibration"]
    assert set(calibration) == set(LABELS)
    # the bias (towards "lost card") is divided out: it gets the lowest adjustment
    assert min(calibration, key=calibration.__getitem__) == "lost_card"
    optimizer = record["optimizer"]
    assert optimizer["calibrate"] is True
    chosen = optimizer["chosen"]
    assert chosen.endswith("+calibrated"), chosen
    scores = {c["name"]: c["score"] for c in optimizer["candidates"]}
    assert scores[chosen] == 1.0
    assert scores[chosen.removesuffix("+calibrated")] == pytest.approx(1 / 3)  # every answer says "lost card"
    assert scores["zero-shot"] == 0.0  # the model needs demos
    assert record["predictors"]["self"]["demos"]  # the chosen candidate has them
    assert record["scores"]["validation"]["score"] == 1.0
    assert any(server.asked_for_logprobs())  # the compile asked for them to calibrate

    server.bodies.clear()
    again = run(pytester, server, mode, "--dspex-report=report.json")
    assert again.ret == 0, again.stdout.str()
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*intent*dataset*1.000*0.90*1.000 (+0.000)*12*pass*"])
    report = json.loads((pytester.path / "report.json").read_text())
    (row,) = report["programs"]
    assert (row["score"], row["n"], row["golden_score"], row["verdict"]["passed"]) == (1.0, 12, 1.0, True)
    assert report["passed"] is True
    # every request of the normal run asked for the first token's alternatives
    assert len(server.bodies) == 12
    assert all(server.asked_for_logprobs())


def test_calibrate_off_compiles_an_uncalibrated_classifier(pytester, project, biased_server):
    project(0.3)  # uncalibrated, the biased model scores 1/3
    server = biased_server()
    compiled = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile", "--dspex-calibrate=off")
    assert compiled.ret == 0, compiled.stdout.str()
    record = golden(pytester)
    assert "calibration" not in record["predictors"]["self"]
    optimizer = record["optimizer"]
    assert optimizer["calibrate"] is False
    assert not optimizer["chosen"].endswith("+calibrated")
    assert not any("calibrated" in c["name"] for c in optimizer["candidates"])
    assert record["scores"]["validation"]["score"] == pytest.approx(1 / 3)
    assert not any(b.get("logprobs") for b in server.bodies)  # nothing asked for them

    server.bodies.clear()
    again = run(pytester, server, ["-p", "no:xdist"], "--dspex-report=report.json")
    assert again.ret == 0, again.stdout.str()
    (row,) = json.loads((pytester.path / "report.json").read_text())["programs"]
    assert row["score"] == pytest.approx(1 / 3)
    assert len(server.bodies) == 12 and not any(b.get("logprobs") for b in server.bodies)


def test_calibrate_off_from_the_ini_file(pytester, project, biased_server):
    project(0.3)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_calibrate = off\n")
    server = biased_server()
    compiled = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    record = golden(pytester)
    assert "calibration" not in record["predictors"]["self"]
    assert record["optimizer"]["calibrate"] is False


def test_bad_calibrate_value_is_a_usage_error(pytester, project, biased_server):
    result = run(pytester, biased_server(), ["-p", "no:xdist"], "--dspex-compile", "--dspex-calibrate=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dspex-calibrate: invalid choice: 'maybe' (choose from 'on', 'off')*"])


def test_an_endpoint_without_logprobs_compiles_uncalibrated(pytester, project, biased_server):
    project(0.3)
    server = biased_server(has_logprobs=False)
    compiled = run(pytester, server, ["-p", "no:xdist"], "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    compiled.stdout.fnmatch_lines([f"*golden created: {GOLDEN} (selection 0.333, n=12, chosen: labeled)*"])
    record = golden(pytester)
    assert "calibration" not in record["predictors"]["self"]
    optimizer = record["optimizer"]
    assert optimizer["calibrate"] is True  # asked for, but the endpoint had nothing to calibrate with
    assert not optimizer["chosen"].endswith("+calibrated")
    assert not any("calibrated" in c["name"] for c in optimizer["candidates"])
    assert any(server.asked_for_logprobs())  # calibration was tried

    server.bodies.clear()
    again = run(pytester, server, ["-p", "no:xdist"])
    assert again.ret == 0, again.stdout.str()
    assert len(server.bodies) == 12 and not any(b.get("logprobs") for b in server.bodies)
