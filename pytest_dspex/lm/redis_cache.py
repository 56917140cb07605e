"""A shared response cache in Redis, for many processes and machines (``--dspex-cache-url``).

Two pieces:

* :class:`RedisStorage` is a storage tier with the surface the disk cache uses behind
  :class:`~pytest_dspex.lm.cache.ResponseCache`: ``get(key) -> str | None``, ``set(key, raw)``,
  ``close()`` and ``len()``. Values are the cached response data as JSON text, each written whole
  with one ``SET`` (Redis applies a command atomically, so concurrent writers never tear an entry and
  never lose one another's keys). Keys are ``dspex:v1:`` + the request hash from ``cache_key`` — no
  secret is in a key or a value.
* :class:`RedisResponseCache` is a ``ResponseCache`` (same modes: ``on``, ``off``, ``read-only``,
  ``replay``; same in-memory LRU and background writer) whose storage tier is Redis::

      lm = LM("gpt-4o-mini", cache=RedisResponseCache("redis://127.0.0.1:6379/0"))

Losing Redis is never a failed example: the first connection error or timeout logs ONE warning on
the ``pytest_dspex.cache`` logger and the cache carries on without Redis for the rest of the run
(answers already in memory still hit; new ones are asked of the LM). In ``replay`` mode a request
that is not in memory is then a cache miss (an infrastructure error counted against the error
budget), because a replay run must never call an LM. Redis calls use short socket timeouts and no
client-side retries, so a Redis that hangs stalls at most one call for ``timeout`` seconds.

Needs the ``[redis]`` extra (redis-py >= 5).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import CacheMissError, ConfigError
from .cache import CacheMode, ResponseCache, Storage

__all__ = ["KEY_PREFIX", "RedisResponseCache", "RedisStorage", "open_response_cache", "redact_url"]

KEY_PREFIX = "dspex:v1:"
SCHEMES = ("redis", "rediss", "unix")
logger = logging.getLogger("pytest_dspex.cache")


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://user:secret@host`` → ``redis://user:***@host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"cache URL {redact_url(url)!r} is not a valid Redis URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"cache URL {redact_url(url)!r} is not a Redis URL: expected redis://HOST:PORT/DB (or rediss:// or unix://)"
        )


class RedisStorage:
    """The Redis storage tier: whole JSON values under hashed keys; degrades to nothing on failure."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        timeout: float = 1.0,
        client: Any = None,
    ) -> None:
        _check_url(url)
        self.url = redact_url(url)
        self.prefix = prefix
        self._lock = threading.Lock()
        self._down: str | None = None
        if client is None:
            try:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry
            except ImportError:
                raise ConfigError("a Redis cache URL needs redis-py: pip install 'pytest-dspex[redis]'") from None
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # no client-side retries: a dead Redis must cost one failed call, not seconds of backoff
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=0,
            )
        self._client = client
        try:
            self._client.ping()
        except Exception as exc:
            self._fail(exc)

    @property
    def available(self) -> bool:
        """False once Redis failed: from then on this tier is a no-op."""
        return self._down is None

    @property
    def failure(self) -> str | None:
        """Why Redis was given up on, if it was."""
        return self._down

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._down is not None:
                return
            self._down = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "pytest-dspex: the Redis cache at %s is unavailable (%s); carrying on without it for the rest "
            "of this run (answers are asked of the LM and not shared)",
            self.url,
            self._down,
        )

    def get(self, key: str) -> str | None:
        if self._down is not None:
            return None
        try:
            raw = self._client.get(self.prefix + key)
        except Exception as exc:
            self._fail(exc)
            return None
        if raw is None:
            return None
        if isinstance(raw, bytes):
            return raw.decode("utf-8")  # a bad entry raises ValueError: the caller treats it as a miss
        return str(raw)

    def set(self, key: str, raw: str) -> None:
        if self._down is not None:
            return
        try:
            self._client.set(self.prefix + key, raw.encode("utf-8"))
        except Exception as exc:
            self._fail(exc)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

    def __len__(self) -> int:
        if self._down is not None:
            return 0
        try:
            return sum(1 for _ in self._client.scan_iter(match=self.prefix + "*", count=1000))
        except Exception as exc:
            self._fail(exc)
            return 0

    def __repr__(self) -> str:
        return f"RedisStorage({self.url!r})"


def _is_a_storage_tier(storage: RedisStorage) -> Storage:
    return storage  # mypy checks that RedisStorage keeps to cache.Storage, the tier ResponseCache reads


class RedisResponseCache(ResponseCache):
    """``ResponseCache`` (memory LRU, modes, background writer) with Redis as its storage tier."""

    def __init__(
        self,
        url: str,
        mode: CacheMode = "on",
        *,
        memory_entries: int = 50_000,
        prefix: str = KEY_PREFIX,
        timeout: float = 1.0,
        client: Any = None,
    ) -> None:
        _check_url(url)
        super().__init__(None, mode, memory_entries=memory_entries)
        self.url = redact_url(url)
        self.storage: RedisStorage | None = None
        if mode != "off":
            self.storage = RedisStorage(url, prefix=prefix, timeout=timeout, client=client)
            # ResponseCache keeps its storage tier (``cache.Storage``) in ``_disk``
            self._disk = _is_a_storage_tier(self.storage)

    @property
    def available(self) -> bool:
        return self.storage is not None and self.storage.available

    def miss(self, key: str, model: str) -> None:
        if self.mode == "replay":
            why = ""
            if self.storage is not None and self.storage.failure is not None:
                why = f" (the Redis cache is unavailable: {self.storage.failure})"
            raise CacheMissError(
                f"replay mode: no cached answer for this {model} request (key {key[:12]}…) in {self.url}{why}; "
                "record it with a run using cache mode 'on' (--dspex-cache=on)"
            )

    def __repr__(self) -> str:
        return f"RedisResponseCache({self.url!r}, mode={self.mode!r})"


def open_response_cache(
    mode: CacheMode,
    *,
    directory: str | os.PathLike[str] | None = None,
    url: str | None = None,
    memory_entries: int = 50_000,
) -> ResponseCache | None:
    """The session's response cache: Redis when ``url`` is given (``--dspex-cache-url``), else the
    disk cache in ``directory``; None when ``mode`` is ``off``."""
    if mode == "off":
        return None
    if url:
        return RedisResponseCache(url, mode, memory_entries=memory_entries)
    return ResponseCache(directory, mode, memory_entries=memory_entries)
