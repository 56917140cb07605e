"""An evaluation lends its slot while an LM call waits to retry.

``Evaluate(concurrency=C)`` keeps C examples in flight. An example whose LM call is waiting out a
backoff or a ``Retry-After`` makes no request, yet it held one of the C places: with a quarter of the
attempts failing, a run spent a third of its slots asleep (500 examples at 50 ms with 25% failed
attempts: 1.9x the fault-free time). Now the retry loop calls ``waiting()`` before it sleeps after
an answer that was an error (5xx, 429, a garbled body: the endpoint is alive), and the evaluation
starts one more example in its place, at most ``concurrency`` extra at a time. Not after a refused
connection or a timeout: a dead or hung endpoint gets no more traffic than before. The LM's own
concurrency limit still bounds the requests in flight.

The LM layer only knows this module (no import of the evaluation); outside an evaluation
``waiting()`` does nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

__all__ = ["lender", "waiting"]

#: set by an evaluation worker: starts one more example while this one waits
lender: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("dspex_lender", default=None)


def waiting() -> None:
    """An LM call is about to wait before retrying: let the evaluation use the time."""
    lend = lender.get()
    if lend is not None:
        lend()
