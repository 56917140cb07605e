"""Calibrated classifiers (``pytest_dspex.programs.calibration``) end to end, against an in-test endpoint.

The endpoint (``BiasedEndpoint``, an ``httpx.MockTransport`` handler) answers like a small model
with a label bias: the first answer token's alternatives always favour ``lost card`` strongly, with a
smaller input-dependent lift for the true label, so the generated text says ``lost card`` for every
input. It sends ``top_logprobs`` (OpenAI chat layout) only when the request asked for them.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import numpy as np
import pytest

import pytest_dspex as dspex
from pytest_dspex.golden.record import golden_record
from pytest_dspex.golden.store import GoldenStore
from pytest_dspex.optimize import BootstrapFewShotWithRandomSearch
from pytest_dspex.programs import calibration
from pytest_dspex.programs.calibration import calibrate, calibrated_label, calibration_field, label_probabilities

LABELS = ("lost_card", "check_balance", "transfer_money")
SHOWN = {"lost_card": "lost card", "check_balance": "check balance", "transfer_money": "transfer money"}
FIRST_TOKEN = {"lost_card": " lost", "check_balance": " check", "transfer_money": " transfer"}


class Intent(dspex.Signature):
    """Classify the message by intent."""

    message: str = dspex.InputField()
    intent: Literal["lost_card", "check_balance", "transfer_money"] = dspex.OutputField()


class IntentAndReply(dspex.Signature):
    """Classify the message and reply."""

    message: str = dspex.InputField()
    intent: Literal["lost_card", "check_balance", "transfer_money"] = dspex.OutputField()
    reply: str = dspex.OutputField()


class Mood(enum.Enum):
    HAPPY = "happy_now"
    SAD = "sad_now"


class Feeling(dspex.Signature):
    text: str = dspex.InputField()
    mood: Mood = dspex.OutputField()


def true_label(message: str) -> str:
    if "card" in message:
        return "lost_card"
    if "balance" in message:
        return "check_balance"
    if "send" in message:
        return "transfer_money"
    raise AssertionError(f"no intent in {message!r}")


def biased(message: str) -> dict[str, float]:
    """First-token probabilities: ``lost`` 0.5 whatever the input, +0.2 for the true label; 0.2 on non-label tokens.

    A "maybe" message (always about a card) is a weak one: its second-best token is ``check``.
    """
    truth = true_label(message)
    p = {" lost": 0.5, " check": 0.05, " transfer": 0.05, "\n": 0.1, " I": 0.1}
    if "maybe" in message:
        p[" lost"], p[" check"] = 0.45, 0.3
    else:
        p[FIRST_TOKEN[truth]] += 0.2
    return p


def messages(label: str, n: int, start: int = 0) -> list[str]:
    form = {
        "lost_card": "I lost my card ({})",
        "check_balance": "what is my balance ({})",
        "transfer_money": "send 20 to mom ({})",
    }
    return [form[label].format(i) for i in range(start, start + n)]


def examples(per_label: int, start: int = 0) -> list[dspex.Example]:
    out = []
    for i in range(per_label):  # interleaved: every label in every prefix
        for label in LABELS:
            out.append(dspex.Example(message=messages(label, 1, start + i)[0], intent=label).with_inputs("message"))
    return out


def intent_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.intent == prediction.intent)


def demo_blocks(body: dict[str, Any]) -> list[str]:
    """The prompt's demos (every block before the query)."""
    return body["messages"][-1]["content"].split("\n\n")[:-1]


def asked_message(body: dict[str, Any]) -> str:
    """The message of the query (the prompt's last block), not of a demo."""
    user = body["messages"][-1]["content"]
    if user.startswith("[[ ## message ## ]]"):  # the chat (DSPy) layout
        return user.split("\n")[1]
    m = re.search(r"Message: (.*)\nIntent:\s*$", user.rsplit("\n\n", 1)[-1])
    assert m is not None, user
    return m.group(1)


class BiasedEndpoint:
    """An OpenAI-compatible chat-completions endpoint (an ``httpx.MockTransport`` handler)."""

    def __init__(
        self,
        probs: Callable[[str], dict[str, float]] = biased,
        *,
        logprobs: bool = True,
        reply: str = "",
        alternatives: dict[str, float] | None = None,
        unsure_without_demos: bool = False,
    ) -> None:
        self.probs = probs
        self.alternatives = alternatives  # sent instead of ``probs`` (the text still follows ``probs``)
        self.unsure_without_demos = unsure_without_demos  # a zero-shot prompt gets no label at all
        self.logprobs = logprobs  # False: an endpoint that ignores ``logprobs``
        self.reply = reply  # a second output line, for signatures with one
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.unsure_without_demos and not demo_blocks(body):
            p, text = {" The": 0.6, "\n": 0.4}, " unsure"
        else:
            p = self.probs(asked_message(body))
            labels = {t: q for t, q in p.items() if t.strip()}
            top_token = max(labels, key=labels.__getitem__)
            label = next(v for v, t in FIRST_TOKEN.items() if t == top_token)
            text = f" {SHOWN[label]}" + (f"\nReply: {self.reply}" if self.reply else "")
            if "[[ ## " in str(body["messages"][0]["content"]):
                text = f"[[ ## intent ## ]]\n{label}\n\n[[ ## completed ## ]]"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if self.logprobs and body.get("logprobs"):
            ranked = sorted((self.alternatives or p).items(), key=lambda kv: -kv[1])[
                : int(body.get("top_logprobs") or 1)
            ]
            top = [{"token": t, "logprob": math.log(q), "bytes": None} for t, q in ranked]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        data = {
            "id": "x",
            "object": "chat.completion",
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        }
        return httpx.Response(200, json=data)

    def asked_for_logprobs(self) -> list[bool]:
        return [bool(b.get("logprobs")) and b.get("top_logprobs") == calibration.TOP_LOGPROBS for b in self.bodies]


