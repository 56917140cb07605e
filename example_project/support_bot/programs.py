"""The bot's three LM programs. Nothing here knows about pytest."""

from __future__ import annotations

from typing import Literal

import pytest_dspex as dspex


class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    team: Literal["billing", "technical", "account", "other"] = dspex.OutputField()


class FindProduct(dspex.Signature):
    """Name the product the customer is writing about, exactly as written in the message."""

    message: str = dspex.InputField()
    product: str = dspex.OutputField()


class TakeOrder(dspex.Signature):
    """Extract the ordered item and its quantity from the customer's message."""

    message: str = dspex.InputField()
    item: str = dspex.OutputField(desc="the product as written, lower case")
    quantity: int = dspex.OutputField()


triage = dspex.Predict(Triage)
find_product = dspex.ChainOfThought(FindProduct)
take_order = dspex.Predict(TakeOrder)


def route(message: str) -> str:
    """What the app calls: the team for a message."""
    return str(triage(message=message).team)
