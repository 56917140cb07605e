"""Small shared types: the "not given" sentinel."""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal

__all__ = ["NOT_GIVEN", "NotGiven"]


class NotGiven(Enum):
    """Marks an argument the caller left out, as opposed to one set to ``None`` (= off)."""

    token = 0

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.token