@pytest.fixture
def endpoint() -> Iterator[Callable[..., tuple[BiasedEndpoint, dspex.LM]]]:
    lms: list[dspex.LM] = []

    def make(*args: Any, **kwargs: Any) -> tuple[BiasedEndpoint, dspex.LM]:
        ep = BiasedEndpoint(*args, **kwargs)
        lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, hedge_after=None,
                      transport=httpx.MockTransport(ep))  # fmt: skip
        lms.append(lm)
        return ep, lm

    yield make
    for lm in lms:
        lm.close()


def answers(program: dspex.Module, msgs: list[str]) -> list[str]:
    return [program(message=m).intent for m in msgs]


# -- label probabilities ---------------------------------------------------------------------------
def test_label_probabilities_read_tokens_with_or_without_a_leading_space_in_any_case_and_sum_to_one():
    shown = {"lost_card": "lost card", "check_balance": "check balance", "transfer_money": "transfer money"}
    top = [
        (" Lost", math.log(0.4)),
        ("lost", math.log(0.1)),
        ("CHECK", math.log(0.2)),
        (" transfer", math.log(0.1)),
        ("\n", math.log(0.2)),
    ]
    probs = label_probabilities(shown, top)
    assert probs is not None and set(probs) == set(shown)
    assert sum(probs.values()) == pytest.approx(1.0)
    # " Lost" and "lost" both count for lost card; the newline names no label and is left out
    assert probs == pytest.approx({"lost_card": 0.5 / 0.8, "check_balance": 0.2 / 0.8, "transfer_money": 0.1 / 0.8})


def test_a_token_shared_by_two_labels_is_split_between_them_and_a_whole_label_token_counts():
    shown = {"card_lost": "card lost", "card_blocked": "card blocked", "balance": "balance"}
    probs = label_probabilities(shown, [(" card", math.log(0.6)), (" balance", math.log(0.2))])
    assert probs == pytest.approx({"card_lost": 0.375, "card_blocked": 0.375, "balance": 0.25})
    # a token that is more than a label's start ("cards") names no label; " bal" starts "balance";
    # a label no alternative names gets half the smallest alternative's probability (0.05 here)
    probs = label_probabilities(shown, [(" cards", math.log(0.9)), (" bal", math.log(0.1))])
    assert probs == pytest.approx({"card_lost": 0.25, "card_blocked": 0.25, "balance": 0.5})


def test_labels_no_alternative_names_get_a_small_floor_and_none_named_gives_none():
    shown = {"yes": "yes", "no": "no", "maybe": "maybe"}
    probs = label_probabilities(shown, [(" yes", math.log(0.7)), (" The", math.log(0.1)), (" I", math.log(0.02))])
    assert probs is not None and sum(probs.values()) == pytest.approx(1.0)
    assert probs["no"] == probs["maybe"] > 0  # never zero: a calibrated log stays finite
    assert probs["no"] < 0.02 and probs["yes"] > 0.95
    assert label_probabilities(shown, [(" The", math.log(0.6)), ("\n", math.log(0.3)), ("  ", math.log(0.1))]) is None
    assert label_probabilities(shown, []) is None


def test_calibrated_label_adds_the_adjustments_and_is_none_without_labels():
    shown = {"a_x": "apple", "b_x": "banana"}
    top = [(" apple", math.log(0.7)), (" banana", math.log(0.3))]
    assert calibrated_label(shown, top, {}) == "a_x"
    assert calibrated_label(shown, top, {"a_x": math.log(0.5 / 0.8), "b_x": math.log(0.5 / 0.2)}) == "b_x"
    assert calibrated_label(shown, None, {"a_x": 1.0}) is None
    assert calibrated_label(shown, (), {"a_x": 1.0}) is None
    assert calibrated_label(shown, [(" cherry", 0.0)], {"a_x": 1.0}) is None


