"""Prompt adapters: turn (signature, demos, inputs) into chat messages, and answers back into values.

* ``CompactAdapter`` (the default): instructions, then demos and the input as plain
  ``Field: value`` lines, ending with the first output label. Small base models continue it well.
* ``ChatAdapter``: DSPy's chat layout (``[[ ## field ## ]]`` sections, demos as user/assistant
  pairs, ``[[ ## completed ## ]]``), for chat models and parity with DSPy.
* ``JSONAdapter``: a JSON object validated by pydantic; ``Predict`` falls back to it when the
  primary adapter cannot parse an answer (one extra call, only then).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, get_args, get_origin

from .._support.types import is_pydantic_model
from ..errors import AdapterParseError
from ..lm.estimates import Expected
from ..lm.types import LMRequest
from .coerce import coerce
from .constrained import (
    Constraint,
    answer_tokens,
    chat_grammar,
    choice_values,
    compact_grammar,
    json_schema_for,
    shown_choices,
)
from .signatures import FieldSpec, Signature, render_value

__all__ = ["Adapter", "ChatAdapter", "CompactAdapter", "JSONAdapter", "LMRequest", "expected_answer", "get_adapter"]

Demo = Mapping[str, Any]


class Adapter(Protocol):
    name: str

    def format(self, signature: type[Signature], demos: Sequence[Demo], inputs: Mapping[str, Any]) -> LMRequest: ...

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]: ...


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _choices_hint(spec: FieldSpec, *, shown: bool = False) -> str:
    if get_origin(spec.annotation) is Literal:
        mapping = shown_choices(spec) if shown else None
        values = [str(a) for a in get_args(spec.annotation)]
        return " (one of: " + ", ".join(mapping.get(v, v) if mapping else v for v in values) + ")"
    if spec.annotation is not str:
        return f" ({spec.type_name})"
    return ""


def _shown_value(spec: FieldSpec, value: Any) -> str:
    """A value as the compact adapter shows it (closed-set values with spaces for underscores)."""
    text = render_value(value)
    if spec.role == "output":
        shown = shown_choices(spec)
        if shown is not None:
            return shown.get(text, text)
    return text


def _grammar_constraint(grammar: str | None) -> Constraint | None:
    return Constraint("grammar", grammar=grammar) if grammar else None


# -- compact -----------------------------------------------------------------------------------
class CompactAdapter:
    """``Field: value`` lines; demos separated by blank lines; ends with the first output label.

    The system message is the instructions, plus a ``Write the field (one of: ...)`` sentence unless
    the demos show every value of every closed-set output (``answer_hint=None``, the default;
    ``True`` always, ``False`` never). Where the demos show them all the line is left out: measured
    on Gemma 3 270M with the 12 demos of a 6-way intent task under the label grammar, the list of
    choices pulled answers towards some labels (held-out 0.52 -> 0.81 airline intents, 0.83 -> 0.90
    bank intents without it; 0.90/0.83 -> 0.94/0.94 once calibrated); a prompt whose demos miss a
    value keeps it, or a model without a grammar could never answer that value.
    """

    name = "compact"

    def __init__(self, *, answer_hint: bool | None = None) -> None:
        self.answer_hint = answer_hint

    def format(self, signature: type[Signature], demos: Sequence[Demo], inputs: Mapping[str, Any]) -> LMRequest:
        ins, outs = signature.input_fields(), signature.output_fields()
        hint = self.answer_hint if self.answer_hint is not None else not _demos_show_every_choice(signature, demos)
        system = _compact_system(signature, signature.instructions, hint)
        blocks = []
        for demo in demos:
            lines = [
                f"{f.label}: {_shown_value(f, demo[n])}"
                for n, f in (*ins.items(), *outs.items())
                if n in demo and demo[n] is not None
            ]
            blocks.append("\n".join(lines))
        query = [f"{f.label}: {render_value(inputs.get(n, ''))}" for n, f in ins.items()]
        query.append(f"{next(iter(outs.values())).label}:")
        blocks.append("\n".join(query))
        first_input = next(iter(ins.values())).label if ins else None
        stop = ["\n\n"] + ([f"\n{first_input}:"] if first_input else [])
        return LMRequest(
            messages=[*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": "\n\n".join(blocks)}],
            stop=tuple(stop),
            constraint=_grammar_constraint(compact_grammar(signature)),
            max_tokens=answer_tokens(signature, per_field=2),
        )

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        outs, pattern, starts_first, by_label = _compact_parsing(signature)
        text = completion.strip("\n")
        first = outs[0]
        if not starts_first.match(text):
            text = f"{first.label}: {text.lstrip()}"
        found: dict[str, str] = {}
        matches = list(pattern.finditer(text))
        for i, m in enumerate(matches):
            spec = by_label[m.group(1).lower()]
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            if spec.name not in found:
                found[spec.name] = text[m.end() : end].split("\n\n")[0].strip()
        if "reasoning" in found and not found["reasoning"] and len(outs) > 1:
            found["reasoning"] = "(none given)"  # ChainOfThought's rationale is optional
        missing = [f.name for f in outs if not found.get(f.name)]
        if missing:
            raise AdapterParseError(
                f"answer has no {', '.join(missing)} (expected lines like "
                f"'{by_label[next(iter(by_label))].label}: ...'): {_short(completion)!r}",
                completion=completion, adapter=self.name,
            )
        return {f.name: coerce(f, found[f.name], self.name) for f in outs}


def _demos_show_every_choice(signature: type[Signature], demos: Sequence[Demo]) -> bool:
    """Whether the demos show every value of every closed-set output (trivially true without such outputs)."""
    if not demos:
        return False
    for name, values in _closed_outputs(signature):
        shown = {v if isinstance(v, str) else render_value(v) for d in demos if (v := d.get(name)) is not None}
        if not values <= shown:
            return False
    return True


@functools.lru_cache(maxsize=256)
def _closed_outputs(signature: type[Signature]) -> tuple[tuple[str, frozenset[str]], ...]:
    """The closed-set output fields of a signature and their values, worked out once per signature."""
    found = ((name, choice_values(spec)) for name, spec in signature.output_fields().items())
    return tuple((name, frozenset(values)) for name, values in found if values is not None)


@functools.lru_cache(maxsize=256)
def _compact_system(signature: type[Signature], instructions: str, answer_hint: bool = True) -> str:
    """The compact layout's system message, built once per signature (and instructions, which may be set in place)."""
    if not answer_hint:
        return instructions.strip()
    system = instructions.strip()
    return (system + "\n" if system else "") + _answer_hint(signature)


