"""The response cache: a bounded in-memory LRU in front of a diskcache ``FanoutCache``.

The key hashes everything that changes the answer: model, endpoint, messages and sampling
parameters (never the API key or headers). Modes:

* ``on``        read and write
* ``off``       neither
* ``read-only`` read, never write
* ``replay``    read; a miss is a ``CacheMissError`` (offline CI that must not call an LM)

Disk writes go to one writer thread, so a cache miss never blocks the event loop on SQLite. The
writer takes every entry waiting when it wakes and writes them together (``DiskStorage``: one SQLite
transaction per shard): a run of 64 concurrent misses wakes it a few times, not once per answer
(a wake-up per entry cost the evaluating process ~0.25 ms of CPU per cold example, issue 22).

The storage tier behind the memory LRU is anything with the small :class:`Storage` surface —
``get(key) -> JSON text | None``, ``set(key, JSON text)``, ``close()``, ``len()`` — kept in
``ResponseCache._disk``: :class:`DiskStorage` (diskcache) in mode ``on``,
:class:`ReadOnlyDiskStorage` (the same files through SQLite's read-only mode) in ``read-only`` and
``replay``, Redis in ``redis_cache``.

Opening the disk cache: a damaged database (SQLite "file is not a database", "malformed") is moved
aside to a unique name (``<dir>.corrupt-<pid>-<random>``, so concurrent workers never collide)
with a warning, and a fresh cache is started — in mode ``on`` only. A permission error or a
read-only location is a ``ConfigError`` naming the directory, never a reason to move the user's
cache. ``read-only`` and ``replay`` never write: a missing directory is not created (every lookup
misses) and a damaged one is reported, not moved.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import urllib.parse
import uuid
import warnings
import zlib
from collections import OrderedDict
from typing import Any, Literal, Protocol

from ..errors import CacheMissError, ConfigError

__all__ = ["CacheMode", "DiskStorage", "ReadOnlyDiskStorage", "ResponseCache", "Storage", "cache_key"]

CacheMode = Literal["on", "off", "read-only", "replay"]
MODES = ("on", "off", "read-only", "replay")
logger = logging.getLogger("pytest_dspex.cache")


#: ``json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)``,
#: made once (``dumps`` with options builds an encoder per call: ~0.7 µs of a replayed example's ~80)
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def cache_key(request: dict[str, Any]) -> str:
    blob = _KEY_JSON.encode(request)
    return hashlib.sha256(blob.encode()).hexdigest()


class Storage(Protocol):
    """A response cache's storage tier: whole JSON values by key."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, raw: str) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