def test_calibration_field_only_for_a_closed_set_first_output_under_the_compact_adapter():
    spec, shown = calibration_field(dspex.Predict(Intent))
    assert spec.name == "intent" and shown == SHOWN  # values shown as the compact adapter writes them
    _, flags = calibration_field(dspex.Predict("claim -> supported: bool"))
    assert flags == {"true": "true", "false": "false"}
    assert calibration_field(dspex.Predict("message -> team")) is None  # free text
    assert calibration_field(dspex.Predict("message -> intent: Literal['only']")) is None  # nothing to choose
    assert calibration_field(dspex.Predict(Intent, adapter="chat")) is None
    assert calibration_field(dspex.Predict(Intent), adapter=dspex.JSONAdapter()) is None
    assert calibration_field(dspex.ChainOfThought(Intent).predict) is None  # reasoning comes first


# -- a biased model, calibrated --------------------------------------------------------------------
def test_a_biased_classifier_answers_the_true_labels_once_calibrated(endpoint):
    ep, lm = endpoint()
    pred = dspex.Predict(Intent, lm=lm)
    msgs = [m for label in LABELS for m in messages(label, 4)]
    truth = [true_label(m) for m in msgs]

    assert answers(pred, msgs) == ["lost_card"] * len(msgs)  # the bias wins every time
    assert not any(ep.asked_for_logprobs())  # an uncalibrated predictor never asks for logprobs
    assert all("logprobs" not in b and "top_logprobs" not in b for b in ep.bodies)

    ep.bodies.clear()
    report = asyncio.run(calibrate(pred, [{"message": m} for m in msgs]))
    assert report.inputs == len(msgs) and report.skipped == {}
    assert set(report.calibrated) == {"self"} and pred.calibration == report.calibrated["self"]
    assert set(pred.calibration) == set(LABELS)
    assert pred.calibration["lost_card"] < 0 < pred.calibration["check_balance"]  # the favoured label is pushed down
    assert len(ep.bodies) == len(msgs) and all(ep.asked_for_logprobs())

    ep.bodies.clear()
    assert answers(pred, msgs) == truth
    assert all(ep.asked_for_logprobs()) and len(ep.bodies) == len(msgs)
    # a message not in the calibration batch too
    assert pred(message="please send 5 to my sister").intent == "transfer_money"
    assert pred.reset_copy()(message="please send 5 to my sister").intent == "lost_card"


def test_the_adjustments_are_log_target_share_minus_log_mean_probability(endpoint):
    _, lm = endpoint()
    pred = dspex.Predict(Intent, lm=lm)
    msgs = messages("lost_card", 2) + messages("check_balance", 1)
    targets = {"self": ["lost_card", "lost_card", "lost_card", "check_balance"]}
    report = asyncio.run(calibrate(pred, [{"message": m} for m in msgs], targets))
    # label probabilities per input (the 0.2 on non-label tokens normalised away)
    per_input = [{"lost_card": 0.875, "check_balance": 0.0625, "transfer_money": 0.0625}] * 2 + [
        {"lost_card": 0.625, "check_balance": 0.3125, "transfer_money": 0.0625}
    ]
    mean = {label: sum(p[label] for p in per_input) / 3 for label in LABELS}
    share = {"lost_card": 4 / 7, "check_balance": 2 / 7, "transfer_money": 1 / 7}  # add-one smoothed counts
    expected = {label: math.log(share[label]) - math.log(mean[label]) for label in LABELS}
    assert report.calibrated["self"] == pytest.approx(expected, abs=1e-5)


def test_an_endpoint_without_logprobs_is_skipped_and_a_calibrated_predictor_falls_back_to_the_text(endpoint):
    ep, lm = endpoint(logprobs=False)
    pred = dspex.Predict(Intent, lm=lm)
    report = asyncio.run(calibrate(pred, [{"message": m} for m in messages("check_balance", 3)]))
    assert report.calibrated == {} and report.skipped == {"self": "the endpoint sent no logprobs"}
    assert pred.calibration is None

    pred.calibration = {"lost_card": -5.0, "check_balance": 5.0, "transfer_money": 0.0}
    ep.bodies.clear()
    assert pred(message="what is my balance").intent == "lost_card"  # what the model wrote
    assert ep.asked_for_logprobs() == [True]  # it asked, got none, answered the text


def test_alternatives_naming_no_label_fall_back_to_the_text(endpoint):
    ep, lm = endpoint(alternatives={" The": 0.5, "\n": 0.3, " I": 0.2})
    pred = dspex.Predict(Intent, lm=lm)
    pred.calibration = {"lost_card": -9.0, "check_balance": 9.0, "transfer_money": 0.0}
    assert pred(message="what is my balance").intent == "lost_card"  # the text: no alternative names a label
    assert ep.asked_for_logprobs() == [True]
    # one tiny alternative naming a label is enough for the calibration to decide
    _, lm = endpoint(alternatives={" The": 0.5, "\n": 0.3, " I": 0.2, " check": 0.0001})
    pred.lm = lm
    assert pred(message="I lost my card").intent == "check_balance"


