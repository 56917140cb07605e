"""Datasets from JSONL, JSON and CSV files, with explicit input keys and seeded splits.

    train = load_dataset("data/triage_train.jsonl", input_keys=["message"])
    train, dev = split(load_dataset("data/all.csv", input_keys=["question"]), dev_fraction=0.3, seed=0)

A bad row is a ``DatasetError`` naming the file and line; so are two rows with the same example key.
Given the program's ``fields`` (``programs.fields.dataset_fields``), a CSV cell of a field typed
``int``/``float``/``bool``/``Literal``/... is read as that type (a cell that does not parse is an
error naming the line and column; an empty one is no value), a JSONL/JSON value of a ``Literal`` or
``Enum`` field that is not one of its values is an error naming the line, the field and the allowed
values (a typo'd label would otherwise be scored as a miss forever), so is a label of an ``int``/``float``/
``bool`` field that is not one (``"8"``: never equal to the answer 8; an ``int``'s ``3.0`` is 3), and a row without a label (an
output field) that other rows of the file carry is an error when the file loads, before any LM call.

Every example has a stable key (``example_key``): ``str(row["id"])`` when the row has an ``id``, else
``"h:"`` + the first 16 hex digits of the sha256 of the canonical JSON of its inputs (sorted keys).
Golden files, reports and the paired gate match examples across runs by this key.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from ..errors import AdapterParseError, DatasetError
from ..programs.coerce import coerce
from ..programs.fields import DatasetFields
from ..programs.primitives import Example

__all__ = ["check_unique_keys", "example_key", "fingerprint", "load_dataset", "split"]


def load_dataset(
    path: str | os.PathLike[str],
    input_keys: Iterable[str] | None = None,
    *,
    required_keys: Iterable[str] = (),
    limit: int | None = None,
    fields: DatasetFields | None = None,
) -> list[Example]:
    """Read examples from ``.jsonl``, ``.json`` (a list of objects) or ``.csv``.

    Every row must carry each of ``input_keys`` and ``required_keys``; with ``fields``, CSV cells are
    read as their fields' types and every row carries the labels any row of the file carries.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: dataset file not found")
    keys = tuple(input_keys) if input_keys is not None else None
    needed = tuple(dict.fromkeys((*(keys or ()), *required_keys)))
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(p)
    elif suffix == ".json":
        rows = _read_json(p)
    elif suffix == ".csv":
        rows = _read_csv(p, dict(fields.types) if fields is not None else {})
    else:
        raise DatasetError(f"{p}: unsupported dataset format {suffix or '(none)'}; use .jsonl, .json or .csv")
    examples = []
    lines: list[int] = []
    where = "item" if suffix == ".json" else "line"
    # CSV cells were read as their types already (``_cell``); JSON values of a closed set are checked here
    choices = (
        {n: s for n, s in fields.types if _members(s.annotation) is not None}
        if fields is not None and suffix != ".csv"
        else {}
    )
    # and labels of a number or bool field: a "8" never equals the model's 8 (a miss forever)
    scalars = (
        {n: s for n, s in fields.types if s.role == "output" and s.annotation in (int, float, bool)}
        if fields is not None and suffix != ".csv"
        else {}
    )
    for line, row in rows:
        missing = [k for k in needed if k not in row or row[k] is None]
        if missing:
            raise DatasetError(f"{p}:{line}: row has no {', '.join(repr(k) for k in missing)} (has: {', '.join(row) or 'nothing'})")
        for name, spec in choices.items():
            if row.get(name) is not None:
                _check_choice(
                    f"{p}:{line}" if where == "line" else f"{p}: item {line}",
                    spec,
                    row[name],
                    fields.owner if fields else "",
                )
        for name, spec in scalars.items():
            if row.get(name) is not None:
                row[name] = _check_scalar(
                    f"{p}:{line}" if where == "line" else f"{p}: item {line}",
                    spec,
                    row[name],
                    fields.owner if fields else "",
                )
        ex = Example(row)  # the row's own copy; its inputs set in place (``with_inputs`` would copy it again)
        if keys is not None:
            object.__setattr__(ex, "_input_keys", keys)
        examples.append(ex)
        lines.append(line)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DatasetError(f"{p}: dataset is empty")
    if fields is not None and fields.labels:
        _check_labels(examples, fields, lambda i: f"{p}:{lines[i]}" if where == "line" else f"{p}: item {lines[i]}")
    try:
        check_unique_keys(examples, str(p))
    except DatasetError:  # said again with each duplicate's line (the positions made only for the message)
        check_unique_keys(examples, str(p), positions=[f"{where} {n}" for n in lines])
    return examples


def _canonical(value: Any) -> Any:
    from .._support.types import is_pydantic_model

    if is_pydantic_model(value):
        return value.model_dump(mode="json")
    return str(value)


#: the keys' JSON (``json.dumps`` with these options), the encoder made once rather than per example
_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical)


