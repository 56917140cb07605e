"""Typed signatures: what goes into a program and what comes out.

Class form (instructions from the docstring, types from annotations)::

    class Triage(Signature):
        \"\"\"Route a customer message to the team that should handle it.\"\"\"
        message: str = InputField()
        team: Literal["billing", "technical"] = OutputField(desc="the team")

String form, optionally typed: ``"question, context -> answer"``,
``"question: str -> answer: int"``. Output values are validated by pydantic against the
annotation (``Literal``, ``int``, ``float``, ``bool``, ``list[...]``, nested models).
"""

from __future__ import annotations

import enum
import functools
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from .._support.types import is_pydantic_model
from ..errors import SignatureError

if TYPE_CHECKING:
    import pydantic

__all__ = [
    "FieldSpec",
    "InputField",
    "OutputField",
    "Signature",
    "diff_fingerprints",
    "ensure_signature",
    "fingerprint",
    "make_signature",
]


@dataclass(frozen=True)
class FieldSpec:
    """One field of a signature: its name, type, role and how it is shown to the LM."""

    role: Literal["input", "output"]
    desc: str = ""
    prefix: str | None = None
    name: str = ""
    annotation: Any = str
    #: the most tokens this output's value may take (None: worked out from its type, ``constrained.field_tokens``)
    max_tokens: int | None = None
    _adapter: Any = field(default=None, compare=False, repr=False)

    @functools.cached_property  # frozen: computed once (adapters ask for it several times per call)
    def label(self) -> str:
        """The human label used by the compact adapter ("question_text" -> "Question Text")."""
        if self.prefix:
            return self.prefix.rstrip(":").strip()
        return " ".join(w.capitalize() for w in self.name.split("_"))

    @property
    def type_adapter(self) -> pydantic.TypeAdapter[Any]:
        if self._adapter is None:  # pydantic imported here: a signature of plain text fields never needs it
            import pydantic

            object.__setattr__(self, "_adapter", pydantic.TypeAdapter(self.annotation))
        return self._adapter  # type: ignore[no-any-return]

    @property
    def type_name(self) -> str:
        return type_to_str(self.annotation)


def InputField(*, desc: str = "", prefix: str | None = None) -> Any:
    """Declare an input field of a class-form signature."""
    return FieldSpec(role="input", desc=desc, prefix=prefix)


def OutputField(*, desc: str = "", prefix: str | None = None, max_tokens: int | None = None) -> Any:
    """Declare an output field of a class-form signature.

    ``max_tokens`` bounds the value's length in tokens; by default it follows the type (a number
    16, a line of free text 96, a closed set its longest value: ``constrained.field_tokens``), so
    an answer that runs away is cut short instead of running to the LM's ``max_tokens``.
    """
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise SignatureError(f"OutputField(max_tokens=...) must be a positive int, got {max_tokens!r}")
    return FieldSpec(role="output", desc=desc, prefix=prefix, max_tokens=max_tokens)


def type_to_str(tp: Any) -> str:
    if tp is str or tp is int or tp is float or tp is bool:
        return str(tp.__name__)
    origin = get_origin(tp)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(tp)) + "]"
    if origin is not None:
        args = ", ".join(type_to_str(a) for a in get_args(tp))
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{args}]" if args else name
    return getattr(tp, "__name__", str(tp))


class SignatureMeta(type):
    fields: dict[str, FieldSpec]
    instructions: str

    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> SignatureMeta:
        cls = super().__new__(mcs, name, bases, ns)
        fields: dict[str, FieldSpec] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "fields", {}) or {})
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:
            hints = {}
        annotations = ns.get("__annotations__", {})
        for attr, value in list(ns.items()):
            if isinstance(value, FieldSpec):
                tp = hints.get(attr, annotations.get(attr, str))
                if isinstance(tp, str):
                    tp = _parse_type(tp, name)
                fields[attr] = replace(value, name=attr, annotation=tp)
        for attr in annotations:
            if attr not in ns and attr not in ("instructions", "fields") and not attr.startswith("_"):
                raise SignatureError(
                    f"{name}.{attr} has a type but no InputField()/OutputField(): "
                    f"write `{attr}: ... = dspex.InputField()`"
                )
        cls.fields = fields
        doc = ns.get("__doc__")
        if "instructions" not in ns:
            cls.instructions = (
                _clean_doc(doc) if doc else getattr(cls, "instructions", "") or _default_instructions(fields)
            )
        return cls

    def __repr__(cls) -> str:
        return f"Signature({cls.signature_string()!r})"  # type: ignore[attr-defined]


def _clean_doc(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)


def _default_instructions(fields: dict[str, FieldSpec]) -> str:
    ins = ", ".join(f"`{n}`" for n, f in fields.items() if f.role == "input")
    outs = ", ".join(f"`{n}`" for n, f in fields.items() if f.role == "output")
    if not ins and not outs:
        return ""
    return f"Given the fields {ins}, produce the fields {outs}."