def test_labels_whose_first_token_is_shared_are_not_calibrated(endpoint):
    class Card(dspex.Signature):
        """Classify the card request."""

        message: str = dspex.InputField()
        intent: Literal["card_lost", "card_limit", "other"] = dspex.OutputField()

    class Bug(dspex.Signature):
        """Classify the report."""

        message: str = dspex.InputField()
        kind: Literal["bug", "bug_critical", "other"] = dspex.OutputField()

    _, lm = endpoint()
    inputs = [{"message": m} for m in messages("lost_card", 4)]
    for signature, pair in ((Card, "'card_lost' and 'card_limit'"), (Bug, "'bug' and 'bug_critical'")):
        pred = dspex.Predict(signature, lm=lm)
        report = asyncio.run(calibrate(pred, inputs))
        assert report.calibrated == {} and pred.calibration is None
        assert report.skipped["self"] == f"its labels share their first token ({pair})"

    class Loan(dspex.Signature):
        """Classify the message."""

        message: str = dspex.InputField()
        intent: Literal["lost_card", "loan_info", "other"] = dspex.OutputField()

    # different first words, but the model's alternatives are " lo", which names two labels
    _, lm = endpoint(alternatives={" lo": 0.7, " other": 0.2, "\n": 0.1})
    pred = dspex.Predict(Loan, lm=lm)
    report = asyncio.run(calibrate(pred, inputs))
    assert report.calibrated == {} and "78%" in report.skipped["self"]


def test_a_token_naming_the_written_label_and_the_calibrated_one_leaves_the_written_one():
    shown = {"lost_card": "lost card", "loan_info": "loan info", "other": "other"}
    top = [(" lo", math.log(0.6)), (" other", math.log(0.3))]
    adjustments = {"lost_card": 1.0, "loan_info": -1.0, "other": 0.0}
    assert calibrated_label(shown, top, adjustments) == "lost_card"
    assert calibrated_label(shown, top, adjustments, answered="loan_info") == "loan_info"  # " lo" names both
    assert calibrated_label(shown, top, {"other": 3.0}, answered="loan_info") == "other"  # " other" is its own


def test_inputs_without_the_predictors_fields_are_not_used(endpoint):
    _, lm = endpoint()
    pred = dspex.Predict(Intent, lm=lm)
    report = asyncio.run(calibrate(pred, [{"text": "I lost my card"}]))
    assert report.skipped == {"self": "the inputs lack its field(s) message"} and pred.calibration is None


def test_an_input_the_endpoint_fails_on_is_left_out(endpoint):
    ep, lm = endpoint()
    fails = {"I lost my card (1)"}
    inner = ep.__call__

    def flaky(request: httpx.Request) -> httpx.Response:
        if asked_message(json.loads(request.content)) in fails:
            return httpx.Response(200, text="<html>garbled</html>")  # an LMResponseError, not an HTTP error
        return inner(request)

    lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, retries=0, transport=httpx.MockTransport(flaky))
    pred = dspex.Predict(Intent, lm=lm)
    msgs = [m for label in LABELS for m in messages(label, 3)]
    report = asyncio.run(calibrate(pred, [{"message": m} for m in msgs]))
    assert set(report.calibrated["self"]) == set(LABELS)  # one failed input of 9: the rest calibrate


def test_an_input_whose_probe_hangs_is_cut_at_the_timeout_and_left_out(endpoint):
    ep, _ = endpoint()
    hangs = "I lost my card (1)"
    cut: list[str] = []

    async def stalls(request: httpx.Request) -> httpx.Response:
        if asked_message(json.loads(request.content)) == hangs:
            try:
                await asyncio.sleep(30)  # far past the timeout below: without it, answered after this
            except asyncio.CancelledError:
                cut.append(hangs)
                raise
        return ep(request)

    lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, retries=0, hedge_after=None,
                  transport=httpx.MockTransport(stalls))  # fmt: skip
    pred = dspex.Predict(Intent, lm=lm)
    msgs = [m for label in LABELS for m in messages(label, 3)]
    try:
        report = asyncio.run(calibrate(pred, [{"message": m} for m in msgs], timeout=0.5))
    finally:
        lm.close()
    assert cut == [hangs]  # the hung probe was cancelled, not waited for
    assert set(report.calibrated["self"]) == set(LABELS)  # the other 8 inputs calibrate


def test_a_calibrated_first_output_keeps_the_other_outputs_the_model_wrote(endpoint):
    ep, lm = endpoint(reply="we are on it")
    pred = dspex.Predict(IntentAndReply, lm=lm)
    pred.calibration = {"lost_card": -2.0, "check_balance": 2.0, "transfer_money": 0.0}
    out = pred(message="what is my balance")
    assert out.intent == "check_balance" and out.reply == "we are on it"
    assert ep.asked_for_logprobs() == [True]


def test_no_logprobs_asked_where_calibration_does_not_apply(endpoint):
    ep, lm = endpoint()
    pred = dspex.Predict(Intent, lm=lm, adapter="chat")
    report = asyncio.run(calibrate(pred, [{"message": "I lost my card"}]))
    assert report.calibrated == {} and "compact adapter" in report.skipped["self"]
    assert ep.bodies == []  # nothing was asked
    pred.calibration = {"lost_card": -5.0, "check_balance": 5.0, "transfer_money": 0.0}
    assert pred(message="what is my balance").intent == "lost_card"  # what the model wrote
    assert len(ep.bodies) == 1 and not any("logprobs" in b or "top_logprobs" in b for b in ep.bodies)