def example_key(example: Example | Mapping[str, Any]) -> str:
    """The stable key of an example: its ``id`` when it has one, else a hash of its inputs.

    The hash covers the example's input fields (all its fields when it has no input keys) as
    canonical JSON (sorted keys, no spaces, UTF-8): ``"h:" + sha256(...)[:16]``. The same inputs give
    the same key in every run, on every machine, whatever the row order.

    An ``Example`` remembers its key (loading a dataset computes it, every evaluation reuses it);
    setting a field forgets it. A field value mutated in place is not seen: copy the example instead.
    """
    if isinstance(example, Example):
        cached: str | None = getattr(example, "_key", None)
        if cached is None:
            cached = _key_of(example, example.input_keys)
            object.__setattr__(example, "_key", cached)
        return cached
    return _key_of(example, None)


def label_hash(example: Example | Mapping[str, Any]) -> str:
    """A short hash of an example's expected outputs (its labels: the fields that are not inputs, nor
    ``id``), recorded beside its baseline outcome so that a relabelled example is not paired with the
    score its old label earned."""
    keys = example.input_keys if isinstance(example, Example) else None
    labels = {k: v for k, v in example.items() if k != "id" and (keys is None or k not in keys)}
    text = _KEY_JSON.encode(labels)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def label_hashes(examples: Iterable[Example]) -> dict[str, str]:
    """``{example_key: label_hash}`` of ``examples``."""
    return {example_key(e): label_hash(e) for e in examples}


def _key_of(example: Example | Mapping[str, Any], input_keys: tuple[str, ...] | None) -> str:
    ident = example.get("id")
    if ident is not None:
        return str(ident)
    inputs = {k: example[k] for k in input_keys if k in example} if input_keys is not None else dict(example.items())
    text = _KEY_JSON.encode(inputs)
    return "h:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_unique_keys(
    examples: Sequence[Example | Mapping[str, Any]], source: str, *, positions: Sequence[str] | None = None
) -> list[str]:
    """The examples' keys, in order; two examples with the same key are a ``DatasetError`` naming them.

    ``positions`` (one per example, e.g. ``"line 3"``) are quoted in the message when given.
    """
    keys = [example_key(ex) for ex in examples]
    seen: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        seen.setdefault(key, []).append(i)
    dups = {k: idx for k, idx in seen.items() if len(idx) > 1}
    if dups:

        def where(i: int) -> str:
            return positions[i] if positions is not None and i < len(positions) else f"example {i}"

        shown = [f"{k!r} ({', '.join(where(i) for i in idx)})" for k, idx in list(dups.items())[:10]]
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise DatasetError(
            f"{source}: duplicate example key(s) {'; '.join(shown)}{more}; every example needs a distinct "
            "'id' (or distinct inputs when it has no id), so results can be matched across runs"
        )
    return keys


