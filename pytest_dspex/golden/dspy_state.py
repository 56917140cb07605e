"""DSPy's ``program.save()`` layout, to and from a golden: ``to_dspy_state`` / ``from_dspy_state``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, GoldenFileError
from ..programs.modules import Module, Predict
from ..programs.saved_state import dspy_metadata
from .file import GoldenFile

__all__ = ["from_dspy_state", "to_dspy_state"]


def to_dspy_state(golden: GoldenFile | dict[str, Any], program: Module) -> dict[str, Any]:
    """The golden's demos in the layout DSPy's ``program.load()`` reads (metadata: ``dspy_metadata``)."""
    gf = golden if isinstance(golden, GoldenFile) else GoldenFile(Path("<golden>"), golden)
    state = gf.apply(program).dump_state()
    state["metadata"] = dspy_metadata()
    return state


def from_dspy_state(state: dict[str, Any], program: Module, *, source: str = "<dspy state>") -> Module:
    """Load demos from a program saved by DSPy (``program.save("x.json")``) into ``program``."""
    program = program.deepcopy()
    try:
        if isinstance(program, Predict):
            program.load_state(state.get("self", state) if "demos" not in state else state)
        else:
            program.load_state({k: v for k, v in state.items() if k != "metadata"})
    except ConfigError as exc:
        raise GoldenFileError(f"{source}: {exc}") from None
    return program
