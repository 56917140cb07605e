from __future__ import annotations

from typing import Literal

import pydantic
import pytest

import pytest_dspex as dspex
from pytest_dspex.programs.adapters import CompactAdapter


class Address(pydantic.BaseModel):
    city: str
    zip: str


class Extract(dspex.Signature):
    """Pull the address out of a letter."""

    letter: str = dspex.InputField(desc="the full letter")
    address: Address = dspex.OutputField()
    tags: list[str] = dspex.OutputField()
    urgent: bool = dspex.OutputField()
    priority: int = dspex.OutputField()
    confidence: float = dspex.OutputField()
    kind: Literal["complaint", "praise"] = dspex.OutputField()


def test_class_signature_collects_fields_in_order_with_docstring_instructions():
    assert list(Extract.input_fields()) == ["letter"]
    assert list(Extract.output_fields()) == ["address", "tags", "urgent", "priority", "confidence", "kind"]
    assert Extract.instructions == "Pull the address out of a letter."
    assert Extract.fields["letter"].desc == "the full letter"


def test_string_signature_untyped_and_typed():
    sig = dspex.make_signature("question, context -> answer")
    assert list(sig.input_fields()) == ["question", "context"]
    assert sig.fields["answer"].annotation is str
    typed = dspex.make_signature("question: str, docs: list[str] -> answer: int, label: Literal['a', 'b']")
    assert typed.fields["docs"].annotation == list[str]
    assert typed.fields["answer"].annotation is int
    assert typed.fields["label"].annotation == Literal["a", "b"]


@pytest.mark.parametrize(
    "spec",
    ["question answer", "a -> b -> c", "q -> ", "q: os.system('x') -> a", "q -> a: NotAType", "q, q -> a"],
)
def test_bad_string_signatures_are_clear_errors(spec):
    with pytest.raises(dspex.SignatureError):
        dspex.make_signature(spec)


def test_typed_field_without_marker_is_an_error():
    with pytest.raises(dspex.SignatureError, match="no InputField"):

        class Bad(dspex.Signature):
            question: str
            answer: str = dspex.OutputField()


def test_outputs_validated_by_pydantic_through_the_compact_adapter():
    completion = (
        ' {"city": "Lyon", "zip": "69001"}\n'
        "Tags: late, rude\nUrgent: yes\nPriority: 3\nConfidence: 0.75\nKind: Complaint."
    )
    values = CompactAdapter().parse(Extract, completion)
    assert values == {
        "address": Address(city="Lyon", zip="69001"),
        "tags": ["late", "rude"],
        "urgent": True,
        "priority": 3,
        "confidence": 0.75,
        "kind": "complaint",
    }


def test_invalid_output_is_a_typed_parse_error_naming_the_field():
    completion = ' {"city": "Lyon"}\nTags: a\nUrgent: yes\nPriority: high\nConfidence: 0.5\nKind: praise'
    with pytest.raises(dspex.AdapterParseError, match="priority|address"):
        CompactAdapter().parse(Extract, completion)


def test_literal_outside_the_choices_is_rejected():
    sig = dspex.make_signature("m -> team: Literal['billing', 'technical']")
    with pytest.raises(dspex.AdapterParseError, match="not one of billing, technical"):
        CompactAdapter().parse(sig, " marketing")


def test_fingerprint_covers_instructions_names_roles_and_types_only():
    from pytest_dspex.programs.signatures import diff_fingerprints, fingerprint

    base = fingerprint(dspex.make_signature("question -> answer", "Answer it."))
    assert base["fields"] == [{"name": "question", "role": "input", "type": "str"},
                              {"name": "answer", "role": "output", "type": "str"}]
    assert fingerprint(dspex.make_signature("question -> answer", "Answer it.")) == base

    class Described(dspex.Signature):
        """Answer it."""

        question: str = dspex.InputField(desc="what is asked")  # descriptions are wording, not shape
        answer: str = dspex.OutputField(prefix="A:")

    assert fingerprint(Described)["hash"] == base["hash"]
    assert diff_fingerprints(base, fingerprint(dspex.make_signature("query -> answer", "Answer it."))) == [
        "input field 'question' renamed to 'query'"]
    assert diff_fingerprints(base, fingerprint(dspex.make_signature("question -> answer, score: float", "Answer it."))) == [
        "output field 'score' (float) added"]
    assert diff_fingerprints(base, fingerprint(dspex.make_signature("question -> answer: int", "Answer it."))) == [
        "output field 'answer' type changed from str to int"]
    assert diff_fingerprints(base, fingerprint(dspex.make_signature("question, answer -> x", "Answer it."))) == [
        "output field 'x' (str) added", "field 'answer' changed from output to input"]
    assert diff_fingerprints(base, fingerprint(dspex.make_signature("question -> answer", "Reply."))) == [
        "instructions changed"]
    # default instructions follow the field names: a rename is not also an instructions change
    assert diff_fingerprints(fingerprint(dspex.make_signature("q -> a")), fingerprint(dspex.make_signature("q -> b"))) == [
        "output field 'a' renamed to 'b'"]
