"""List prices of a few well-known models, dollars per 1M input and output tokens.

Used by ``--dspex-estimate`` when no ``--dspex-price`` is given (a run counts cost only with a price
the user set). Prices change: the table is a convenience for an estimate, not a bill; a model it
does not know is estimated in tokens only. Names match exactly or as a prefix of a dated snapshot
(``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``).
"""

from __future__ import annotations

__all__ = ["PRICES", "known_price"]

#: model → (input, output) dollars per 1M tokens (OpenAI list prices, standard tier)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def known_price(model: str) -> tuple[float, float] | None:
    """The table's price for ``model`` (longest matching name first), or None."""
    name = model.rsplit("/", 1)[-1].lower()  # "openai/gpt-4o-mini" too
    for known in sorted(PRICES, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            return PRICES[known]
    return None