def _answer_hint(signature: type[Signature]) -> str:
    """``Write the item (the product as written, lower case), then the quantity (a whole number).``

    A sentence, not ``Label: description`` lines: the prompt ends with the first output's label, and a
    270M base model continues the nearest ``Item: ...`` it has seen. Measured on Gemma 3 270M on an
    order-extraction task (bench/cases_extract.py): with ``Answer with: Item: the product as written,
    lower case; Quantity (int).`` every zero-shot item was that text; as a sentence, none was (a
    ChainOfThought's reasoning likewise stopped being ``think step by step ...``).
    """
    parts = []
    for f in signature.output_fields().values():
        about = [a for a in (f.desc.strip().rstrip("."), _type_words(f)) if a]
        parts.append(f"the {f.label.lower()}" + (f" ({'; '.join(about)})" if about else ""))
    return "Write " + ", then ".join(parts) + "."


def _type_words(spec: FieldSpec) -> str:
    """A field's type as a short phrase for the answer hint ("" for plain text)."""
    if get_origin(spec.annotation) is Literal or (isinstance(spec.annotation, type) and issubclass(spec.annotation, enum.Enum)):
        values = choice_values(spec) or []
        shown = shown_choices(spec) or {}
        return "one of: " + ", ".join(shown.get(v, v) for v in values)
    words = {int: "a whole number", float: "a number", bool: "true or false", str: ""}
    return words.get(spec.annotation, spec.type_name) if isinstance(spec.annotation, type) else spec.type_name


@functools.lru_cache(maxsize=256)
def _compact_parsing(
    signature: type[Signature],
) -> tuple[list[FieldSpec], re.Pattern[str], re.Pattern[str], dict[str, FieldSpec]]:
    """What parsing a compact answer needs, once per signature: output fields, label patterns, fields by label."""
    outs = list(signature.output_fields().values())
    labels = "|".join(re.escape(f.label) for f in outs)
    # labels usually start a line; small models sometimes put the next one mid-line
    pattern = re.compile(rf"(?:^|(?<=\s))({labels})\s*:", re.IGNORECASE | re.MULTILINE)
    starts_first = re.compile(rf"\s*{re.escape(outs[0].label)}\s*:", re.IGNORECASE)
    return outs, pattern, starts_first, {f.label.lower(): f for f in outs}