def test_only_the_first_predictor_of_a_pipeline_is_calibrated(endpoint):
    _, lm = endpoint()

    class Pipeline(dspex.Module):
        def __init__(self) -> None:
            self.classify = dspex.Predict(Intent, lm=lm)
            self.again = dspex.Predict(Intent, lm=lm)
            self.free = dspex.Predict("message -> summary", lm=lm)

        def forward(self, message: str) -> Any:
            return self.classify(message=message)

    program = Pipeline()
    report = asyncio.run(
        calibrate(program, [{"message": m} for m in messages("lost_card", 2) + messages("check_balance", 2)])
    )
    assert set(report.calibrated) == {"classify"} and program.classify.calibration is not None
    assert "first predictor" in report.skipped["again"] and program.again.calibration is None
    assert "closed set" in report.skipped["free"]
    empty = asyncio.run(calibrate(dspex.Predict(Intent, lm=lm), []))
    assert empty.skipped == {"self": "no inputs to calibrate on"}


def test_leave_out_own_asks_each_input_without_the_demo_that_is_itself(endpoint):
    ep, lm = endpoint()
    pred = dspex.Predict(Intent, lm=lm)
    train = examples(2)
    pred.demos = [dict(ex) for ex in train]
    asyncio.run(calibrate(pred, [ex.inputs() for ex in train], leave_out_own=True))
    assert len(ep.bodies) == len(train)
    for body in ep.bodies:
        own = asked_message(body)
        assert len(demo_blocks(body)) == len(train) - 1
        assert not any(f"Message: {own}\n" in block for block in demo_blocks(body))
    ep.bodies.clear()
    asyncio.run(calibrate(pred, [ex.inputs() for ex in train]))
    assert all(len(demo_blocks(b)) == len(train) for b in ep.bodies)


def test_calibrated_bool_and_enum_answers_are_values_of_the_field_type():
    def handler(first: str, top: dict[str, float]) -> httpx.MockTransport:
        def respond(request: httpx.Request) -> httpx.Response:
            assert json.loads(request.content)["logprobs"] is True
            alternatives = [{"token": t, "logprob": math.log(q)} for t, q in top.items()]
            choice = {"index": 0, "message": {"role": "assistant", "content": first}, "finish_reason": "stop",
                      "logprobs": {"content": [{**alternatives[0], "top_logprobs": alternatives}]}}  # fmt: skip
            return httpx.Response(200, json={"choices": [choice]})

        return httpx.MockTransport(respond)

    lm = dspex.LM(
        "fake",
        base_url="http://mock/v1",
        api_key="k",
        cache=None,
        transport=handler(" true", {" true": 0.7, " false": 0.3}),
    )
    claims = dspex.Predict("claim -> supported: bool", lm=lm)
    claims.calibration = {"true": -1.0, "false": 1.0}
    assert claims(claim="the sky is green").supported is False
    lm.close()

    lm = dspex.LM(
        "fake",
        base_url="http://mock/v1",
        api_key="k",
        cache=None,
        transport=handler(" happy now", {" happy": 0.8, " sad": 0.2}),
    )
    feelings = dspex.Predict(Feeling, lm=lm)
    assert calibration_field(feelings)[1] == {"happy_now": "happy now", "sad_now": "sad now"}
    feelings.calibration = {"happy_now": -2.0, "sad_now": 0.0}
    assert feelings(text="meh").mood is Mood.SAD
    lm.close()


# -- saved and loaded ------------------------------------------------------------------------------
ADJUST = {"lost_card": -0.25, "check_balance": 0.5, "transfer_money": 0.125}


def test_state_round_trip_keeps_the_calibration_and_reset_copy_clears_it(tmp_path, endpoint):
    pred = dspex.Predict(Intent)
    assert "calibration" not in pred.dump_state()  # an uncalibrated state looks as before (DSPy layout)
    pred.demos = [{"message": "card gone", "intent": "lost_card"}]
    pred.calibration = dict(ADJUST)
    state = pred.dump_state()
    assert state["calibration"] == ADJUST
    loaded = dspex.Predict(Intent).load_state(json.loads(json.dumps(state)))
    assert loaded.calibration == ADJUST and loaded.demos == pred.demos
    pred.save(tmp_path / "p.json")
    assert dspex.Predict(Intent).load(tmp_path / "p.json").calibration == ADJUST

    # loading an uncalibrated state clears a calibration the program had
    calibrated = dspex.Predict(Intent)
    calibrated.calibration = dict(ADJUST)
    assert calibrated.load_state(dspex.Predict(Intent).dump_state()).calibration is None

    copy = pred.deepcopy()
    copy.calibration["lost_card"] = 9.0
    assert pred.calibration == ADJUST  # a copy's calibration is its own
    assert pred.reset_copy().calibration is None and pred.reset_copy().demos == []
    assert pred.calibration == ADJUST


