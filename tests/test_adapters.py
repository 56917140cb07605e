from __future__ import annotations

import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.adapters import ChatAdapter, CompactAdapter, JSONAdapter

QA = dspex.make_signature("question -> answer", "Answer briefly.")
DEMOS = [{"question": "1+1?", "answer": "2"}, {"question": "capital of France?", "answer": "Paris"}]


def test_compact_layout_lists_demos_then_the_query_and_ends_with_the_output_label():
    req = CompactAdapter().format(QA, DEMOS, {"question": "2+2?"})
    system, user = req.messages[0]["content"], req.messages[1]["content"]
    assert system.startswith("Answer briefly.")
    assert user == "Question: 1+1?\nAnswer: 2\n\nQuestion: capital of France?\nAnswer: Paris\n\nQuestion: 2+2?\nAnswer:"
    assert "\n\n" in req.stop and "\nQuestion:" in req.stop


def test_compact_parse_multi_field_answers_and_repeated_labels():
    sig = dspex.make_signature("question -> reasoning, answer")
    assert CompactAdapter().parse(sig, " because 2 and 2\nAnswer: 4") == {"reasoning": "because 2 and 2", "answer": "4"}
    assert CompactAdapter().parse(sig, "Reasoning: r\nAnswer: 4") == {"reasoning": "r", "answer": "4"}
    with pytest.raises(dspex.AdapterParseError, match="answer"):
        CompactAdapter().parse(sig, " only reasoning here")


def test_chat_adapter_speaks_the_dspy_layout():
    req = ChatAdapter().format(QA, DEMOS[:1], {"question": "2+2?"})
    roles = [m["role"] for m in req.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert "[[ ## question ## ]]\n1+1?" in req.messages[1]["content"]
    assert req.messages[2]["content"] == "[[ ## answer ## ]]\n2\n\n[[ ## completed ## ]]"
    assert "Respond with the corresponding output fields" in req.messages[3]["content"]
    assert ChatAdapter().parse(QA, "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]") == {"answer": "4"}
    with pytest.raises(dspex.AdapterParseError):
        ChatAdapter().parse(QA, "4")


def test_json_adapter_round_trip_and_errors():
    req = JSONAdapter().format(QA, DEMOS, {"question": "2+2?"})
    assert req.messages[-2]["content"] == '{"answer": "Paris"}'
    assert JSONAdapter().parse(QA, 'Here: {"answer": "4"}') == {"answer": "4"}
    with pytest.raises(dspex.AdapterParseError, match="not a JSON object"):
        JSONAdapter().parse(QA, "4")
    with pytest.raises(dspex.AdapterParseError, match="no key 'answer'"):
        JSONAdapter().parse(QA, '{"other": 1}')


def test_unknown_adapter_name():
    with pytest.raises(dspex.ConfigError, match="unknown adapter"):
        dspex.Predict(QA, adapter="xml")


def test_compact_answer_hint_only_where_the_demos_do_not_show_every_label_and_the_labels_still_parse_and_constrain():
    from typing import Literal

    class Intent(dspex.Signature):
        """Classify the message by intent."""

        message: str = dspex.InputField()
        intent: Literal["lost_card", "check_balance"] = dspex.OutputField()

    demos = [{"message": "card gone", "intent": "lost_card"}]
    zero_shot = CompactAdapter().format(Intent, [], {"message": "balance?"})
    assert "one of: lost card, check balance" in zero_shot.messages[0]["content"]  # no demo shows the labels
    some = CompactAdapter().format(Intent, demos, {"message": "balance?"})
    assert "one of: lost card, check balance" in some.messages[0]["content"]  # no demo shows "check balance"
    every = [*demos, {"message": "how much do I have", "intent": "check_balance"}]
    default = CompactAdapter().format(Intent, every, {"message": "balance?"})
    assert "one of" not in default.messages[0]["content"]
    forced = CompactAdapter(answer_hint=True).format(Intent, demos, {"message": "balance?"})
    assert "one of: lost card, check balance" in forced.messages[0]["content"]
    bare = CompactAdapter(answer_hint=False).format(Intent, demos, {"message": "balance?"})
    assert bare.messages[0] == {"role": "system", "content": "Classify the message by intent."}
    assert "Intent: lost card" in bare.messages[1]["content"]  # demos still show the labels as words
    assert bare.constraint == default.constraint  # the grammar still allows only the labels
    assert CompactAdapter(answer_hint=False).parse(Intent, " check balance") == {"intent": "check_balance"}

    class Bare(dspex.Signature):
        message: str = dspex.InputField()
        intent: Literal["lost_card", "check_balance"] = dspex.OutputField()

    Bare.instructions = ""
    only_user = CompactAdapter(answer_hint=False).format(Bare, [], {"message": "x"})
    assert [m["role"] for m in only_user.messages] == ["user"]


# -- strict typed parsing (issue 23): a number field takes a number, in every adapter -------------
NUMBERS = dspex.make_signature("m -> n: int, x: float")


def _each_adapter(n_text: str) -> list[tuple[str, object, str]]:
    """The same answer for ``n`` in each adapter's layout (JSON: as a JSON string)."""
    import json

    return [
        ("compact", CompactAdapter(), f"N: {n_text}\nX: 1.5"),
        ("chat", ChatAdapter(), f"[[ ## n ## ]]\n{n_text}\n\n[[ ## x ## ]]\n1.5\n\n[[ ## completed ## ]]"),
        ("json", JSONAdapter(), json.dumps({"n": n_text, "x": 1.5})),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), (" 42.", 42), ("-5", -5), ("1,234", 1234), ("**7**", 7), ("`12`", 12), ("98.0", 98), ("1e3", 1000)],
)
def test_a_number_field_accepts_a_number(text, value):
    for name, adapter, completion in _each_adapter(text):
        assert adapter.parse(NUMBERS, completion) == {"n": value, "x": 1.5}, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("98.7", "expected a whole number"),
        ("0x1A", "expected a number"),
        ("version 3 of 5", "expected a number"),
        ("result2-039a296fde", "expected a number"),
        ("12,34", "expected a number"),
        ("seven", "expected a number"),
        ("1e400", "out of range"),
        ("nan", "expected a number"),
    ],
)
def test_digits_inside_other_text_or_out_of_range_are_parse_misses(text, message):
    for name, adapter, completion in _each_adapter(text):
        with pytest.raises(dspex.AdapterParseError, match=message):
            adapter.parse(NUMBERS, completion)
            pytest.fail(f"{name} parsed {text!r}")