# -- chat (DSPy layout) ------------------------------------------------------------------------
_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")


class ChatAdapter:
    """DSPy's chat layout, so chat models see what they would see under DSPy."""

    name = "chat"

    def _system(self, signature: type[Signature]) -> str:
        return _chat_system(signature, signature.instructions)  # the same for every call of a signature

    @staticmethod
    def _build_system(signature: type[Signature]) -> str:
        def describe(fields: dict[str, FieldSpec]) -> str:
            return "\n".join(
                f"{i}. `{n}` ({f.type_name})" + (f": {f.desc}" if f.desc else "")
                for i, (n, f) in enumerate(fields.items(), 1)
            )

        ins, outs = signature.input_fields(), signature.output_fields()
        layout = "\n\n".join(
            [f"[[ ## {n} ## ]]\n{{{n}}}" for n in ins]
            + [f"[[ ## {n} ## ]]\n{{{n}}}" + _choices_hint(f) for n, f in outs.items()]
            + ["[[ ## completed ## ]]"]
        )
        return (
            f"Your input fields are:\n{describe(ins)}\nYour output fields are:\n{describe(outs)}\n"
            "All interactions will be structured in the following way, with the appropriate values "
            f"filled in.\n\n{layout}\nIn adhering to this structure, your objective is: \n"
            f"        {signature.instructions}"
        )

    def _user(self, signature: type[Signature], values: Mapping[str, Any], *, last: bool) -> str:
        parts = [f"[[ ## {n} ## ]]\n{render_value(values.get(n, ''))}" for n in signature.input_fields()]
        if last:
            outs = list(signature.output_fields())
            order = ", then ".join(f"`[[ ## {n} ## ]]`" for n in outs)
            parts.append(
                f"Respond with the corresponding output fields, starting with the field {order}, "
                "and then ending with the marker for `[[ ## completed ## ]]`."
            )
        return "\n\n".join(parts)

    def _assistant(self, signature: type[Signature], values: Mapping[str, Any]) -> str:
        parts = [
            f"[[ ## {n} ## ]]\n{render_value(values[n]) if values.get(n) is not None else 'Not supplied for this particular example.'}"
            for n in signature.output_fields()
        ]
        return "\n\n".join([*parts, "[[ ## completed ## ]]"])

    def format(self, signature: type[Signature], demos: Sequence[Demo], inputs: Mapping[str, Any]) -> LMRequest:
        messages = [{"role": "system", "content": self._system(signature)}]
        for demo in demos:
            messages.append({"role": "user", "content": self._user(signature, demo, last=False)})
            messages.append({"role": "assistant", "content": self._assistant(signature, demo)})
        messages.append({"role": "user", "content": self._user(signature, inputs, last=True)})
        budget = answer_tokens(signature, per_field=10)  # each field's ``[[ ## name ## ]]`` header
        return LMRequest(
            messages=messages, stop=("[[ ## completed ## ]]",), constraint=_grammar_constraint(chat_grammar(signature)),
            max_tokens=None if budget is None else budget + 12,  # and the end marker
        )

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        outs = signature.output_fields()
        sections: dict[str, str] = {}
        matches = list(_HEADER.finditer(completion))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(completion)
            if m.group(1) in outs and m.group(1) not in sections:
                sections[m.group(1)] = completion[m.end() : end].strip()
        missing = [n for n in outs if not sections.get(n)]
        if missing:
            raise AdapterParseError(
                f"answer has no [[ ## {missing[0]} ## ]] section: {_short(completion)!r}",
                completion=completion, adapter=self.name,
            )
        return {n: coerce(f, sections[n], self.name) for n, f in outs.items()}


@functools.lru_cache(maxsize=256)
def _chat_system(signature: type[Signature], instructions: str) -> str:
    """The chat layout's system message, built once per signature (and instructions, which may be set in place)."""
    return ChatAdapter._build_system(signature)