def test_a_bad_saved_calibration_is_a_config_error_naming_the_predictor():
    class Pipeline(dspex.Module):
        def __init__(self) -> None:
            self.classify = dspex.Predict(Intent)

    for bad in (["lost_card"], {"lost_card": "high"}, "x"):
        with pytest.raises(dspex.ConfigError, match=r"predictor 'classify'.*'calibration' must map labels to numbers"):
            Pipeline().load_state({"classify": {"demos": [], "calibration": bad}})
    with pytest.raises(dspex.ConfigError, match=r"predictor 'self'"):
        dspex.Predict(Intent).load_state({"demos": [], "calibration": {"lost_card": None}})
    ints = dspex.Predict(Intent).load_state({"demos": [], "calibration": {"lost_card": 1, "check_balance": -2}})
    assert ints.calibration == {"lost_card": 1.0, "check_balance": -2.0}


def test_golden_record_keeps_the_calibration_and_apply_loads_it(tmp_path, endpoint):
    ep, lm = endpoint()
    compiled = dspex.Predict(Intent)
    compiled.demos = [{"message": "card gone", "intent": "lost_card"}]
    compiled.calibration = {"lost_card": -3.0, "check_balance": 3.0, "transfer_money": 0.0}
    store = GoldenStore(tmp_path)
    path = store.path_for("test_intent", "intent")
    store.write(path, golden_record(compiled, name="intent", validation=(0.9, 10)))
    assert json.loads(path.read_text())["predictors"]["self"]["calibration"] == compiled.calibration

    applied = store.read(path).apply(dspex.Predict(Intent, lm=lm))
    assert applied.calibration == compiled.calibration and applied.demos == compiled.demos
    assert applied(message="what is my balance").intent == "check_balance"  # answers calibrated
    assert ep.asked_for_logprobs() == [True]

    # an uncalibrated golden leaves a program uncalibrated, even one that was
    store.write(path, golden_record(dspex.Predict(Intent), name="intent", validation=(0.95, 10)))
    assert "calibration" not in json.loads(path.read_text())["predictors"]["self"]
    stale = dspex.Predict(Intent)
    stale.calibration = dict(ADJUST)
    assert store.read(path).apply(stale).calibration is None


def test_a_golden_with_a_garbled_calibration_is_a_golden_file_error(tmp_path):
    compiled = dspex.Predict(Intent)
    compiled.calibration = dict(ADJUST)
    rec = golden_record(compiled, name="intent")
    rec["predictors"]["self"]["calibration"] = {"lost_card": "high"}
    path = tmp_path / "intent.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(dspex.GoldenFileError, match="calibration"):
        GoldenStore(tmp_path).read(path)


# -- the search ------------------------------------------------------------------------------------
def search(**kwargs: Any) -> BootstrapFewShotWithRandomSearch:
    kwargs.setdefault("num_candidates", 2)
    return BootstrapFewShotWithRandomSearch(
        intent_matches, max_bootstrapped_demos=3, max_labeled_demos=6, seed=1, **kwargs
    )


def test_the_search_adopts_a_calibrated_candidate_when_it_scores_no_worse(endpoint):
    _, lm = endpoint()
    train = examples(4)  # 12 examples, 3 labels
    result = search().compile(dspex.Predict(Intent, lm=lm), trainset=train)
    names = [c.name for c in result.candidates]
    assert result.best.name.endswith("+calibrated") and names[-1] == result.best.name
    assert result.best.name.removesuffix("+calibrated") in names[:-1]
    uncalibrated = next(c for c in result.candidates if c.name == result.best.name.removesuffix("+calibrated"))
    assert uncalibrated.score == pytest.approx(1 / 3)  # every candidate says "lost card"
    assert result.best.score == 1.0 and result.validation.score == 1.0
    assert result.program.predictors()[0].calibration is not None
    assert uncalibrated.program.predictors()[0].calibration is None  # the candidate itself is untouched
    assert "+calibrated" in result.table()

    held_out = [m for label in LABELS for m in messages(label, 3, start=100)]
    assert answers(result.program, held_out) == [true_label(m) for m in held_out]


def test_the_search_without_calibrate_adds_no_calibrated_candidate(endpoint):
    ep, lm = endpoint()
    result = search(calibrate=False).compile(dspex.Predict(Intent, lm=lm), trainset=examples(4))
    assert not any("calibrated" in c.name for c in result.candidates)
    assert result.program.predictors()[0].calibration is None
    assert not any(ep.asked_for_logprobs())
    assert answers(result.program, messages("check_balance", 2, start=100)) == ["lost_card", "lost_card"]


