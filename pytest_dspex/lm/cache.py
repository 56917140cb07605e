"""The response cache: a bounded in-memory LRU in front of a diskcache ``FanoutCache``.

The key hashes everything that changes the answer: model, endpoint, messages and sampling
parameters (never the API key or headers). Modes:

* ``on``        read and write
* ``off``       neither
* ``read-only`` read, never write
* ``replay``    read; a miss is a ``CacheMissError`` (offline CI that must not call an LM)

Disk writes go to one writer thread, so a cache miss never blocks the event loop on SQLite.
A corrupted cache directory is moved aside with a warning and a fresh one is started.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections import OrderedDict
from typing import Any, Literal

from .._exceptions import CacheMissError, ConfigError

__all__ = ["CacheMode", "ResponseCache", "cache_key"]

CacheMode = Literal["on", "off", "read-only", "replay"]
MODES = ("on", "off", "read-only", "replay")
logger = logging.getLogger("pytest_dspex.cache")


def cache_key(request: dict[str, Any]) -> str:
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        mode: CacheMode = "on",
        *,
        memory_entries: int = 50_000,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"cache mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.directory = os.fspath(directory) if directory is not None else None
        self.memory_entries = memory_entries
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._disk: Any = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        if self.directory is not None and mode != "off":
            self._disk = self._open_disk(self.directory)

    @staticmethod
    def _open_disk(directory: str) -> Any:
        import sqlite3

        import diskcache

        try:
            disk = diskcache.FanoutCache(directory, shards=4, timeout=5, eviction_policy="none")
            # touch every shard: corruption shows here rather than mid-run
            for shard in disk._shards:
                shard.get("__dspex_probe__")
            return disk
        except (sqlite3.DatabaseError, OSError) as exc:
            aside = f"{directory}.corrupt-{int(time.time())}"
            warnings.warn(
                f"pytest-dspex: the LM cache at {directory} is unreadable ({exc}); moved it to {aside} "
                "and started an empty cache",
                RuntimeWarning,
                stacklevel=3,
            )
            shutil.move(directory, aside)
            return diskcache.FanoutCache(directory, shards=4, timeout=5, eviction_policy="none")

    @property
    def reads(self) -> bool:
        return self.mode != "off"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.mode == "off":
            return None
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            return hit
        if self._disk is not None:
            try:
                raw = self._disk.get(key)
            except Exception as exc:  # a damaged entry is a miss, not a crash
                logger.warning("pytest-dspex: unreadable cache entry %s… (%s); treating as a miss", key[:12], exc)
                raw = None
            if raw is not None:
                try:
                    value: dict[str, Any] = json.loads(raw)
                except ValueError:
                    logger.warning("pytest-dspex: corrupt cache entry %s…; treating as a miss", key[:12])
                    return None
                self._remember(key, value)
                return value
        return None

    def miss(self, key: str, model: str) -> None:
        """Called on a miss: in replay mode, that is an error."""
        if self.mode == "replay":
            where = self.directory or "(memory)"
            raise CacheMissError(
                f"replay mode: no cached answer for this {model} request (key {key[:12]}…) in {where}; "
                "record it with a run using cache mode 'on' (--dspex-cache=on)"
            )

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.mode != "on":
            return
        self._remember(key, value)
        if self._disk is not None:
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-cache")
            self._writer.submit(self._write, key, json.dumps(value, ensure_ascii=False))

    def _write(self, key: str, raw: str) -> None:
        try:
            self._disk.set(key, raw)
        except Exception as exc:
            logger.warning("pytest-dspex: could not write cache entry (%s)", exc)

    def _remember(self, key: str, value: dict[str, Any]) -> None:
        mem = self._memory
        mem[key] = value
        if len(mem) > self.memory_entries:
            mem.popitem(last=False)

    def flush(self) -> None:
        """Wait until every pending disk write is done."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._disk is not None:
            self._disk.close()

    def __len__(self) -> int:
        return len(self._disk) if self._disk is not None else len(self._memory)

    def __repr__(self) -> str:
        return f"ResponseCache(directory={self.directory!r}, mode={self.mode!r})"