class Signature(metaclass=SignatureMeta):
    """Base class of signatures. Subclass it, or build one with ``make_signature``."""

    fields: ClassVar[dict[str, FieldSpec]] = {}
    instructions: ClassVar[str] = ""

    def __init__(self) -> None:  # pragma: no cover - signatures are used as classes
        raise TypeError("a Signature is used as a class; do not instantiate it")

    @classmethod
    def input_fields(cls) -> dict[str, FieldSpec]:
        return {n: f for n, f in cls.fields.items() if f.role == "input"}

    @classmethod
    def output_fields(cls) -> dict[str, FieldSpec]:
        return {n: f for n, f in cls.fields.items() if f.role == "output"}

    @classmethod
    def signature_string(cls) -> str:
        ins = ", ".join(cls.input_fields())
        outs = ", ".join(cls.output_fields())
        return f"{ins} -> {outs}"

    @classmethod
    def with_wording(
        cls, instructions: str | None = None, fields: Mapping[str, Mapping[str, str | None]] | None = None
    ) -> type[Signature]:
        """A copy with other instructions and/or other ``desc``/``prefix`` for some fields (by name).

        Wording only: names, roles and types (what a golden's fingerprint pins) stay as they are; a
        field name the signature does not have is a ``SignatureError``.
        """
        specs = dict(cls.fields)
        for name, change in (fields or {}).items():
            if name not in specs:
                raise SignatureError(
                    f"{cls.__name__} has no field {name!r} to reword (fields: {', '.join(specs)})"
                )
            spec = specs[name]
            specs[name] = replace(
                spec,
                desc=spec.desc if change.get("desc") is None else str(change["desc"]),
                prefix=spec.prefix if change.get("prefix") is None else str(change["prefix"]),
            )
        text = cls.instructions if instructions is None else instructions
        return _derive(cls, instructions=text, fields=specs)

    @classmethod
    def ordered_fields(cls) -> list[FieldSpec]:
        """Inputs, then outputs, each in declaration order (the order of DSPy's ``signature.fields``)."""
        return [*cls.input_fields().values(), *cls.output_fields().values()]

    @classmethod
    def prepend_output(cls, name: str, spec: FieldSpec, annotation: Any = str) -> type[Signature]:
        """A copy with an extra output field placed before the others (ChainOfThought)."""
        fields = {n: f for n, f in cls.fields.items() if f.role == "input"}
        fields[name] = replace(spec, name=name, annotation=annotation, role="output")
        fields.update(cls.output_fields())
        return _derive(cls, instructions=cls.instructions, fields=fields)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """A JSON-able description (used in golden files)."""
        return {
            "instructions": cls.instructions,
            "fields": [
                {"name": f.name, "role": f.role, "type": f.type_name, "desc": f.desc, "prefix": f.label + ":"}
                for f in cls.fields.values()
            ],
        }


def _derive(base: type[Signature], *, instructions: str, fields: dict[str, FieldSpec]) -> type[Signature]:
    ns: dict[str, Any] = {"instructions": instructions, "__doc__": base.__doc__}
    new = SignatureMeta(base.__name__, (Signature,), ns)
    new.fields = fields
    return typing.cast(type[Signature], new)


_SAFE_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "Literal": Literal,
    "Optional": Optional,
    "Union": Union,
    "Any": Any,
    "List": list,
    "Dict": dict,
    "None": None,
}


def _parse_type(text: str, where: str, extra: dict[str, Any] | None = None) -> Any:
    names = dict(_SAFE_TYPES)
    names.update(extra or {})
    if not re.fullmatch(r"[\w\[\],\s'\"|.\-]+", text):
        raise SignatureError(f"{where}: type {text!r} is not a plain type expression")
    try:
        return eval(text, {"__builtins__": {}}, names)  # restricted: names above only
    except Exception as exc:
        raise SignatureError(f"{where}: cannot read type {text!r}: {exc}") from exc


_FIELD_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?::\s*(.+?))?\s*$")