def test_the_search_keeps_the_uncalibrated_candidate_when_calibration_scores_worse(endpoint):
    # a validation set of card messages only, half of them weak ones: the bias is right here, and
    # calibrating towards the trainset's even label shares turns weak answers into "check balance"
    _, lm = endpoint()
    val = [dspex.Example(message=m, intent="lost_card").with_inputs("message")
           for m in messages("lost_card", 4, start=50) + [f"maybe my card is gone ({i})" for i in range(4)]]  # fmt: skip
    result = search().compile(dspex.Predict(Intent, lm=lm), trainset=examples(4), valset=val)
    assert not result.best.name.endswith("+calibrated")
    assert result.best.score == 1.0
    calibrated = [c for c in result.candidates if c.name.endswith("+calibrated")]
    # with a validation set up to three candidates are each tried calibrated: none is as good
    assert 1 <= len(calibrated) <= 3
    assert f"{result.best.name}+calibrated" in {c.name for c in calibrated}
    assert all(c.score < result.best.score for c in calibrated)
    assert result.program.predictors()[0].calibration is None


def test_with_leave_one_out_the_calibrated_candidate_is_scored_without_own_demos_too(endpoint):
    ep, lm = endpoint(unsure_without_demos=True)  # zero-shot scores 0: a candidate with demos is chosen
    train = examples(4)
    result = search(leave_one_out=True, num_candidates=1).compile(dspex.Predict(Intent, lm=lm), trainset=train)
    assert result.best.name.endswith("+calibrated")
    # every request of the compile that carried logprobs (calibration and the calibrated candidate's
    # evaluation) left out the demo that is the asked example itself
    asked = [b for b in ep.bodies if b.get("logprobs")]
    assert asked
    assert any(demo_blocks(b) for b in asked)  # the chosen candidate has demos
    for body in asked:
        assert not any(f"Message: {asked_message(body)}\n" in block for block in demo_blocks(body))


# -- the embedded server's first-token logprobs ----------------------------------------------------
class FakeLlama:
    """What ``first_token_logprobs`` uses of ``llama_cpp.Llama``: tokens are characters, logits depend on the last one."""

    VOCAB = 8

    def __init__(self) -> None:
        self._input_ids = np.zeros(64, dtype=np.intc)
        self.n_tokens = 0
        self.evals: list[list[int]] = []
        self.tokenized: list[tuple[bool, bool]] = []
        self._logits = np.zeros(self.VOCAB, dtype=np.float32)
        self._ctx = self

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.tokenized.append((add_bos, special))
        return [1] + [2 + (b % (self.VOCAB - 2)) for b in text]

    def eval(self, tokens: list[int]) -> None:
        self.evals.append(list(tokens))
        for t in tokens:
            self._input_ids[self.n_tokens] = t
            self.n_tokens += 1
        last = int(self._input_ids[self.n_tokens - 1])
        self._logits[:] = [float((i * 3 + last) % self.VOCAB) for i in range(self.VOCAB)]

    def get_logits(self) -> Any:
        return self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def n_vocab(self) -> int:
        return self.VOCAB

    def detokenize(self, tokens: list[int]) -> bytes:
        return f"<{tokens[0]}>".encode()


def test_first_token_logprobs_reuses_the_cached_prefix_and_returns_the_top_k_normalised():
    from pytest_dspex.lm.local._llama_server import first_token_logprobs

    llama = FakeLlama()
    first = first_token_logprobs(llama, "abc", 3)
    assert llama.tokenized == [(True, True)]  # as llama-cpp-python's completion tokenizes the prompt
    assert llama.evals == [llama.tokenize(b"abc")]  # nothing cached: the whole prompt
    assert first is not None
    top = first["content"][0]["top_logprobs"]
    assert len(top) == 3
    lps = [t["logprob"] for t in top]
    assert lps == sorted(lps, reverse=True)
    logits = np.array([float((i * 3 + llama.tokenize(b"abc")[-1]) % 8) for i in range(8)])
    log_z = math.log(np.exp(logits).sum())
    best = [int(i) for i in np.argsort(-logits, kind="stable")[:3]]
    assert [t["token"] for t in top] == [f"<{i}>" for i in best]
    assert lps == pytest.approx([logits[i] - log_z for i in best])
    assert first["content"][0]["token"] == top[0]["token"] and first["content"][0]["logprob"] == lps[0]
    assert all(lp < 0 for lp in lps) and sum(math.exp(lp) for lp in lps) < 1

    # a prompt that extends the cached one: only the new tail is evaluated
    llama.evals.clear()
    more = first_token_logprobs(llama, "abcde", 2)
    assert llama.evals == [llama.tokenize(b"abcde")[4:]]
    assert llama.n_tokens == 6 and more is not None and len(more["content"][0]["top_logprobs"]) == 2
    # the same prompt again: at least the last token is evaluated (its logits are needed)
    llama.evals.clear()
    again = first_token_logprobs(llama, "abcde", 2)
    assert llama.evals == [llama.tokenize(b"abcde")[-1:]] and again == more
    # a prompt that diverges: evaluated from the first differing token
    llama.evals.clear()
    first_token_logprobs(llama, "abXY", 2)
    assert llama.evals == [llama.tokenize(b"abXY")[3:]] and llama.n_tokens == 5
    # k at least the vocabulary: every token
    assert len(first_token_logprobs(llama, "abXY", 50)["content"][0]["top_logprobs"]) == 8


