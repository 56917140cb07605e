"""The compiled program outside pytest: load a golden file into your program, or see what it sends.

In production code, build the program as in your tests and load its golden (no pytest needed)::

    import pytest_dspex as dspex

    triage = dspex.load_golden(dspex.Predict(Triage), "tests/__dspex__/test_triage/triage.json")
    dspex.configure(lm=dspex.LM("gpt-4o-mini"))
    triage(message="I was charged twice").team

Without your code at hand, ``golden_requests`` rebuilds each predictor from what the golden
records (instructions, fields with their types, descriptions and labels, demos) and renders the
exact request it sends; ``python -m pytest_dspex prompt GOLDEN`` prints it.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from ..errors import GoldenFileError
from ..programs.adapters import Adapter, LMRequest, get_adapter
from ..programs.modules import Module, Predict
from ..programs.signatures import FieldSpec, Signature, _parse_type, make_signature
from .file import GoldenFile, read_golden
from .record import placeholder_messages

__all__ = ["golden_adapters", "golden_predictors", "golden_requests", "load_golden", "read_golden"]

ModuleT = TypeVar("ModuleT", bound=Module)


def load_golden(program: ModuleT, path: str | os.PathLike[str]) -> ModuleT:
    """A copy of ``program`` with the compiled demos of the golden file at ``path``.

    The program's predictors must match the golden's (same paths and fields); otherwise a
    ``GoldenFileError`` says what differs. The original ``program`` is left unchanged.
    """
    loaded = read_golden(path).apply(program)
    return loaded  # type: ignore[return-value]  # apply() returns a deep copy of the same class


# -- rebuilding predictors from the golden alone ------------------------------------------------
_TYPE_NAME = re.compile(r"[A-Za-z_]\w*")


def _annotation(text: str, where: str) -> Any:
    """The type a golden records as text (``str``, ``Literal['a', 'b']``, ``list[str]``, ``Ticket``...).

    Names the golden cannot resolve (the user's own pydantic models) become stand-in classes of
    the same name: prompts show the type's name, which is all an adapter uses of it.
    """
    text = text.strip() or "str"
    if text.startswith("Literal[") and text.endswith("]"):
        try:
            values = ast.literal_eval(f"({text[len('Literal[') : -1]},)")
            return Literal[values]
        except (ValueError, SyntaxError):
            pass
    extra = {name: type(name, (), {}) for name in _TYPE_NAME.findall(text)}
    for known in ("str", "int", "float", "bool", "list", "dict", "tuple", "Literal", "Optional", "Union", "Any", "None"):
        extra.pop(known, None)
    try:
        return _parse_type(text, where, extra)
    except Exception:
        return type(text, (), {})


def _signature(entry: Mapping[str, Any], where: str) -> type[Signature]:
    fields = entry.get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, Mapping) and f.get("name") for f in fields):
        raise GoldenFileError(f"{where}: corrupted golden file (signature has no list of named fields)")
    specs: dict[str, FieldSpec] = {}
    for f in fields:
        role: Literal["input", "output"] = "input" if f.get("role") == "input" else "output"
        prefix = f.get("prefix") or None
        specs[str(f["name"])] = FieldSpec(
            role=role,
            name=str(f["name"]),
            desc=str(f.get("desc") or ""),
            prefix=str(prefix) if prefix else None,
            annotation=_annotation(str(f.get("type") or "str"), where),
        )
    ins = [n for n, s in specs.items() if s.role == "input"]
    outs = [n for n, s in specs.items() if s.role == "output"]
    if not outs:
        raise GoldenFileError(f"{where}: corrupted golden file (signature has no output field)")
    sig = make_signature(f"{', '.join(ins)} -> {', '.join(outs)}")
    sig.fields = specs
    sig.instructions = str(entry.get("instructions") or "")
    return sig


def golden_predictors(golden: GoldenFile) -> dict[str, Predict]:
    """One ``Predict`` per predictor path of the golden, with its signature and demos."""
    out: dict[str, Predict] = {}
    fingerprints = golden.data.get("signature_fingerprint") or {}
    for path, entry in golden.data["predictors"].items():
        where = f"{golden.path}: predictor {path!r}"
        sig_entry = entry.get("signature") or fingerprints.get(path)
        if not isinstance(sig_entry, Mapping):
            raise GoldenFileError(f"{where}: corrupted golden file (no signature recorded)")
        predictor = Predict(_signature(sig_entry, where))
        single = GoldenFile(golden.path, {**golden.data, "predictors": {"self": entry}})
        loaded = single.apply(predictor)
        assert isinstance(loaded, Predict)
        out[path] = loaded
    return out


_ADAPTERS = ("compact", "chat", "json")


def golden_adapters(golden: GoldenFile, predictors: Mapping[str, Predict] | None = None) -> dict[str, str]:
    """The adapter each predictor of the golden's program uses, per predictor path.

    The one the golden names, else the one whose layout gives the prompt it recorded for that
    predictor (schema 2 records each predictor's messages with ``{field}`` placeholders), else
    ``compact``, the default of ``Predict``.
    """
    predictors = golden_predictors(golden) if predictors is None else predictors
    for holder in (golden.data, golden.data.get("model") or {}):
        name = holder.get("adapter") if isinstance(holder, Mapping) else None
        if isinstance(name, str) and name:
            return dict.fromkeys(predictors, name)
    recorded = golden.data.get("prompts")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    out: dict[str, str] = {}
    for path, predictor in predictors.items():
        messages = recorded.get(path)
        out[path] = next(
            (n for n in _ADAPTERS if messages and placeholder_messages(get_adapter(n), predictor) == list(messages)),
            "compact",
        )
    return out


def golden_requests(
    golden: GoldenFile,
    *,
    inputs: Mapping[str, Any] | None = None,
    adapter: str | Adapter | None = None,
) -> dict[str, LMRequest]:
    """The request each predictor of ``golden`` sends, per predictor path.

    Inputs not given are shown as ``{field}`` placeholders; text given for a field of another type
    (``list[str]``, ``int``, a model) is read as JSON when it parses, as the program would get it.
    ``adapter`` defaults to each predictor's own (``golden_adapters``). An input naming no field of
    any predictor is a ``GoldenFileError`` (a typo would otherwise print a prompt with a placeholder).
    """
    predictors = golden_predictors(golden)
    given = dict(inputs or {})
    known = {n for p in predictors.values() for n in p.signature.input_fields()}
    unknown = sorted(set(given) - known)
    if unknown:
        raise GoldenFileError(
            f"{golden.path}: no predictor has the input field(s) {', '.join(unknown)} "
            f"(input fields: {', '.join(sorted(known)) or 'none'})"
        )
    adapters = golden_adapters(golden, predictors) if adapter is None else dict.fromkeys(predictors, adapter)
    requests = {}
    for path, predictor in predictors.items():
        values = {n: _value(spec, given[n]) if n in given else f"{{{n}}}" for n, spec in predictor.signature.input_fields().items()}
        requests[path] = get_adapter(adapters[path]).format(predictor.signature, predictor.demos, values)
    return requests


def _value(spec: FieldSpec, value: Any) -> Any:
    if isinstance(value, str) and spec.annotation is not str:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