def test_json_numbers_follow_the_same_rules():
    assert JSONAdapter().parse(NUMBERS, '{"n": 4, "x": 2}') == {"n": 4, "x": 2.0}
    for body, message in [('{"n": 98.7, "x": 1}', "whole number"), ('{"n": 1e400, "x": 1}', "out of range"),
                          ('{"n": true, "x": 1}', "expected a number"), ('{"n": 1, "x": 1e400}', "out of range")]:  # fmt: skip
        with pytest.raises(dspex.AdapterParseError, match=message):
            JSONAdapter().parse(NUMBERS, body)


def test_an_out_of_range_answer_falls_back_to_json_and_is_a_parse_miss_not_a_program_error(server_factory, make_lm):
    import asyncio

    from pytest_dspex.evaluation.scoring import evaluate_records

    sig = dspex.make_signature("m -> n: int")

    def responder(body):
        if "JSON" in body["messages"][0]["content"]:
            return '{"n": 1e400}' if "huge" in body["messages"][-1]["content"] else '{"n": 7}'
        return " 1e400"

    server = server_factory(responder)
    p = dspex.Predict(sig, lm=make_lm(server))
    assert p(m="fine").n == 7 and server.requests == 2  # the compact answer was out of range: JSON asked
    with pytest.raises(dspex.AdapterParseError, match="out of range"):
        p(m="huge")
    records = asyncio.run(
        evaluate_records(p, [(0, dspex.Example(m="huge", n=1).with_inputs("m"))], lambda e, pr, t=None: pr.n == e.n)
    )
    assert records[0].error_kind == "parse" and records[0].score == 0.0
