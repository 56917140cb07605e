"""Constrained decoding: typed outputs the endpoint enforces while it decodes.

An adapter describes what its answer must look like (``Constraint``): a GBNF grammar for the whole
completion (the compact and chat adapters: ``Literal``, ``bool``, ``int``, ``float`` and ``Enum``
fields become alternatives or number rules, the other fields stay free text on their line) or a JSON
schema (the JSON adapter). ``acomplete(lm, request)`` sends it in the form the endpoint speaks and
remembers, per LM object and endpoint, which form works:

=================  ====================================================================  ==============
dialect            body fields                                                           servers
=================  ====================================================================  ==============
``grammar``        ``grammar: <GBNF>``                                                   llama.cpp (``llama_cpp.server``,
                                                                                         ``llama-server``)
``vllm``           ``guided_grammar: <GBNF>`` / ``guided_json: <schema>``                vLLM 0.4–0.10 (newer
                                                                                         vLLM also takes
                                                                                         ``json_schema``)
``json_schema``    ``response_format: {type: json_schema, json_schema: {name, schema}}``  OpenAI, vLLM, llama-server
``json_object``    ``response_format: {type: json_object, schema: <schema>}``            llama-cpp-python
=================  ====================================================================  ==============

``auto`` (the default) tries ``grammar`` for grammar constraints (except on api.openai.com, which has
no grammar field) and ``json_object`` then ``json_schema`` for JSON ones (``json_schema`` only on
api.openai.com; llama-cpp-python 0.3.36 answers ``json_schema`` with a validation error). An endpoint that answers HTTP
400/422 to a form (or 500 naming the field, as llama-cpp-python does) is asked again without it, and that form is not sent to it again (the first
request probes while the others wait, so a rejecting endpoint costs one extra call, not one per
request). The fields are part of the request body, so part of the response-cache key.

    set_constrained_decoding(lm, "off")      # never send a constraint to this LM
    set_constrained_decoding(lm, "vllm")     # this LM is a vLLM server
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from ..errors import LMHTTPError
from ..lm.capabilities import Capabilities, capabilities_of
from ..lm.types import Constraint, LMRequest

if TYPE_CHECKING:
    from .signatures import FieldSpec, Signature

__all__ = [
    "Constraint",
    "Dialect",
    "acomplete",
    "answer_tokens",
    "chat_grammar",
    "choice_values",
    "compact_grammar",
    "constrained_decoding",
    "field_tokens",
    "json_schema_for",
    "set_constrained_decoding",
    "shown_choices",
]

Dialect = Literal["grammar", "vllm", "json_schema", "json_object"]
Mode = Literal["auto", "off", "grammar", "vllm", "json_schema", "json_object"]
_MODES = ("auto", "off", "grammar", "vllm", "json_schema", "json_object")
_REJECTED = (400, 422)


# -- values a field can take ----------------------------------------------------------------------
def choice_values(spec: FieldSpec) -> list[str] | None:
    """The texts a closed-set field (Literal, bool, Enum) may be written as, or None."""
    tp = spec.annotation
    if get_origin(tp) is Literal:
        return [_text(v) for v in get_args(tp)]
    if tp is bool:
        return ["true", "false"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [_text(m) for m in tp]
    return None


def choice_value(spec: FieldSpec, text: str) -> Any:
    """The value of a closed-set field written as ``text`` (one of ``choice_values``); KeyError if none."""
    tp = spec.annotation
    if tp is bool:
        return {"true": True, "false": False}[text]
    members = get_args(tp) if get_origin(tp) is Literal else list(tp) if isinstance(tp, type) and issubclass(tp, enum.Enum) else ()
    for member in members:
        if _text(member) == text:
            return member
    raise KeyError(text)


def shown_choices(spec: FieldSpec) -> dict[str, str] | None:
    """How the compact adapter shows a closed-set field's values: ``lost_card`` as ``lost card``.

    A small base model picks plain words far better than snake_case identifiers (measured on a
    6-intent task with 12 demos on Gemma 3 270M: 0.85–0.88 with ``lost card``-style labels,
    0.33–0.67 with ``lost_card``). Values are shown with spaces for underscores when that keeps
    them distinct; answers are mapped back to the real values. None when nothing changes.
    """
    tp = spec.annotation
    if get_origin(tp) is not Literal and not (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return None
    try:
        return _shown(tp)
    except TypeError:  # an unhashable annotation: work it out each time
        return _shown.__wrapped__(tp)


@functools.lru_cache(maxsize=512)
def _shown(annotation: Any) -> dict[str, str] | None:
    from .signatures import FieldSpec

    values = choice_values(FieldSpec(role="output", annotation=annotation))
    if not values or not any("_" in v for v in values):
        return None
    shown = {v: v.replace("_", " ") for v in values}
    if len(set(shown.values())) != len(set(values)):
        return None
    return shown


def _text(value: Any) -> str:
    from .signatures import render_value

    return render_value(value)


def _gbnf_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # GBNF string literals use JSON-style escapes


def _value_rule(spec: FieldSpec, free: str, *, shown: bool = False) -> str:
    choices = choice_values(spec)
    mapping = shown_choices(spec) if shown else None
    if choices is not None and mapping is not None:
        choices = [mapping[c] for c in choices]
    if choices is not None:
        return "(" + " | ".join(_gbnf_literal(c) for c in dict.fromkeys(choices)) + ")"
    if spec.annotation is int:
        return _INT_RULE
    if spec.annotation is float:
        return _FLOAT_RULE
    return free


# Numbers are bounded: a small model under an unbounded ``[0-9]+`` that would rather end the line
# keeps emitting digits up to the token limit (measured on Gemma 3 270M: ``20000000000…``, 12 s
# an answer); after at most 15 digits (6 decimals) the field must end.
_INT_RULE = '"-"? [0-9]{1,15}'
_FLOAT_RULE = '"-"? [0-9]{1,15} ("." [0-9]{1,6})?'

#: tokens a value may take by type when its field sets no ``max_tokens``; a free-text value is one
#: line in the compact layout (a paragraph for ChainOfThought's reasoning)
NUMBER_TOKENS = 16
TEXT_TOKENS = 96
REASONING_TOKENS = 192


def field_tokens(spec: FieldSpec) -> int | None:
    """The most tokens ``spec``'s value may take (None: no bound known, the LM's ``max_tokens`` applies).

    ``OutputField(max_tokens=N)`` wins; a closed set is bounded by its longest value (about a token
    for two characters, generously), a number by ``NUMBER_TOKENS``, free text by ``TEXT_TOKENS``
    (``REASONING_TOKENS`` for ChainOfThought's reasoning). Lists and structured values have none.
    """
    if spec.max_tokens is not None:
        return spec.max_tokens
    choices = choice_values(spec)
    if choices is not None:
        return 4 + max(len(c) for c in choices) // 2 if choices else 4
    if spec.annotation in (int, float):
        return NUMBER_TOKENS
    if spec.annotation is str:
        return REASONING_TOKENS if spec.name == "reasoning" else TEXT_TOKENS
    return None


def answer_tokens(signature: type[Signature], per_field: int = 0) -> int | None:
    """The most tokens a whole answer may take: each output's ``field_tokens`` plus ``per_field``
    (its label or header) — None when some output has no bound."""
    total = 0
    for spec in signature.output_fields().values():
        n = field_tokens(spec)
        if n is None:
            return None
        total += n + per_field + len(spec.label) // 2
    return total


def constrainable(signature: type[Signature]) -> bool:
    """Whether any output field has a closed form worth enforcing (closed set or number)."""
    return any(
        choice_values(f) is not None or f.annotation in (int, float) for f in signature.output_fields().values()
    )


@functools.lru_cache(maxsize=256)
def compact_grammar(signature: type[Signature]) -> str | None:
    """GBNF for the compact adapter's completion: the text after the prompt's last ``Label:``.

    ``Team: Literal[...]`` gives ``root ::= " "? ("billing" | "technical" | ...)``; later output
    fields follow on their own ``Label: value`` line. Free-text fields stay free on their line.
    """
    if not constrainable(signature):
        return None
    outs = list(signature.output_fields().values())
    line = "[^\\n]*"
    parts = [f'" "? {_value_rule(outs[0], line, shown=True)}']
    for f in outs[1:]:
        parts.append(f'{_gbnf_literal(chr(10) + f.label + ":")} " "? {_value_rule(f, line, shown=True)}')
    # a number or free text may end its line, after which the grammar is complete and only
    # end-of-text is left: a base model that never ends a turn by itself stops there instead of
    # writing digits to the token limit (a closed-set value is complete once written)
    end = "" if choice_values(outs[-1]) is not None else ' "\\n"?'
    return "root ::= " + " ".join(parts) + end + "\n"


@functools.lru_cache(maxsize=256)
def chat_grammar(signature: type[Signature]) -> str | None:
    """GBNF for the chat adapter's completion: ``[[ ## field ## ]]`` sections, then the end marker."""
    if not constrainable(signature):
        return None
    free = "free"
    parts = []
    for i, (name, f) in enumerate(signature.output_fields().items()):
        head = ("" if i == 0 else "\n\n") + f"[[ ## {name} ## ]]\n"
        parts.append(f"{_gbnf_literal(head)} {_value_rule(f, free)}")
    parts.append(_gbnf_literal("\n\n[[ ## completed ## ]]"))
    return "root ::= " + " ".join(parts) + '\nfree ::= ([^[] | "[" [^[])*\n'


@functools.lru_cache(maxsize=256)
def _json_schema(signature: type[Signature]) -> str:
    return json.dumps(_build_schema(signature))


def json_schema_for(signature: type[Signature]) -> dict[str, Any]:
    """A JSON schema for an object with one key per output field (pydantic's schema per type)."""
    return json.loads(_json_schema(signature))  # type: ignore[no-any-return]


def _build_schema(signature: type[Signature]) -> dict[str, Any]:
    """A JSON schema for an object with one key per output field (pydantic's schema per type)."""
    props: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for name, f in signature.output_fields().items():
        schema = dict(f.type_adapter.json_schema(ref_template="#/$defs/{model}"))
        defs.update(schema.pop("$defs", {}))
        props[name] = schema
    out: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }
    if defs:
        out["$defs"] = defs
    return out


