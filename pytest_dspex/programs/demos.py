"""A demo in its two layouts, converted one way each.

* **flat**: what a predictor holds (``Predict.demos``) and DSPy saves: every field and any metadata
  (``id``, ``source``...) in one dict, ``augmented: True`` for a bootstrapped one.
* **golden**: what a golden file holds: ``inputs``, ``outputs``, ``reasoning`` (a ChainOfThought's),
  ``metadata`` (the columns that are no signature field) and ``bootstrapped``.

Demos are field values, not prompt text: a golden stays valid across adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._support.types import is_pydantic_model

if TYPE_CHECKING:
    from .signatures import Signature

__all__ = ["from_golden", "jsonable", "to_golden"]


def jsonable(value: Any) -> Any:
    """``value`` with every pydantic model in it as its JSON data (a demo's field may hold one)."""
    if is_pydantic_model(value):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def to_golden(signature: type[Signature], demo: Mapping[str, Any]) -> dict[str, Any]:
    """A flat demo of a predictor with ``signature`` in the golden layout (JSON-able)."""
    sig = signature
    ins = {k: demo[k] for k in sig.input_fields() if k in demo}
    outs = {k: demo[k] for k in sig.output_fields() if k in demo and k != "reasoning"}
    entry: dict[str, Any] = {"inputs": ins, "outputs": outs, "bootstrapped": bool(demo.get("augmented"))}
    if "reasoning" in demo and "reasoning" in sig.fields:
        entry["reasoning"] = demo["reasoning"]
    metadata = {k: v for k, v in demo.items() if k not in sig.fields and k != "augmented"}
    if metadata:
        entry["metadata"] = metadata
    return jsonable(entry)  # type: ignore[no-any-return]


def from_golden(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A demo in the golden layout as the flat demo a predictor holds."""
    demo = {**(entry.get("metadata") or {}), **entry.get("inputs", {}), **entry.get("outputs", {})}
    if entry.get("reasoning") is not None:
        demo["reasoning"] = entry["reasoning"]
    if entry.get("bootstrapped"):
        demo["augmented"] = True
    return demo