# -- JSON --------------------------------------------------------------------------------------
class JSONAdapter:
    """A JSON object with one key per output field; validated by pydantic."""

    name = "json"

    def format(self, signature: type[Signature], demos: Sequence[Demo], inputs: Mapping[str, Any]) -> LMRequest:
        outs = signature.output_fields()
        keys = ", ".join(f'"{n}" ({f.type_name})' for n, f in outs.items())
        system = (
            f"{signature.instructions}\nReply with one JSON object and nothing else. Keys: {keys}."
        ).strip()
        messages = [{"role": "system", "content": system}]

        def user(values: Mapping[str, Any]) -> str:
            return json.dumps({n: values.get(n) for n in signature.input_fields()}, ensure_ascii=False, default=str)

        for demo in demos:
            if all(n in demo for n in outs):
                messages.append({"role": "user", "content": user(demo)})
                answer = {n: _jsonable(demo[n]) for n in outs}
                messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
        messages.append({"role": "user", "content": user(inputs)})
        return LMRequest(messages=messages, stop=(), constraint=Constraint("json", schema=json_schema_for(signature)))

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        start, end = completion.find("{"), completion.rfind("}")
        if start < 0 or end <= start:
            raise AdapterParseError(f"answer is not a JSON object: {_short(completion)!r}", completion=completion, adapter=self.name)
        try:
            obj = json.loads(completion[start : end + 1])
        except ValueError as exc:
            raise AdapterParseError(f"answer is not valid JSON ({exc}): {_short(completion)!r}", completion=completion, adapter=self.name) from None
        if not isinstance(obj, dict):
            raise AdapterParseError("answer is not a JSON object", completion=completion, adapter=self.name)
        outs = signature.output_fields()
        missing = [n for n in outs if n not in obj]
        if missing:
            raise AdapterParseError(f"JSON answer has no key {missing[0]!r}", completion=completion, adapter=self.name)
        return {n: coerce(f, obj[n], self.name) for n, f in outs.items()}


def _jsonable(value: Any) -> Any:
    if is_pydantic_model(value):
        return value.model_dump(mode="json")
    return value


_BY_NAME: dict[str, type[Any]] = {"compact": CompactAdapter, "chat": ChatAdapter, "json": JSONAdapter}


def expected_answer(adapter: Adapter, signature: type[Signature], labels: Mapping[str, Any], demos: Sequence[Demo] = ()) -> Expected:
    """The answer ``labels`` make, written as ``adapter`` writes one (``--dspex-estimate`` counts its
    tokens): each output field the labels hold, with its markers; a field they lack is left empty
    and counted apart (a ChainOfThought's ``reasoning``, an intermediate field)."""
    outs = signature.output_fields()
    known = {n: labels[n] for n in outs if labels.get(n) is not None}
    if isinstance(adapter, ChatAdapter):
        text = "\n\n".join([*(f"[[ ## {n} ## ]]\n{render_value(known[n]) if n in known else ''}" for n in outs), "[[ ## completed ## ]]"])
    elif isinstance(adapter, JSONAdapter):
        text = json.dumps({n: _jsonable(known.get(n, "")) for n in outs}, ensure_ascii=False, default=str)
    elif isinstance(adapter, CompactAdapter):  # the prompt ends with the first field's label
        lines = [f"{f.label}: {_shown_value(f, known[n]) if n in known else ''}" for n, f in outs.items()]
        text = " " + "\n".join(lines).split(": ", 1)[1] if lines else ""
    else:  # an adapter of the user's: the values, a line each
        text = "\n".join(render_value(known[n]) for n in outs if n in known)
    missing = [n for n in outs if n not in known]
    rationales = tuple(render_value(d["reasoning"]) for d in demos if "reasoning" in missing and d.get("reasoning"))
    return Expected(text, reasoning="reasoning" in missing, unknown=len(missing) - ("reasoning" in missing), rationales=rationales)


def get_adapter(adapter: str | Adapter | None) -> Adapter:
    if adapter is None:
        return CompactAdapter()
    if isinstance(adapter, str):
        try:
            return _BY_NAME[adapter]()  # type: ignore[no-any-return]
        except KeyError:
            from ..errors import ConfigError

            raise ConfigError(f"unknown adapter {adapter!r}; choose one of {', '.join(_BY_NAME)}") from None
    return adapter
