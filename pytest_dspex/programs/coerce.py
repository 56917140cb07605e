"""Reading one field of an answer as its type: ``coerce`` (text or a JSON value in, the field's
value out, or an ``AdapterParseError`` saying what was expected). The same rules whatever the
adapter that split the answer into fields.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal, get_args, get_origin

from ..errors import AdapterParseError
from .constrained import shown_choices
from .signatures import FieldSpec, render_value

__all__ = ["coerce"]


#: a whole answer that is a number: sign, digits (commas only between thousands), decimals, exponent
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _coerce_number(spec: FieldSpec, raw: Any, adapter: str) -> int | float:
    """An ``int`` or ``float`` field: the answer must be a number, nothing else.

    Text is stripped of surrounding quotes, backticks, bold and one final period; digits inside other
    text are not a number (``'version 3 of 5'``, ``'0x1A'``, ``'result2-039a'`` are parse misses), an
    int field takes an integral value only (``'98.7'`` is a miss, ``'98.0'`` is 98), and a value out of
    range (``1e400``, inf, NaN) is a miss. The same rule whatever the adapter (text or JSON value).
    """
    tp = spec.annotation
    value: Any = raw
    if isinstance(raw, str):
        text = raw.strip().strip("`'\"*").strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1]
        if not _NUMBER.fullmatch(text):
            value = None
        else:
            text = text.replace(",", "")
            literal_int = not any(c in text for c in ".eE")
            value = int(text) if literal_int else float(text)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterParseError(
            f"field {spec.name!r}: expected a number ({spec.type_name}), got {_short(render_value(raw))!r}",
            completion=render_value(raw), adapter=adapter,
        )  # fmt: skip
    if isinstance(value, float) and not math.isfinite(value):
        raise AdapterParseError(
            f"field {spec.name!r}: {_short(render_value(raw))!r} is out of range for {spec.type_name}",
            completion=render_value(raw), adapter=adapter,
        )  # fmt: skip
    if tp is int and isinstance(value, float):
        if not value.is_integer():
            raise AdapterParseError(
                f"field {spec.name!r}: expected a whole number (int), got {_short(render_value(raw))!r}",
                completion=render_value(raw), adapter=adapter,
            )  # fmt: skip
        value = int(value)
    result: int | float = spec.type_adapter.validate_python(value)
    return result


def coerce(spec: FieldSpec, raw: Any, adapter: str = "") -> Any:
    """Validate ``raw`` (text or JSON value) against the field's type; AdapterParseError if it can't."""
    tp = spec.annotation
    if tp is str:
        return raw.strip() if isinstance(raw, str) else render_value(raw)
    if tp is int or tp is float:
        return _coerce_number(spec, raw, adapter)
    if isinstance(raw, str) and (shown := shown_choices(spec)) is not None:
        back = {v.lower(): k for k, v in shown.items()}
        raw = back.get(raw.strip().strip("`'\"*").strip().rstrip(".!").strip().lower(), raw)
    if isinstance(raw, str):
        text = raw.strip()
        origin = get_origin(tp)
        if origin is Literal:
            return _coerce_literal(spec, text, adapter)
        if tp is bool:
            import pydantic  # the field's ``type_adapter`` imported it

            word = text.split()[0].strip(".,!").lower() if text else text
            try:
                return spec.type_adapter.validate_python(word)
            except pydantic.ValidationError:
                raise AdapterParseError(
                    f"field {spec.name!r}: expected bool, got {_short(text)!r}", completion=raw, adapter=adapter
                ) from None
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = _split_list(text) if origin is list else text
        raw = value
    import pydantic  # not at the top: a signature of plain text fields never needs it

    try:
        return spec.type_adapter.validate_python(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise AdapterParseError(
            f"field {spec.name!r}: expected {spec.type_name}: {first.get('msg')} (got {_short(render_value(raw))!r})",
            completion=render_value(raw), adapter=adapter,
        ) from None


def _split_list(text: str) -> list[str]:
    lines = [ln.strip().lstrip("-*•").strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        return lines
    return [p.strip() for p in text.split(",") if p.strip()]


def _coerce_literal(spec: FieldSpec, text: str, adapter: str) -> Any:
    options = get_args(spec.annotation)
    cleaned = text.strip().strip("`'\"*").strip().rstrip(".!").strip()
    low = cleaned.lower()
    for opt in options:
        if str(opt).lower() == low:
            return opt
    first = re.split(r"[\s,.;:!()]+", low, maxsplit=1)[0] if low else ""
    for opt in options:
        if str(opt).lower() == first:
            return opt
    raise AdapterParseError(
        f"field {spec.name!r}: {_short(text)!r} is not one of {', '.join(map(str, options))}",
        completion=text, adapter=adapter,
    )


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
