"""An xdist worker's one-time imports, made while it waits for its first test instead of in it.

A worker imports the LM client (aiohttp), the golden store (pydantic), scoring and the report
records the first time one of its tests asks for them: ~0.3 s of CPU a worker, paid inside its
first item, while every other worker is running tests too (with ``-n 8`` on two cores, over a
second of the run's test time). xdist sends no test before every worker has collected, so a worker
that finished collecting waits for the slower ones: ``warm_up`` does these imports there, once the
worker has reported its collection (``pytest_runtestloop``), when its collection has a test using
a ``dspex_program``. Nothing is built or connected: only modules are imported, the same ones a
first test would import (measured: the modules new in ``sys.modules`` after a worker's first
per-example item), so a run that has no dspex test pays nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

__all__ = ["WARM_MODULES", "uses_dspex", "warm_up"]

_PKG = __name__.rsplit(".", 2)[0]  # "pytest_dspex"

#: what a worker's first dspex test imports (lm client + transport, golden store, scoring, records)
WARM_MODULES = (
    "aiohttp",  # the HTTP wire (``lm.transport.AiohttpWire``): the largest part
    f"{_PKG}.lm.client",
    f"{_PKG}.lm.link",
    f"{_PKG}.lm.transport",
    f"{_PKG}.lm.redis_cache",
    f"{_PKG}.golden.store",
    f"{_PKG}.evaluation.scoring",
    f"{_PKG}.evaluation.comparison",
    f"{_PKG}.reports._format",
    f"{_PKG}.reports.junit",
    f"{_PKG}.reports.run",
    f"{_PKG}.plugin.bridge",
    f"{_PKG}.plugin.collector",
)


def uses_dspex(items: Iterable[Any]) -> bool:
    """Does any collected item use a ``dspex_program`` (and so an LM)?"""
    return any(item.get_closest_marker("dspex_program") is not None for item in items)


def warm_up() -> None:
    """Import ``WARM_MODULES``; one that cannot be imported is left for the test that needs it to say."""
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # the test importing it reports the error, with its context
            pass