def _corrupt(exc: BaseException) -> bool:
    """A damaged database, as opposed to one we may not open (permissions, read-only, locked)."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "malformed" in str(exc)


class DiskStorage:
    """diskcache's ``FanoutCache`` (4 SQLite shards) as a storage tier."""

    def __init__(self, directory: str, mode: CacheMode = "on") -> None:
        self.directory = directory
        self.mode = mode
        self._cache: Any = self._open(stacklevel=4)

    def _open(self, *, stacklevel: int) -> Any:
        try:
            return self._try_open()
        except (sqlite3.Error, OSError) as exc:
            if not _corrupt(exc):
                raise self._unusable(exc) from None
            if self.mode != "on":
                raise ConfigError(
                    f"the LM cache at {self.directory} is damaged ({exc}); cache mode {self.mode!r} never "
                    "writes, so it is left as it is: move it away, or record it again with --dspex-cache=on"
                ) from None
            first = exc
        try:  # another worker may have replaced it already
            return self._try_open()
        except (sqlite3.Error, OSError) as exc:
            if not _corrupt(exc):
                raise self._unusable(exc) from None
        aside = f"{self.directory}.corrupt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.move(self.directory, aside)
        except FileNotFoundError:
            aside = "(already moved by another process)"
        except OSError as exc:
            raise self._unusable(exc) from None
        warnings.warn(
            f"pytest-dspex: the LM cache at {self.directory} is unreadable ({first}); moved it to {aside} "
            "and started an empty cache",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        try:
            return self._try_open()
        except (sqlite3.Error, OSError) as exc:
            raise self._unusable(exc) from None

    def _try_open(self) -> Any:
        import diskcache

        _ignore_in_git(self.directory)
        disk = diskcache.FanoutCache(self.directory, shards=4, timeout=5, eviction_policy="none")
        try:
            for shard in disk._shards:  # touch every shard: damage shows here rather than mid-run
                shard.get("__dspex_probe__")
        except BaseException:
            disk.close()
            raise
        return disk

    def _unusable(self, exc: BaseException) -> ConfigError:
        return ConfigError(
            f"the LM cache directory {self.directory} cannot be used ({type(exc).__name__}: {exc}); "
            "check its permissions, read it as it is with --dspex-cache=read-only (or replay), "
            "or choose another one (--dspex-cache-dir) or --dspex-cache=off"
        )

    def get(self, key: str) -> str | None:
        raw = self._cache.get(key)
        return None if raw is None else str(raw)

    def set(self, key: str, raw: str) -> None:
        self._cache.set(key, raw)

    def set_many(self, items: list[tuple[str, str]]) -> None:
        """Write ``items`` with one transaction per shard (diskcache's ``FanoutCache`` picks the shard)."""
        fanout = self._cache
        by_shard: dict[int, list[tuple[str, str]]] = {}
        for key, raw in items:
            by_shard.setdefault(fanout._hash(key) % fanout._count, []).append((key, raw))
        for index, shard_items in by_shard.items():
            shard = fanout._shards[index]
            with shard.transact(retry=True):
                for key, raw in shard_items:
                    shard.set(key, raw, retry=True)

    def close(self) -> None:
        self._cache.close()

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Any:
        return iter(self._cache)


def _shown(directory: str) -> str:
    """``directory`` relative to the working directory when it lies under it (as the user typed it)."""
    here = os.getcwd()
    absolute = os.path.abspath(directory)
    return os.path.relpath(absolute, here) if absolute.startswith(here + os.sep) else directory


class ReadOnlyDiskStorage:
    """A diskcache directory read through SQLite's read-only mode: it never writes a byte.

    Used by ``read-only`` and ``replay`` (diskcache itself writes its settings on open). Reads
    diskcache's layout: shard ``NNN/cache.db`` chosen by adler32 of the key, string values inline
    (``mode`` 1) or in a text file next to the shard (``mode`` 3).
    """

    def __init__(self, directory: str, mode: CacheMode) -> None:
        import glob

        self.directory = directory
        self.mode = mode
        paths = sorted(glob.glob(os.path.join(glob.escape(directory), "[0-9][0-9][0-9]", "cache.db")))
        self._shards: list[tuple[str, sqlite3.Connection]] = []
        try:
            for path in paths:
                self._shards.append((os.path.dirname(path), self._connect(path)))
        except (sqlite3.Error, OSError) as exc:
            self.close()
            if _corrupt(exc):
                raise ConfigError(
                    f"the LM cache at {directory} is damaged ({exc}); cache mode {mode!r} never writes, so "
                    "it is left as it is: move it away, or record it again with --dspex-cache=on"
                ) from None
            raise ConfigError(
                f"the LM cache directory {directory} cannot be used ({type(exc).__name__}: {exc}); "
                "check its permissions, or choose another one (--dspex-cache-dir) or --dspex-cache=off"
            ) from None

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        """A read-only connection to one shard; a shard in a folder we may not write is opened immutable.

        diskcache's databases are in WAL mode, and SQLite's read-only mode still needs to create
        the ``-shm`` file next to the database: in a read-only folder (a cache restored from CI, a
        mounted volume) every read fails with "attempt to write a readonly database". Nobody can
        write there, so reading the file as immutable is exact.
        """
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            conn.execute("SELECT rowid FROM Cache LIMIT 1").fetchall()  # damage shows here, not mid-run
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            folder = os.path.dirname(path)
            if _corrupt(exc) or os.access(folder, os.W_OK) or os.path.exists(path + "-wal"):
                raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)
        try:
            conn.execute("SELECT rowid FROM Cache LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def get(self, key: str) -> str | None:
        if not self._shards:
            return None
        folder, conn = self._shards[(zlib.adler32(key.encode()) & 0xFFFFFFFF) % len(self._shards)]
        row = conn.execute(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
            " AND (expire_time IS NULL OR expire_time > ?)",
            (key, time.time()),
        ).fetchone()
        if row is None:
            return None
        mode, filename, value = row
        if mode == 1:  # diskcache MODE_RAW
            return str(value)
        if mode == 3:  # MODE_TEXT: a long value in its own file
            with open(os.path.join(folder, filename), encoding="utf-8") as f:
                return f.read()
        raise ValueError(f"unexpected cache value mode {mode}")  # a miss, with a warning

    def set(self, key: str, raw: str) -> None:  # pragma: no cover - these modes never write
        raise RuntimeError(f"cache mode {self.mode!r} never writes")

    def close(self) -> None:
        for _, conn in self._shards:
            conn.close()
        self._shards = []

    def __len__(self) -> int:
        return sum(int(conn.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]) for _, conn in self._shards)

    def __iter__(self) -> Any:
        for _, conn in self._shards:
            for (key,) in conn.execute("SELECT key FROM Cache WHERE raw = 1").fetchall():
                yield key


_GITIGNORE = "# Created by pytest-dspex automatically (its LM response cache).\n*\n"


