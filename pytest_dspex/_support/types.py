"""Small shared types: the "not given" sentinel; whether a value is a pydantic model."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any, Final, Literal

__all__ = ["NOT_GIVEN", "NotGiven", "is_pydantic_model"]


def is_pydantic_model(value: Any) -> bool:
    """``isinstance(value, pydantic.BaseModel)``, without importing pydantic's models when nothing has:
    no model exists before ``pydantic.main`` is imported, and importing it costs ~25 ms of CPU in
    every process (each xdist worker) whose fields are all plain text."""
    main = sys.modules.get("pydantic.main")
    return main is not None and isinstance(value, main.BaseModel)


class NotGiven(Enum):
    """Marks an argument the caller left out, as opposed to one set to ``None`` (= off)."""

    token = 0

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.token