def test_first_token_logprobs_is_none_without_the_llama_api():
    from pytest_dspex.lm.local._llama_server import first_token_logprobs

    assert first_token_logprobs(object(), "abc", 5) is None

    class NoLogits(FakeLlama):
        _ctx = None

        def __init__(self) -> None:
            super().__init__()
            self._ctx = None

    assert first_token_logprobs(NoLogits(), "abc", 5) is None


def test_the_plain_handler_answers_first_token_logprobs_itself_without_logits_all(monkeypatch):
    pytest.importorskip("llama_cpp")
    import llama_cpp.llama_chat_format as chat_format

    from pytest_dspex.lm.local import _llama_server

    calls: list[dict[str, Any]] = []

    def fake_base_factory(formatter: Any) -> Any:
        def base(**kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": " yes"}, "logprobs": None}]}

        return base

    monkeypatch.setattr(chat_format, "chat_formatter_to_chat_completion_handler", fake_base_factory)
    handler = _llama_server.plain_handler()
    messages_ = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Q: hi\nA:"}]

    llama = FakeLlama()
    response = handler(llama=llama, messages=messages_, logprobs=True, top_logprobs=4)
    top = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert len(top) == 4
    assert "logprobs" not in calls[-1] and "top_logprobs" not in calls[-1]  # llama-cpp-python would refuse them
    assert llama.evals  # the prompt was evaluated for them

    plain = FakeLlama()
    assert handler(llama=plain, messages=messages_)["choices"][0]["logprobs"] is None
    assert plain.evals == []  # not asked: no extra work

    full = FakeLlama()
    full._logits_all = True
    handler(llama=full, messages=messages_, logprobs=True, top_logprobs=2)
    assert calls[-1]["logprobs"] is True and calls[-1]["top_logprobs"] == 2 and full.evals == []


def test_an_endpoint_that_refuses_logprobs_is_asked_without_them_and_remembered():
    bodies: list[dict[str, Any]] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "logprobs" in body:
            return httpx.Response(400, json={"error": {"message": "logprobs is not supported for this model"}})
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": " check balance"}}]})

    lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, transport=httpx.MockTransport(refuse))
    pred = dspex.Predict(Intent, lm=lm)
    pred.calibration = {"lost_card": 1.0, "check_balance": -1.0, "transfer_money": 0.0}
    assert pred(message="what is my balance").intent == "check_balance"  # the text decides
    first = len(bodies)
    assert "logprobs" in bodies[0] and "logprobs" not in bodies[-1]
    assert pred(message="what is my balance now").intent == "check_balance"
    assert len(bodies) == first + 1 and "logprobs" not in bodies[-1]  # remembered: asked once without
    lm.close()


def test_a_calibrated_multi_output_answer_still_gets_the_json_retry(endpoint):
    calls: list[dict[str, Any]] = []

    def respond(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body)
        if "logprobs" in body:  # the compact answer: a label but no Reply line
            top = [{"token": " check", "logprob": math.log(0.6)}, {"token": " lost", "logprob": math.log(0.4)}]
            choice = {"message": {"role": "assistant", "content": " lost card"},
                      "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}  # fmt: skip
            return httpx.Response(200, json={"choices": [choice]})
        text = json.dumps({"intent": "lost_card", "reply": "ok"})
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}]})

    lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, transport=httpx.MockTransport(respond))
    pred = dspex.Predict(IntentAndReply, lm=lm, json_fallback=True)
    pred.calibration = {"lost_card": 0.0, "check_balance": 0.0, "transfer_money": 0.0}
    out = pred(message="what is my balance")
    assert out.reply == "ok" and out.intent == "check_balance"  # the JSON retry's reply, the calibrated label
    assert len(calls) == 2
    lm.close()


def test_a_calibrated_label_is_the_fields_own_value():
    class Verdict(dspex.Signature):
        claim: str = dspex.InputField()
        verdict: Literal['say "hi"', "not ok.", "fine"] = dspex.OutputField()

    def respond(request: httpx.Request) -> httpx.Response:
        top = [{"token": " not", "logprob": math.log(0.5)}, {"token": " say", "logprob": math.log(0.3)}]
        choice = {"message": {"role": "assistant", "content": " fine"}, "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}
        return httpx.Response(200, json={"choices": [choice]})

    lm = dspex.LM("fake", base_url="http://mock/v1", api_key="k", cache=None, transport=httpx.MockTransport(respond))
    pred = dspex.Predict(Verdict, lm=lm)
    pred.calibration = {'say "hi"': 1.0, "not ok.": 0.0, "fine": 0.0}
    assert pred(claim="x").verdict == 'say "hi"'
    pred.calibration = {'say "hi"': 0.0, "not ok.": 0.0, "fine": 0.0}
    assert pred(claim="x").verdict == "not ok."
    lm.close()
