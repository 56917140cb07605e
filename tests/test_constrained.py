"""Constrained decoding: grammars and schemas per type, sent in the endpoint's dialect, 400 → fallback."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.adapters import ChatAdapter, CompactAdapter, JSONAdapter
from pytest_dspex.programs.constrained import (
    chat_grammar,
    compact_grammar,
    constrained_decoding,
    json_schema_for,
    set_constrained_decoding,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Triage(dspex.Signature):
    """Route a message."""

    message: str = dspex.InputField()
    team: Literal["billing", "technical", "account", "other"] = dspex.OutputField()


class Typed(dspex.Signature):
    """Every closed type."""

    q: str = dspex.InputField()
    ok: bool = dspex.OutputField()
    n: int = dspex.OutputField()
    x: float = dspex.OutputField()
    color: Color = dspex.OutputField()
    note: str = dspex.OutputField()


def test_compact_grammar_is_the_completion_after_the_prompts_last_label():
    assert compact_grammar(Triage) == 'root ::= " "? ("billing" | "technical" | "account" | "other")\n'
    grammar = compact_grammar(Typed)
    assert grammar is not None
    assert '" "? ("true" | "false")' in grammar
    # numbers are bounded (issue 26: an unbounded [0-9]+ let a small model write digits to the token limit)
    assert '"\\nN:" " "? "-"? [0-9]{1,15}' in grammar
    assert '"\\nX:" " "? "-"? [0-9]{1,15} ("." [0-9]{1,6})?' in grammar
    assert '"\\nColor:" " "? ("red" | "blue")' in grammar
    # free text is one line; the last field may end it, after which only end-of-text is left
    assert grammar.endswith('"\\nNote:" " "? [^\\n]* "\\n"?\n')


def test_a_number_last_may_end_its_line_a_label_last_is_complete_as_written():
    assert compact_grammar(dspex.make_signature("q -> a: str, n: int")).endswith('"-"? [0-9]{1,15} "\\n"?\n')
    assert compact_grammar(dspex.make_signature("q -> n: int, ok: bool")).endswith('("true" | "false")\n')


def test_requests_ask_for_no_more_tokens_than_the_fields_can_take(server_factory, make_lm):
    server = server_factory(lambda body: " mugs\nQuantity: 3")
    lm = make_lm(server, max_tokens=256)
    assert dspex.Predict("message -> item: str, quantity: int", lm=lm)(message="3 mugs").quantity == 3
    bounded = server.bodies[-1]["max_tokens"]
    assert bounded < 256  # a line of text and a number, not the LM's limit

    class Long(dspex.Signature):
        message: str = dspex.InputField()
        item: str = dspex.OutputField(max_tokens=200)
        quantity: int = dspex.OutputField()

    dspex.Predict(Long, lm=lm)(message="3 mugs")
    assert server.bodies[-1]["max_tokens"] > bounded
    dspex.Predict(Long, lm=lm.copy(max_tokens=20))(message="3 mugs")
    assert server.bodies[-1]["max_tokens"] == 20  # the LM's own limit still caps it


def test_an_output_field_max_tokens_must_be_positive():
    with pytest.raises(dspex.SignatureError, match="positive int"):
        dspex.OutputField(max_tokens=0)


def test_free_text_outputs_get_no_grammar():
    assert compact_grammar(dspex.make_signature("question -> reasoning, answer")) is None
    assert CompactAdapter().format(dspex.make_signature("q -> a"), [], {"q": "x"}).constraint is None


def test_chat_grammar_follows_the_dspy_sections():
    grammar = chat_grammar(Triage)
    assert grammar is not None
    assert grammar.startswith('root ::= "[[ ## team ## ]]\\n" ("billing" | ')
    assert '"\\n\\n[[ ## completed ## ]]"' in grammar
    req = ChatAdapter().format(Triage, [], {"message": "hi"})
    assert req.constraint is not None and req.constraint.grammar == grammar


def test_json_schema_has_one_required_key_per_output_with_pydantic_types():
    schema = json_schema_for(Typed)
    assert schema["required"] == ["ok", "n", "x", "color", "note"]
    props = schema["properties"]
    assert props["ok"]["type"] == "boolean" and props["n"]["type"] == "integer" and props["x"]["type"] == "number"
    assert props["color"]["enum"] == ["red", "blue"]
    req = JSONAdapter().format(Typed, [], {"q": "x"})
    assert req.constraint is not None and req.constraint.schema == schema


def test_grammars_compile_in_llama_cpp():
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    grammars = [compact_grammar(sig) for sig in (Triage, Typed)] + [chat_grammar(sig) for sig in (Triage, Typed)]
    assert all(g is not None for g in grammars)
    # in a child process: importing llama_cpp opens two /dev/null files it never closes (a ResourceWarning at exit)
    code = "import json, sys, llama_cpp\nfor g in json.load(sys.stdin):\n    llama_cpp.LlamaGrammar.from_string(g, verbose=False)\n"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(grammars), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_enum_values_are_shown_and_parsed_as_their_values():
    req = CompactAdapter().format(Typed, [{"q": "a", "ok": True, "n": 1, "x": 0.5, "color": Color.RED, "note": "n"}], {"q": "b"})
    assert "Color: red\n" in req.messages[1]["content"]
    out = CompactAdapter().parse(Typed, " true\nN: 3\nX: 1.5\nColor: blue\nNote: fine")
    assert out == {"ok": True, "n": 3, "x": 1.5, "color": Color.BLUE, "note": "fine"}


def _labels(body: dict[str, Any]) -> str:
    return " billing"


def test_grammar_goes_in_the_body_and_so_in_the_cache_key(server_factory, make_lm, tmp_path):
    server = server_factory(_labels)
    lm = make_lm(server, cache=dspex.ResponseCache(tmp_path / "cache"))
    p = dspex.Predict(Triage, lm=lm)
    assert p(message="refund").team == "billing"
    assert server.bodies[-1]["grammar"] == compact_grammar(Triage)
    assert constrained_decoding(lm)["working"] == {"grammar": "grammar"}
    set_constrained_decoding(lm, "off")
    p(message="refund")
    assert "grammar" not in server.bodies[-1]  # a different body: not answered from the cache
    assert server.requests == 2


def test_an_endpoint_that_rejects_the_field_is_asked_without_it_once_and_remembered(server_factory, make_lm):
    server = server_factory(_labels, reject_fields=("grammar",))
    lm = make_lm(server, concurrency=8)
    p = dspex.Predict(Triage, lm=lm)
    result = dspex.Evaluate(
        [dspex.Example(message=f"m{i}", team="billing").with_inputs("message") for i in range(12)],
        lambda e, pr, t=None: e.team == pr.team,
        concurrency=8,
    )(p)
    assert result.score == 1.0 and not result.errors
    # one probe rejected, then every request without the grammar (the others waited for the probe)
    assert server.counts["rejected"] == 1
    assert server.requests == 13
    assert constrained_decoding(lm)["working"] == {"grammar": None}
    assert all("grammar" not in b for b in server.bodies[1:])


def test_a_400_that_is_not_about_the_constraint_is_raised_and_not_remembered(server_factory, make_lm):
    server = server_factory(_labels, reject_fields=("grammar", "messages"))
    lm = make_lm(server)
    with pytest.raises(dspex.LMError, match="400"):
        dspex.Predict(Triage, lm=lm)(message="x")
    assert constrained_decoding(lm)["working"] == {}


def test_json_constraint_forms(server_factory, make_lm):
    seen: list[Any] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body.get("response_format"))
        return json.dumps({"team": "account"})

    server = server_factory(responder)
    lm = make_lm(server)
    p = dspex.Predict(Triage, lm=lm, adapter="json")
    assert p(message="x").team == "account"
    assert seen[-1] == {"type": "json_object", "schema": json_schema_for(Triage)}
    set_constrained_decoding(lm, "json_schema")
    p(message="y")
    assert seen[-1]["type"] == "json_schema" and seen[-1]["json_schema"]["schema"] == json_schema_for(Triage)
    set_constrained_decoding(lm, "vllm")
    p(message="z")
    assert server.bodies[-1]["guided_json"] == json_schema_for(Triage)


def test_json_constraint_tries_both_openai_and_llama_cpp_forms_before_going_without(server_factory, make_lm):
    server = server_factory(lambda body: json.dumps({"team": "other"}), reject_fields=("response_format",))
    lm = make_lm(server)
    p = dspex.Predict(Triage, lm=lm, adapter="json")
    assert p(message="x").team == "other"
    assert server.counts["rejected"] == 2 and server.requests == 3
    assert p(message="y").team == "other"
    assert server.requests == 4


def test_vllm_dialect_and_off():
    from pytest_dspex.programs.constrained import Constraint, body_fields

    c = Constraint("grammar", grammar="root ::= \"a\"\n")
    assert body_fields("vllm", c) == {"guided_grammar": c.grammar}
    assert body_fields("grammar", c) == {"grammar": c.grammar}
    with pytest.raises(ValueError, match="one of"):
        set_constrained_decoding(object(), "xml")  # type: ignore[arg-type]


class Intent(dspex.Signature):
    """Name the intent."""

    message: str = dspex.InputField()
    intent: Literal["lost_card", "check_balance", "other"] = dspex.OutputField()


def test_compact_shows_snake_case_labels_as_words_and_maps_answers_back():
    zero_shot = CompactAdapter().format(Intent, [], {"message": "q"})
    assert "(one of: lost card, check balance, other)" in zero_shot.messages[0]["content"]
    req = CompactAdapter().format(Intent, [{"message": "m", "intent": "lost_card"}], {"message": "q"})
    assert "Intent: lost card\n" in req.messages[1]["content"]
    assert req.constraint is not None
    assert req.constraint.grammar == 'root ::= " "? ("lost card" | "check balance" | "other")\n'
    assert CompactAdapter().parse(Intent, " lost card") == {"intent": "lost_card"}
    assert CompactAdapter().parse(Intent, " check_balance") == {"intent": "check_balance"}
    # the chat layout keeps DSPy's text
    assert "lost_card" in ChatAdapter().format(Intent, [], {"message": "q"}).messages[0]["content"]


def test_labels_that_would_collide_are_shown_as_they_are():
    from pytest_dspex.programs.constrained import shown_choices

    clash = dspex.make_signature("m -> x")
    spec = next(iter(Intent.output_fields().values()))
    assert shown_choices(spec) == {"lost_card": "lost card", "check_balance": "check balance", "other": "other"}

    class Clash(dspex.Signature):
        """c"""

        m: str = dspex.InputField()
        x: Literal["a_b", "a b"] = dspex.OutputField()

    assert shown_choices(next(iter(Clash.output_fields().values()))) is None
    assert shown_choices(next(iter(clash.output_fields().values()))) is None