def _read_jsonl(p: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with p.open(encoding="utf-8-sig") as fh:
        for lineno, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                where = ""
                if isinstance(exc, json.JSONDecodeError):
                    where = ": at the end of the line" if exc.pos >= len(text.rstrip()) else f": column {exc.pos + 1}"
                # the column in this line (the decoder's own "line 2" would be inside it: a trailing newline)
                raise DatasetError(f"{p}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}{where})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _read_json(p: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise DatasetError(f"{p}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        data = data["examples"]
    if not isinstance(data, list):
        raise DatasetError(f"{p}: expected a JSON list of objects (or {{'examples': [...]}})")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DatasetError(f"{p}: item {i}: expected an object, got {type(row).__name__}")
        yield i, row


def _check_labels(examples: Sequence[Example], fields: DatasetFields, where: Callable[[int], str]) -> None:
    """Every row carries each label (output field) that some row of the file carries: a row without
    one would be scored by a metric reading a field it does not have (or trained on as a demo).
    ``where(i)``: the i-th example's place in the file, for the message."""
    carried = [n for n in fields.labels if any(ex.get(n) is not None for ex in examples)]
    for i, ex in enumerate(examples):
        missing = [n for n in carried if ex.get(n) is None]
        if missing:
            at = where(i)
            key = ex.get("id")
            who = f" (id {key})" if key is not None else ""
            names = ", ".join(repr(n) for n in missing)
            raise DatasetError(
                f"{at}{who}: no {names} (an output field of {fields.owner}, the label the other rows carry)"
                f"{_misspelt([k for k, _ in ex.items()], missing, {*fields.labels, *(n for n, _ in fields.types)})}; label the row or remove it"
            )


def _misspelt(columns: Sequence[str], missing: Sequence[str], known: set[str]) -> str:
    """``"; it has an unknown column 'tema': a misspelling of 'team'?"`` when one of a row's ``columns``
    that no field is named is close to a ``missing`` one (``difflib``), else ``""``."""
    import difflib

    unknown = [k for k in columns if k not in known]
    for name in missing:
        close = difflib.get_close_matches(name, unknown, n=1, cutoff=0.6)
        if close:
            return f"; it has an unknown column {close[0]!r}: a misspelling of {name!r}?"
    return ""


def _members(tp: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` or ``Enum`` annotation allows (an Enum's members), else None."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tuple(tp)
    return None


def _check_choice(at: str, spec: Any, value: Any, owner: str) -> None:
    """A JSON value of a closed-set field must be one of its values (an Enum's value or name)."""
    members = _members(spec.annotation) or ()
    allowed = [m.value if isinstance(m, enum.Enum) else m for m in members]
    if any(value == m and type(value) is type(m) for m in allowed) or (
        isinstance(value, enum.Enum) and value in members
    ):
        return
    if any(isinstance(m, enum.Enum) and value == m.name for m in members):
        return
    near = [m for m in allowed if isinstance(value, str) and str(m).lower() == value.strip().lower()]
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    role = "an output field" if spec.role == "output" else "an input field"
    of = f" of {owner}" if owner else ""
    raise DatasetError(
        f"{at}: field {spec.name!r}: {value!r} is not one of {', '.join(map(repr, allowed))}"
        f" ({role}{of}, typed {spec.type_name}){hint}; fix the row or the field's type"
    )


def _check_scalar(at: str, spec: Any, value: Any, owner: str) -> Any:
    """A JSON label of an ``int``, ``float`` or ``bool`` field must be one (an ``int`` field's 3.0 is 3)."""
    tp = spec.annotation
    if tp is bool and isinstance(value, bool):
        return value
    if tp is not bool and isinstance(value, int | float) and not isinstance(value, bool):
        if tp is float:
            return value
        if isinstance(value, int):
            return value
        if value.is_integer():
            return int(value)
        problem = f"{value!r} is not a whole number"
    else:
        kind = {str: "a string", bool: "a bool", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
        problem = f"{value!r} is {kind}, not {'true or false' if tp is bool else 'a number'}"
    fix = "fix the row or the field's type"
    if isinstance(value, str):
        try:
            fix = f"write it as {json.dumps(coerce(spec, value))}"
        except AdapterParseError:
            pass
    role = "an output field"
    of = f" of {owner}" if owner else ""
    raise DatasetError(f"{at}: field {spec.name!r}: {problem} ({role}{of}, typed {spec.type_name}); {fix}")


def _cell(p: Path, line: int, spec: Any, text: str) -> Any:
    if not text.strip():
        return None  # an empty cell: no value (a missing label or input is said as such)
    try:
        return coerce(spec, text)
    except AdapterParseError as exc:
        problem = str(exc).removeprefix(f"field {spec.name!r}: ")
        raise DatasetError(f"{p}:{line}: column {spec.name!r}: {problem}") from None


def _read_csv(p: Path, types: Mapping[str, Any] | None = None) -> Iterable[tuple[int, dict[str, Any]]]:
    with p.open(encoding="utf-8-sig", newline="") as fh:  # a BOM (Excel's "CSV UTF-8") is not part of the first column
        reader = csv.DictReader(fh, strict=True)
        try:
            reader.fieldnames  # noqa: B018 - reads the header row
        except csv.Error as exc:
            raise DatasetError(f"{p}:1: not valid CSV in the header row ({exc})") from None
        if not reader.fieldnames:
            raise DatasetError(f"{p}: CSV has no header row")
        end = reader.line_num
        while True:
            # a row is named by the line it starts on: a quoted cell may run over several lines, and
            # one whose closing quote is missing ran to the end of the file, swallowing the rows after
            # it into one cell (strict: an error, not a silently shorter dataset; trial8 T8-3)
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                line = end + 1
                if "unexpected end of data" in str(exc):
                    raise DatasetError(
                        f"{p}:{line}: a quoted cell opened on this row is never closed (it runs to the end of the file): a missing closing quote?"
                    ) from None
                raise DatasetError(f"{p}:{line}: not valid CSV ({exc})") from None
            end = reader.line_num
            cells = [v for k, v in row.items() if k is not None and v is not None] + list(row.get(None) or [])
            line = end - sum(str(c).count("\n") for c in cells)  # blank lines before it are skipped
            spans = f" (a quoted cell on it runs on to line {end}: a misplaced quote?)" if end > line else ""
            if None in row:
                raise DatasetError(f"{p}:{line}: more cells than header columns{spans}")
            if any(v is None for v in row.values()):
                raise DatasetError(f"{p}:{line}: fewer cells than header columns{spans}")
            yield line, {k: _cell(p, line, types[k], v) if types and k in types else v for k, v in row.items()}


def split(
    examples: Sequence[Example], *, dev_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and cut into (train, dev); the same seed gives the same split."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be between 0 and 1, got {dev_fraction}")
    items = list(examples)
    random.Random(seed).shuffle(items)
    cut = len(items) - max(1, round(len(items) * dev_fraction))
    return items[:cut], items[cut:]


def fingerprint(examples: Sequence[Example]) -> str:
    """A short stable hash of a dataset's content (recorded in golden files)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.toDict(), sort_keys=True, default=str).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]
