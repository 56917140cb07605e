"""``Example`` (a dataset row that knows its input keys) and ``Prediction`` (a program's output)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["Example", "Prediction"]


class Example:
    """A row of data with named fields, some of which are marked as inputs.

    >>> ex = Example(question="2+2?", answer="4").with_inputs("question")
    >>> ex.inputs().toDict(), ex.labels().toDict()
    ({'question': '2+2?'}, {'answer': '4'})
    """

    # _key: ``datasets.example_key`` of this example, computed once (cleared when a field is set)
    __slots__ = ("_input_keys", "_key", "_store")

    def __init__(self, base: Mapping[str, Any] | None = None, **fields: Any) -> None:
        store: dict[str, Any] = dict(base) if base is not None else {}
        store.update(fields)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_input_keys", None)
        object.__setattr__(self, "_key", None)

    # -- pickle and copy ----------------------------------------------------------------------
    # The default slot restore goes through ``__setattr__`` (which writes fields), so the state
    # is set here with ``object.__setattr__``; the key cache travels with it.
    def __getstate__(self) -> tuple[dict[str, Any], tuple[str, ...] | None, str | None]:
        return (self._store, self._input_keys, self._key)

    def __setstate__(self, state: tuple[dict[str, Any], tuple[str, ...] | None, str | None]) -> None:
        store, input_keys, key = state
        object.__setattr__(self, "_store", dict(store))
        object.__setattr__(self, "_input_keys", input_keys)
        object.__setattr__(self, "_key", key)

    def __copy__(self) -> Example:
        new = type(self)(self._store)
        object.__setattr__(new, "_input_keys", self._input_keys)
        object.__setattr__(new, "_key", self._key)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Example:
        new = type(self)()
        memo[id(self)] = new
        object.__setattr__(new, "_store", copy.deepcopy(self._store, memo))
        object.__setattr__(new, "_input_keys", self._input_keys)
        object.__setattr__(new, "_key", self._key)
        return new

    # -- field access -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _SLOTS:  # a slot not set yet (an object under construction): no field lookup
            raise AttributeError(name)
        try:
            return self._store[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._store[name] = value
        object.__setattr__(self, "_key", None)

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value
        object.__setattr__(self, "_key", None)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Example)
            and self._store == other._store
            and self._input_keys == other._input_keys
        )

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._store.items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._store.items())
        return f"{type(self).__name__}({fields}) (input_keys={self.input_keys})"

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def keys(self) -> list[str]:
        return list(self._store)

    def values(self) -> list[Any]:
        return list(self._store.values())

    def items(self) -> list[tuple[str, Any]]:
        return list(self._store.items())

    def toDict(self) -> dict[str, Any]:
        return dict(self._store)

    to_dict = toDict

    # -- inputs / labels ----------------------------------------------------------------------
    @property
    def input_keys(self) -> tuple[str, ...] | None:
        return self._input_keys  # type: ignore[no-any-return]

    def with_inputs(self, *keys: str) -> Example:
        """A copy of this example whose inputs are ``keys``."""
        new = self.copy()
        object.__setattr__(new, "_input_keys", tuple(keys))
        return new

    def inputs(self) -> Example:
        if self._input_keys is None:
            raise ValueError(
                "this Example has no input keys; call .with_inputs('field', ...) "
                "or load the dataset with input_keys=[...]"
            )
        sub = Example({k: self._store[k] for k in self._input_keys if k in self._store})
        object.__setattr__(sub, "_input_keys", self._input_keys)
        return sub

    def labels(self) -> Example:
        keys = self._input_keys or ()
        return Example({k: v for k, v in self._store.items() if k not in keys})

    def copy(self, **updates: Any) -> Example:
        new = Example(self._store, **updates)
        object.__setattr__(new, "_input_keys", self._input_keys)
        return new

    def without(self, *keys: str) -> Example:
        new = Example({k: v for k, v in self._store.items() if k not in keys})
        object.__setattr__(new, "_input_keys", self._input_keys)
        return new


_SLOTS = frozenset(Example.__slots__)


class Prediction(Example):
    """The outputs of a program call; fields are read as attributes (``pred.answer``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._store.items())
        return f"Prediction({fields})"


def as_example(obj: Any, where: str = "example") -> Example:
    """``obj`` as an ``Example`` with input keys: one of ours, or one that looks like it (a
    ``dspy.Example``: ``toDict()`` and ``_input_keys``/``inputs()``), its input keys kept in field order."""
    if isinstance(obj, Example):
        if obj.input_keys is None:
            raise ValueError(
                f"{where} is an Example without input keys; load it with load_dataset(path, input_keys=[...]) "
                "or call .with_inputs(...)"
            )
        return obj
    to_dict = getattr(obj, "toDict", None)
    keys = getattr(obj, "_input_keys", None)
    if keys is None and callable(getattr(obj, "inputs", None)):
        try:
            keys = list(obj.inputs().keys())
        except Exception:
            keys = None
    if callable(to_dict) and keys:
        fields = dict(to_dict())
        ordered = [k for k in fields if k in set(keys)]
        return Example(fields).with_inputs(*ordered)
    kind = "an example without input keys (call .with_inputs(...))" if callable(to_dict) else type(obj).__name__
    raise ValueError(
        f"{where} is {kind}, not an Example with input keys; load the data with "
        "load_dataset(path, input_keys=[...]) or build Example(...).with_inputs(...)"
    )


def as_example_list(items: Iterable[Any], where: str) -> list[Example]:
    """Every item of a devset, trainset or valset ``as_example``, named ``{where} item {i}`` in errors."""
    return [as_example(obj, f"{where} item {i}") for i, obj in enumerate(items)]


def as_examples(rows: Iterable[Mapping[str, Any] | Example], input_keys: Iterable[str]) -> list[Example]:
    """Turn dicts (or examples) into examples with ``input_keys`` marked as inputs."""
    keys = tuple(input_keys)
    out = []
    for row in rows:
        ex = row if isinstance(row, Example) else Example(row)
        out.append(ex.with_inputs(*keys))
    return out