def _ignore_in_git(directory: str) -> None:
    """Create ``directory`` with a ``.gitignore`` of ``*`` in it, as pytest does for ``.pytest_cache``:
    a ``git add -A`` never commits the cache's SQLite files. Only when this creates the folder — a
    folder the user made (or keeps in git on purpose) is left as it is."""
    if os.path.isdir(directory):
        return
    os.makedirs(directory, exist_ok=True)
    try:
        with open(os.path.join(directory, ".gitignore"), "x", encoding="utf-8") as fh:
            fh.write(_GITIGNORE)
    except FileExistsError:  # another worker wrote it
        pass


#: how long the writer waits for more entries before writing (``flush`` and ``close`` do not wait)
WRITE_DELAY_S = 0.05
#: entries waiting for the writer at most: beyond, the caller writes them itself (back-pressure), so a
#: run that fetches faster than SQLite writes does not hold its whole backlog in memory (a quiet
#: 100k-example fill peaked at 484 MB with one queued write per answer)
MAX_PENDING = 2048


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
        # JSON text, not the parsed answer: a few hundred bytes an entry instead of a tree of small
        # objects several times that (100k examples: ~100 MB less), and every hit a fresh dict
        self._memory: OrderedDict[str, str] = OrderedDict()
        self._disk: Any = None  # the storage tier (``Storage``)
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[tuple[str, str]] = []  # entries waiting for the writer
        self._pending_lock = threading.Lock()
        self._draining = False  # the writer has a drain queued or running
        self._wake = threading.Event()  # set: write now, without waiting for more entries (flush, close)
        if self.directory is not None and mode != "off":
            self._disk = self._open_disk(self.directory, mode)

    @staticmethod
    def _open_disk(directory: str, mode: CacheMode = "on") -> Storage | None:
        if mode == "on":
            return DiskStorage(directory, mode)
        if not os.path.isdir(directory):
            return None  # read-only and replay never create a cache: every lookup misses
        return ReadOnlyDiskStorage(directory, mode)

    @property
    def reads(self) -> bool:
        return self.mode != "off"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.mode == "off":
            return None
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            answer: dict[str, Any] = json.loads(hit)
            return answer
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
                self._remember(key, raw)
                return value
        return None

    def miss(self, key: str, model: str) -> None:
        """Called on a miss: in replay mode, that is an error."""
        if self.mode == "replay":
            where = self.directory or "(memory)"
            if self.directory is not None and not os.path.isdir(self.directory):  # a typo, or never recorded here
                shown = _shown(self.directory)
                raise CacheMissError(
                    f"replay mode: the answer cache folder {shown} does not exist, so nothing can be replayed from it: "
                    f"record the answers there with a run in cache mode 'on' (--dspex-cache=on --dspex-cache-dir={shown}), "
                    "or point --dspex-cache-dir at the folder that holds the recording"
                )
            raise CacheMissError(
                f"replay mode: no cached answer for this {model} request (key {key[:12]}…) in {where}; "
                "record it with a run using cache mode 'on' (--dspex-cache=on)"
            )

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.mode != "on":
            return
        raw = json.dumps(value, ensure_ascii=False)
        self._remember(key, raw)
        if self._disk is not None:
            with self._pending_lock:
                self._pending.append((key, raw))
                if len(self._pending) < MAX_PENDING:
                    if self._draining:
                        return  # the writer will take it with the others
                    self._draining = True
                    if self._writer is None:
                        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-cache")
                    self._writer.submit(self._drain)
                    return
                batch, self._pending = self._pending, []  # the writer is behind: write them here
            self._write(batch)

    def _drain(self) -> None:
        """The writer: wait a moment for more entries, write what is waiting, again until nothing is."""
        self._wake.wait(WRITE_DELAY_S)
        self._wake.clear()
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            self._write(batch)

    def _write(self, batch: list[tuple[str, str]]) -> None:
        set_many = getattr(self._disk, "set_many", None)
        if set_many is not None and len(batch) > 1:
            try:
                set_many(batch)
                return
            except Exception as exc:  # one bad entry must not lose the others: write them one by one
                logger.debug("pytest-dspex: batched cache write failed (%s); writing entries one by one", exc)
        for key, raw in batch:
            try:
                self._disk.set(key, raw)
            except Exception as exc:
                logger.warning("pytest-dspex: could not write cache entry (%s)", exc)

    def _remember(self, key: str, raw: str) -> None:
        mem = self._memory
        mem[key] = raw
        if len(mem) > self.memory_entries:
            mem.popitem(last=False)

    def flush(self) -> None:
        """Wait until every pending disk write is done."""
        if self._writer is not None:
            self._wake.set()
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        if self._writer is not None:
            self._wake.set()
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._disk is not None:
            self._disk.close()

    def __len__(self) -> int:
        return len(self._disk) if self._disk is not None else len(self._memory)

    def __repr__(self) -> str:
        return f"ResponseCache(directory={self.directory!r}, mode={self.mode!r})"