# -- what the endpoint accepts (kept by the LM: ``lm.capabilities``) --------------------------------
def set_constrained_decoding(lm: Any, mode: Mode) -> None:
    """Choose how typed outputs are enforced on ``lm``: ``auto``, ``off`` or one dialect."""
    if mode not in _MODES:
        raise ValueError(f"constrained decoding mode must be one of {', '.join(_MODES)}, got {mode!r}")
    memo = capabilities_of(lm)
    memo.mode = mode
    memo.working.clear()
    memo.rejected.clear()


def constrained_decoding(lm: Any) -> dict[str, Any]:
    """What is known about ``lm``'s endpoint: the mode and the dialect that works per constraint kind."""
    memo = capabilities_of(lm)
    return {"mode": memo.mode, "working": {k[2]: v for k, v in memo.working.items()}}


def _endpoint(lm: Any) -> tuple[str, str]:
    return str(getattr(lm, "base_url", "")), str(getattr(lm, "model", ""))


def _candidates(lm: Any, memo: Capabilities, constraint: Constraint) -> list[Dialect]:
    mode = memo.mode
    if mode == "off":
        return []
    grammar_ok = constraint.kind == "grammar"
    if mode != "auto":
        fits = mode in ("grammar", "vllm") if grammar_ok else mode in ("vllm", "json_schema", "json_object")
        return [mode] if fits else []  # type: ignore[list-item]  # set_constrained_decoding checked it
    host = urlsplit(_endpoint(lm)[0]).hostname or ""
    if grammar_ok:
        return [] if host.endswith("openai.com") else ["grammar"]
    if host.endswith("openai.com"):
        return ["json_schema"]
    # llama.cpp's form first: llama-cpp-python answers json_schema with HTTP 500 (retried, counted
    # by the breaker); vLLM and llama-server take json_object too
    return ["json_object", "json_schema"]


