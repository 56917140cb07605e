"""What an endpoint turned out to accept, owned by the LM that talks to it (``LM.capabilities``).

* constrained decoding: the mode the user chose (``set_constrained_decoding``), the dialects an
  endpoint refused and the one that works per constraint kind (``programs``' ``constrained``
  probes and fills these; the LM layer only keeps them);
* logprobs: whether the endpoint refused ``logprobs`` (a calibrated predictor then answers from the
  text there).

An LM-like object that is not ours (a DSPy LM, a test double) gets its capabilities kept beside it
in a weak map, never set as an attribute on it; one that cannot be weakly referenced gets a fresh
record each time (nothing remembered, as before).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Capabilities", "capabilities_of"]


@dataclass(eq=False)
class Capabilities:
    #: how typed outputs are enforced: ``auto``, ``off`` or one dialect
    mode: str = "auto"
    #: (base_url, model, dialect) the endpoint refused
    rejected: set[tuple[str, str, str]] = field(default_factory=set)
    #: (base_url, model, constraint kind) → the dialect that works (None: none does)
    working: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    #: the probes under way, so concurrent calls wait for one instead of probing each
    probes: dict[tuple[str, str, str], asyncio.Future[None]] = field(default_factory=dict)
    #: the endpoint refused ``logprobs`` (HTTP 400/422 or an error naming them)
    logprobs_refused: bool = False


_others: weakref.WeakKeyDictionary[Any, Capabilities] = weakref.WeakKeyDictionary()


def capabilities_of(lm: Any) -> Capabilities:
    """``lm.capabilities`` for our LMs; for any other LM-like object, its record in a weak map."""
    own = getattr(lm, "capabilities", None)
    if isinstance(own, Capabilities):
        return own
    try:
        found = _others.get(lm)
        if found is None:
            found = _others[lm] = Capabilities()
    except TypeError:  # not hashable or not weakly referenceable: nothing is remembered
        return Capabilities()
    return found