def _split_fields(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def make_signature(
    spec: str, instructions: str | None = None, *, custom_types: dict[str, Any] | None = None
) -> type[Signature]:
    """Build a signature from its string form, e.g. ``"question: str -> answer: int"``."""
    if spec.count("->") != 1:
        raise SignatureError(f"signature {spec!r} must have exactly one '->'")
    left, right = spec.split("->")
    fields: dict[str, FieldSpec] = {}
    for role, side in (("input", left), ("output", right)):
        for part in _split_fields(side):
            m = _FIELD_RE.match(part)
            if not m:
                raise SignatureError(f"signature {spec!r}: cannot read field {part.strip()!r}")
            fname, tp_text = m.group(1), m.group(2)
            if fname in fields:
                raise SignatureError(f"signature {spec!r}: field {fname!r} appears twice")
            tp = _parse_type(tp_text, f"signature {spec!r}", custom_types) if tp_text else str
            fields[fname] = FieldSpec(role=role, name=fname, annotation=tp)  # type: ignore[arg-type]
    if not any(f.role == "output" for f in fields.values()):
        raise SignatureError(f"signature {spec!r} has no output field")
    ns: dict[str, Any] = {"instructions": instructions or _default_instructions(fields)}
    cls = SignatureMeta("StringSignature", (Signature,), ns)
    cls.fields = fields
    return typing.cast(type[Signature], cls)


def ensure_signature(signature: str | type[Signature]) -> type[Signature]:
    if isinstance(signature, str):
        return make_signature(signature)
    if isinstance(signature, type) and issubclass(signature, Signature):
        if not signature.output_fields():
            raise SignatureError(f"signature {signature.__name__} has no OutputField()")
        return signature
    raise SignatureError(
        f"expected a Signature subclass or a string like 'question -> answer', got {signature!r}"
    )


# -- fingerprints (golden files record them; a golden whose fingerprint differs is stale) ---------
def fingerprint_of(instructions: str, fields: list[dict[str, str]]) -> dict[str, Any]:
    """``{"hash", "instructions", "fields": [{"name", "role", "type"}]}`` for the given parts.

    The hash is the first 16 hex digits of the sha256 of the canonical JSON of instructions and fields
    (in order): field descriptions and prefixes are prompt wording, not shape, and are left out.
    """
    import hashlib
    import json

    shape = [{"name": f["name"], "role": f["role"], "type": f["type"]} for f in fields]
    text = json.dumps({"fields": shape, "instructions": instructions}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return {"hash": "sha256:" + digest, "instructions": instructions, "fields": shape}


def fingerprint(signature: type[Signature]) -> dict[str, Any]:
    """The signature's fingerprint: instructions, and each field's name, role and type, hashed."""
    fields = [{"name": f.name, "role": f.role, "type": f.type_name} for f in signature.fields.values()]
    return fingerprint_of(signature.instructions, fields)


def renamed_fields(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """``{new name: old name}`` of the fields ``diff_fingerprints`` reads as renamed: one removed and
    another added with the same role at the same position."""
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    new_fields = {f["name"]: f for f in new.get("fields", [])}
    old_pos = {n: i for i, n in enumerate(old_fields)}
    new_pos = {n: i for i, n in enumerate(new_fields)}
    added = [f for n, f in new_fields.items() if n not in old_fields]
    out: dict[str, str] = {}
    for name, r in old_fields.items():
        if name in new_fields:
            continue
        match = next((a for a in added if a["role"] == r["role"] and new_pos[a["name"]] == old_pos[name]), None)
        if match is not None:
            added.remove(match)
            out[match["name"]] = name
    return out


def diff_fingerprints(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from ``old`` to ``new`` (two ``fingerprint`` dicts), one phrase per change.

    A field removed and another added with the same role at the same position reads as a rename.
    """
    changes: list[str] = []
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    new_fields = {f["name"]: f for f in new.get("fields", [])}
    removed = [f for n, f in old_fields.items() if n not in new_fields]
    added = [f for n, f in new_fields.items() if n not in old_fields]
    old_pos = {n: i for i, n in enumerate(old_fields)}
    new_pos = {n: i for i, n in enumerate(new_fields)}
    for r in list(removed):
        match = next(
            (a for a in added if a["role"] == r["role"] and new_pos[a["name"]] == old_pos[r["name"]]), None
        )
        if match is not None:
            removed.remove(r)
            added.remove(match)
            text = f"{r['role']} field {r['name']!r} renamed to {match['name']!r}"
            if match["type"] != r["type"]:
                text += f" (type {r['type']} -> {match['type']})"
            changes.append(text)
    changes += [f"{f['role']} field {f['name']!r} removed" for f in removed]
    changes += [f"{f['role']} field {f['name']!r} ({f['type']}) added" for f in added]
    for name, f in new_fields.items():
        o = old_fields.get(name)
        if o is None:
            continue
        if o["role"] != f["role"]:
            changes.append(f"field {name!r} changed from {o['role']} to {f['role']}")
        if o["type"] != f["type"]:
            changes.append(f"{f['role']} field {name!r} type changed from {o['type']} to {f['type']}")
    if old.get("instructions", "") != new.get("instructions", "") and not (
        _is_default(old) and _is_default(new)  # default instructions follow the field names
    ):
        changes.append("instructions changed")
    if not changes and old.get("hash") != new.get("hash"):
        changes.append("field order changed")
    return changes


def _is_default(fp: dict[str, Any]) -> bool:
    fields = fp.get("fields", [])
    specs = {f["name"]: FieldSpec(role=f["role"], name=f["name"]) for f in fields}
    return bool(fp.get("instructions", "") == _default_instructions(specs))


def render_value(value: Any) -> str:
    """A field value as prompt text: strings as they are, enums by value, models and the rest as JSON."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return value
    if is_pydantic_model(value):
        return str(value.model_dump_json())
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except TypeError:
        return str(value)