def body_fields(dialect: Dialect, constraint: Constraint) -> dict[str, Any]:
    """The request-body fields that carry ``constraint`` in ``dialect``."""
    if constraint.kind == "grammar":
        if dialect == "vllm":
            return {"guided_grammar": constraint.grammar}
        return {"grammar": constraint.grammar}
    schema = dict(constraint.schema or {})
    if dialect == "vllm":
        return {"guided_json": schema}
    if dialect == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": constraint.name, "schema": schema}}}


def _rejects(exc: LMHTTPError, dialect: Dialect) -> bool:
    """Whether ``exc`` says the endpoint does not take ``dialect``'s fields.

    HTTP 400/422, or a 500 naming the field: llama-cpp-python answers a request-validation error
    (``response_format.type: json_schema``) with 500.
    """
    if exc.status in _REJECTED:
        return True
    text = str(exc)
    return exc.status == 500 and any(name in text for name in _FIELD_NAMES[dialect])


_FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "grammar": ("grammar",),
    "vllm": ("guided_grammar", "guided_json"),
    "json_schema": ("response_format", "json_schema"),
    "json_object": ("response_format", "json_object"),
}


def with_constraint(request: LMRequest, dialect: Dialect | None) -> LMRequest:
    """``request`` with the constraint's body fields in ``dialect`` (or none), ready for the client."""
    if dialect is None or request.constraint is None:
        return replace(request, constraint=None)
    extra = {**(request.extra or {}), **body_fields(dialect, request.constraint)}
    return replace(request, extra=extra, constraint=None)


