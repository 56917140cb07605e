"""How the bot's answers are scored."""

from __future__ import annotations

from typing import Any

from pytest_dspex.evaluation.metrics import normalize_text


def team_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


def same_product(example: Any, prediction: Any, trace: Any = None) -> bool:
    return normalize_text(example.product) == normalize_text(prediction.product)


def same_order(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The right item (normalized) and the right quantity."""
    return normalize_text(example.item) == normalize_text(prediction.item) and example.quantity == prediction.quantity
