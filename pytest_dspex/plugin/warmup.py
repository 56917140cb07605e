"""An xdist worker's one-time imports, made while it waits for its first test instead of in it.

A worker imports the LM client (aiohttp), the golden store, scoring and the report
records the first time one of its tests asks for them: ~0.3 s of CPU a worker, paid inside its
first item, while every other worker is running tests too (with ``-n 8`` on two cores, over a
second of the run's test time). xdist sends no test before every worker has collected, so a worker
that finished collecting waits for the slower ones: ``warm_up`` does these imports there, once the
worker has reported its collection (``pytest_runtestloop``), when its collection has a test using
a ``dspex_program``. Nothing is built or connected: only modules are imported, the same ones a
first test would import (measured: the modules new in ``sys.modules`` after a worker's first
per-example item), so a run that has no dspex test pays nothing. The golden files' reader (its
pydantic schema: ~50 ms) only when a collected test has a ``__dspex__`` folder beside it: a worker
whose programs have no golden yet never reads one.

Then ``freeze_startup`` takes what the worker holds for the whole run (modules, the collected items,
the datasets, ~70,000 objects) out of the cyclic garbage collector's full scans (``gc.freeze()``):
measured per worker of a 1,000-example run with ``-n 8`` (CPU in the collector, read by ``gc.callbacks``):
0.068 s before the first test and 0.142 s in all (pytest's own ``gc.collect()`` at the session's end
scanned everything twice) -> 0.041 s and 0.046 s, with the plugin's import (``plugin/__init__``)
freezing what pytest and the plugins had made before it too. Objects made later are collected as
ever; a reference cycle already unreachable when frozen is freed at exit, not sooner.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["GOLDEN_MODULES", "WARM_MODULES", "freeze_startup", "has_goldens", "uses_dspex", "warm_up"]

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

#: what a first test whose program has a golden file imports too (``golden.file``: the schema, pydantic)
GOLDEN_MODULES = (f"{_PKG}.golden.file",)


def uses_dspex(items: Iterable[Any]) -> bool:
    """Does any collected item use a ``dspex_program`` (and so an LM)?"""
    return any(item.get_closest_marker("dspex_program") is not None for item in items)


def has_goldens(items: Iterable[Any]) -> bool:
    """Is there a ``__dspex__`` folder (goldens) beside any collected test's file?"""
    files = {item.path for item in items if getattr(item, "path", None) is not None}  # a few files, 1,000s of items
    return any((folder / "__dspex__").is_dir() for folder in {Path(f).parent for f in files})


def warm_up(goldens: bool = True) -> None:
    """Import ``WARM_MODULES`` (and ``GOLDEN_MODULES`` with ``goldens``); one that cannot be imported is
    left for the test that needs it to say."""
    from .._support.deferred_certs import import_aiohttp

    for name in WARM_MODULES + (GOLDEN_MODULES if goldens else ()):
        try:
            if name == "aiohttp":  # its default SSL contexts load the CA store at their first use
                import_aiohttp()
            else:
                importlib.import_module(name)
        except Exception:  # the test importing it reports the error, with its context
            pass


def freeze_startup() -> None:
    """What this worker made before its first test lives until its end: no full collection scans it again."""
    gc.freeze()