async def acomplete(lm: Any, request: LMRequest, **params: Any) -> Any:
    """``lm.acomplete(request)`` with the request's constraint in a form the endpoint accepts."""
    constraint = request.constraint
    if constraint is None:
        return await lm.acomplete(request, **params)
    memo = capabilities_of(lm)
    base_url, model = _endpoint(lm)
    key = (base_url, model, constraint.kind)
    if key in memo.working:
        return await lm.acomplete(with_constraint(request, memo.working[key]), **params)
    dialects = [d for d in _candidates(lm, memo, constraint) if (base_url, model, d) not in memo.rejected]
    if not dialects:
        return await lm.acomplete(with_constraint(request, None), **params)
    probe = memo.probes.get(key)
    loop = asyncio.get_running_loop()
    if probe is not None and probe.get_loop() is loop and not probe.done():
        await asyncio.shield(probe)  # another request is finding out what this endpoint accepts
        return await acomplete(lm, request, **params)
    mine: asyncio.Future[None] = loop.create_future()
    memo.probes[key] = mine
    rejected: list[tuple[str, str, str]] = []
    try:
        for dialect in dialects:
            try:
                completion = await lm.acomplete(with_constraint(request, dialect), **params)
            except LMHTTPError as exc:
                if not _rejects(exc, dialect):
                    raise
                rejected.append((base_url, model, dialect))
                continue
            memo.rejected.update(rejected)
            memo.working[key] = dialect
            return completion
        # if the request fails without the constraint too, the constraint was not the problem:
        # its error propagates and nothing is remembered
        completion = await lm.acomplete(with_constraint(request, None), **params)
        memo.rejected.update(rejected)
        memo.working[key] = None
        return completion
    finally:
        if not mine.done():
            mine.set_result(None)
        memo.probes.pop(key, None)


def choices_of(signature: type[Signature]) -> dict[str, Sequence[str]]:
    """Output fields with a closed set of values (for demo selection): name -> the values."""
    found: dict[str, Sequence[str]] = {}
    for name, f in signature.output_fields().items():
        values = choice_values(f)
        if values is not None:
            found[name] = values
    return found
