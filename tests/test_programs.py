from __future__ import annotations

import asyncio
import json

import pytest

import pytest_dspex as dspex

from .conftest import Triage


def test_sync_call_twice_and_from_an_async_test(server, make_lm):
    lm = make_lm(server)
    triage = dspex.Predict(Triage, lm=lm)
    assert triage(message="refund me").team == "billing"
    assert triage(message="it crashes").team == "technical"  # a second sync call: same pool


@pytest.mark.asyncio
async def test_async_call_from_a_pytest_asyncio_loop(server, make_lm):
    lm = make_lm(server)
    triage = dspex.Predict(Triage, lm=lm)
    preds = await asyncio.gather(*(triage.acall(message=m) for m in ["invoice wrong", "crash", "refund"]))
    assert [p.team for p in preds] == ["billing", "technical", "billing"]
    assert triage(message="charge") .team == "billing"  # sync inside an async test works too


def test_global_configure_and_scoped_context(server_factory, make_lm):
    a, b = server_factory(), server_factory()
    lm_a, lm_b = make_lm(a), make_lm(b)
    triage = dspex.Predict(Triage)
    dspex.configure(lm=lm_a)
    try:
        triage(message="x")
        with dspex.context(lm=lm_b):
            triage(message="x")
    finally:
        dspex.configure(lm=None)
    assert (a.requests, b.requests) == (1, 1)


def test_no_lm_is_a_clear_error():
    with pytest.raises(dspex.ConfigError, match="has no LM"):
        dspex.Predict("q -> a")(q="x")


def test_missing_input_is_a_clear_error(server, make_lm):
    with pytest.raises(dspex.SignatureError, match="missing input field"):
        dspex.Predict(Triage, lm=make_lm(server))(text="x")


class TwoStep(dspex.Module):
    def __init__(self):
        self.route = dspex.Predict(Triage)
        self.explain = dspex.ChainOfThought("message, team -> reply")

    def forward(self, message):
        team = self.route(message=message).team
        return dspex.Prediction(team=team, reply=self.explain(message=message, team=team).reply)


class AsyncTwoStep(TwoStep):
    async def aforward(self, message):
        team = (await self.route.acall(message=message)).team
        reply = (await self.explain.acall(message=message, team=team)).reply
        return dspex.Prediction(team=team, reply=reply)


def two_step_responder(body):
    user = body["messages"][-1]["content"]
    if user.endswith("Reasoning:"):
        return " the team fits\nReply: we are on it"
    return " billing" if "refund" in user else " technical"


@pytest.mark.parametrize("cls", [TwoStep, AsyncTwoStep])
def test_module_traces_record_every_predictor_step(server_factory, make_lm, cls):
    lm = make_lm(server_factory(two_step_responder))
    program = cls()
    program.set_lm(lm)
    assert [p for p, _ in program.named_predictors()] == ["route", "explain.predict"]
    with dspex.trace_scope() as trace:
        pred = program(message="refund please")
    assert pred.team == "billing" and pred.reply == "we are on it"
    assert [step[0] for step in trace] == [program.route, program.explain.predict]
    assert trace[1][2].reasoning == "the team fits"


@pytest.mark.asyncio
async def test_module_acall_traces_from_async(server_factory, make_lm):
    program = AsyncTwoStep()
    program.set_lm(make_lm(server_factory(two_step_responder)))
    with dspex.trace_scope() as trace:
        await program.acall(message="crash")
    assert len(trace) == 2


def test_json_fallback_costs_one_extra_call_only_when_parsing_failed(server_factory, make_lm):
    sig = dspex.make_signature("m -> n: int")

    def responder(body):
        if "JSON" in body["messages"][0]["content"]:
            return '{"n": 7}'
        return " seven" if "bad" in body["messages"][-1]["content"] else " 3"

    server = server_factory(responder)
    p = dspex.Predict(sig, lm=make_lm(server))
    assert p(m="good").n == 3 and server.requests == 1
    assert p(m="bad").n == 7 and server.requests == 3
    no_fallback = dspex.Predict(sig, lm=make_lm(server), json_fallback=False)
    with pytest.raises(dspex.AdapterParseError):
        no_fallback(m="bad")


def test_demos_serialize_in_dspy_layout_and_load_back(tmp_path):
    program = TwoStep()
    program.route.demos = [{"message": "refund", "team": "billing", "augmented": True}]
    program.explain.predict.demos = [{"message": "m", "team": "t", "reasoning": "r", "reply": "x"}]
    path = tmp_path / "prog.json"
    program.save(path)
    state = json.loads(path.read_text())
    assert set(state) == {"route", "explain.predict", "metadata"}
    assert state["route"]["demos"][0]["augmented"] is True
    assert state["explain.predict"]["signature"]["fields"][2]["prefix"] == "Reasoning:"
    fresh = TwoStep().load(path)
    assert fresh.route.demos == program.route.demos
    assert fresh.explain.predict.demos == program.explain.predict.demos


def test_loaded_demos_keep_extra_columns_as_metadata_but_must_fit_the_signature():
    # issue 25: DSPy's labeled demos carry the dataset's other columns (id, source...); they load,
    # and stay with the demo (the adapters show signature fields only)
    loaded = dspex.Predict(Triage).load_state({"demos": [{"id": "t-1", "message": "m", "team": "billing"}]})
    assert loaded.demos == [{"id": "t-1", "message": "m", "team": "billing"}]
    request = dspex.CompactAdapter().format(loaded.signature, loaded.demos, {"message": "x"})
    assert "t-1" not in str(request.messages)
    # a demo made for another signature is still an error, saying what it has
    with pytest.raises(dspex.ConfigError, match=r"demo 0 lacks message: it has colour, text"):
        dspex.Predict(Triage).load_state({"demos": [{"text": "m", "colour": "red"}]})
    with pytest.raises(dspex.ConfigError, match=r"demo 0 lacks every output field \(team\)"):
        dspex.Predict(Triage).load_state({"demos": [{"message": "m", "colour": "red"}]})


def test_reset_copy_clears_demos_but_keeps_the_original():
    program = TwoStep()
    program.route.demos = [{"message": "a", "team": "b"}]
    copy = program.reset_copy()
    assert copy.route.demos == [] and program.route.demos


def test_an_answer_cut_at_the_token_limit_says_so_and_which_limit_to_raise(server_factory, make_lm):
    server = server_factory(lambda body: " we will need to think about the age here carefully\nAge: 42")
    lm = make_lm(server, max_tokens=5)
    p = dspex.Predict("name -> reasoning: str, age: int", lm=lm, json_fallback=False)
    with pytest.raises(dspex.AdapterParseError) as err:
        p(name="Ada")
    message = str(err.value)
    assert "truncated at the token limit (5 tokens)" in message
    assert "--dspex-max-tokens" in message and "has no age" in message
    # the fields' own bound: named with the field option to raise
    long = "word " * 400
    server.responder = lambda body: long
    with pytest.raises(dspex.AdapterParseError, match=r"OutputField\(max_tokens=\.\.\.\)") as err:
        dspex.Predict("name -> reasoning: str, age: int", lm=make_lm(server), json_fallback=False)(name="Ada")
    assert "--dspex-max-tokens" not in str(err.value)


def test_an_answer_that_ends_normally_but_does_not_parse_is_not_called_truncated(server_factory, make_lm):
    server = server_factory(lambda body: " no idea")
    p = dspex.Predict("name -> age: int", lm=make_lm(server), json_fallback=False)
    with pytest.raises(dspex.AdapterParseError) as err:
        p(name="Ada")
    assert "truncated" not in str(err.value)
