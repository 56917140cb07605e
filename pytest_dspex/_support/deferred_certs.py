"""``import aiohttp`` without loading the system's CA store twice at import time.

``aiohttp.connector`` makes two default SSL contexts when it is imported (for requests that bring
none of their own: ``ssl=True`` and ``ssl=False``), and each loads the system's CA store
(``set_default_verify_paths``): ~0.02 s of CPU apiece, in every process that imports aiohttp —
every xdist worker — though this package's LM client never uses them (plain ``http://`` needs no
context; ``https://`` uses its own, ``transport._ssl_context``).

``import_aiohttp()`` makes that first import with the store's loading deferred: those two contexts
are made as ever, and load it at their first use (a handshake: ``wrap_bio`` / ``wrap_socket``, or a
look at what they hold), then are plain ``ssl.SSLContext`` objects again. Whoever uses them — other
code of the process asking aiohttp for a default ``https`` context — gets the same context, the store
loaded at its first handshake rather than at import. Only the importing thread's contexts made during
that import are deferred; if aiohttp is imported already, nothing is done.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

__all__ = ["import_aiohttp"]

_NAME = "set_default_verify_paths"
_lock = threading.Lock()


class _DeferredStore(ssl.SSLContext):
    """An ``SSLContext`` whose default CA store is not loaded yet: loaded at its first use, after which
    the object is a plain ``ssl.SSLContext`` again (its class set back)."""

    def _load(self) -> None:
        with _lock:
            if type(self) is _DeferredStore:
                _original(self)
                self.__class__ = ssl.SSLContext  # type: ignore[assignment]

    def set_default_verify_paths(self) -> None:
        self._load()

    def wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return self.wrap_socket(*args, **kwargs)  # (a plain SSLContext's now)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return self.wrap_bio(*args, **kwargs)  # (a plain SSLContext's now)

    def get_ca_certs(self, *args: Any, **kwargs: Any) -> Any:
        self._load()
        return self.get_ca_certs(*args, **kwargs)  # (a plain SSLContext's now)

    def cert_store_stats(self) -> Any:
        self._load()
        return self.cert_store_stats()


def _original(ctx: ssl.SSLContext) -> None:
    """``SSLContext.set_default_verify_paths`` as the ``ssl`` module has it (the C method)."""
    ssl._SSLContext.set_default_verify_paths(ctx)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _deferred_in_this_thread() -> Iterator[None]:
    """While inside: a plain ``SSLContext`` this thread loads the default store into is deferred instead."""
    owner = threading.get_ident()
    own = ssl.SSLContext.__dict__.get(_NAME)  # None: inherited from the C class (CPython's case)

    def set_default_verify_paths(self: ssl.SSLContext) -> None:
        if type(self) is ssl.SSLContext and threading.get_ident() == owner:
            self.__class__ = _DeferredStore
            return
        if own is not None:
            own(self)
        else:
            _original(self)

    setattr(ssl.SSLContext, _NAME, set_default_verify_paths)
    try:
        yield
    finally:
        if own is not None:
            setattr(ssl.SSLContext, _NAME, own)
        else:
            delattr(ssl.SSLContext, _NAME)


def import_aiohttp() -> ModuleType:
    """``aiohttp``, imported (the first time) with its default contexts' CA store loaded at first use."""
    module = sys.modules.get("aiohttp")
    if module is not None:
        return module
    with _deferred_in_this_thread():
        import aiohttp
    return aiohttp
