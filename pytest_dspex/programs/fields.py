"""What a program's signatures say about the rows of its datasets: ``dataset_fields(program)``.

``types``: the fields whose signature declares a type other than ``str`` (a CSV cell is text; the
dataset loader reads such a cell as the field's type, ``coerce``). ``labels``: the program's final
output fields (an output of one predictor that another one takes as input is not a label), the
fields a row is checked for when the file loads. ``owner`` names the signature(s) in messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .signatures import FieldSpec

__all__ = ["DatasetFields", "dataset_fields"]


@dataclass(frozen=True)
class DatasetFields:
    types: tuple[tuple[str, FieldSpec], ...] = ()
    labels: tuple[str, ...] = ()
    owner: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        """What a loaded dataset depends on (a cache key): names and type names only."""
        return (tuple((n, s.type_name) for n, s in self.types), self.labels)


def dataset_fields(program: Any) -> DatasetFields:
    """The typed fields and labels of ``program`` (a ``FunctionProgram``: its ``outputs``, untyped);
    nothing for a program whose predictors are not this package's (a DSPy module: left as it is)."""
    from .function import FunctionProgram
    from .modules import Predict

    if isinstance(program, FunctionProgram):
        return DatasetFields(labels=program.outputs, owner=program.name)
    predictors = [p for _, p in program.named_predictors()] if hasattr(program, "named_predictors") else []
    if isinstance(program, Predict):
        predictors = [program]
    if not predictors or not all(isinstance(p, Predict) for p in predictors):
        return DatasetFields()
    types: dict[str, FieldSpec | None] = {}
    inputs: set[str] = set()
    outputs: dict[str, None] = {}
    owners: dict[str, None] = {}
    for pred in predictors:
        sig = pred.signature
        owners[sig.__name__] = None
        for name, spec in sig.fields.items():
            seen = types.setdefault(name, spec)
            if seen is not None and seen.annotation != spec.annotation:
                types[name] = None  # two predictors disagree: the cell is read as it is
            if spec.role == "input":
                inputs.add(name)
            else:
                outputs[name] = None
    typed = tuple((n, s) for n, s in types.items() if s is not None and s.annotation is not str)
    labels = tuple(n for n in outputs if n not in inputs)
    return DatasetFields(types=typed, labels=labels, owner=", ".join(owners))
