"""One HTTP attempt: POST a chat-completions body, get the parsed JSON or an ``LMError``.

An httpx ``AsyncClient`` (with the ``httpx-aiohttp`` transport: httpx's own pool costs several ms
of CPU per request at 64+ connections) is made per event loop on first use and closed at
shutdown. Every message is built from the redacted URL and scrubbed of the credentials' secrets.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from .. import _runtime
from .._exceptions import LMHTTPError, LMResponseError, LMTimeoutError, LMUnavailableError
from .resilience import parse_retry_after
from .secrets import Credentials, redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["HTTPTransport"]


class HTTPTransport:
    def __init__(
        self,
        credentials: Credentials,
        *,
        model: str,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._credentials = credentials
        self._endpoint = credentials.url + "/chat/completions"
        self.label = f"LM {model} at {redact_url(credentials.url)}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._transport = transport
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import httpx  # imported on first use: keeps `import pytest_dspex` fast

            transport = self._transport
            if transport is None:
                limits = httpx.Limits(max_connections=self.max_connections)
                try:
                    from httpx_aiohttp import AiohttpTransport
                except ImportError:  # pragma: no cover - a declared dependency
                    transport = httpx.AsyncHTTPTransport(limits=limits)
                else:
                    transport = AiohttpTransport(limits=limits)
            client = self._clients[loop] = httpx.AsyncClient(
                transport=transport,
                headers={"content-type": "application/json"},
                auth=_holder_auth(self._credentials) if self._credentials.authorization else None,
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout, pool=None),
            )
            if _runtime.in_runtime():
                _runtime.on_shutdown(self.aclose)
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (clients of other loops go with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always awaited
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    @property
    def open(self) -> bool:
        return bool(self._clients)

    async def post(self, content: bytes) -> dict[str, Any]:
        """One request; the parsed chat completion, or an ``LMError`` saying what went wrong."""
        import httpx

        client = self._client()
        scrub = self._credentials.scrub
        try:
            async with asyncio.timeout(self.timeout + self.connect_timeout):
                resp = await client.post(self._endpoint, content=content)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if _refused(exc):
                raise LMUnavailableError(f"{self.label}: connection refused") from None
            raise LMTimeoutError(f"{self.label}: no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise LMUnavailableError(f"{self.label}: {type(exc).__name__}: {scrub(str(exc))}") from None
        except ValueError as exc:  # e.g. aiohttp refusing a URL it cannot use
            raise LMUnavailableError(f"{self.label}: {type(exc).__name__}: {scrub(str(exc))}") from None
        if resp.status_code != 200:
            detail = scrub(resp.text[:200]).strip()
            raise LMHTTPError(
                f"{self.label}: HTTP {resp.status_code}" + (f": {detail}" if detail else ""),
                status=resp.status_code,
                retry_after=parse_retry_after(resp.headers.get("retry-after")),
            )
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LMResponseError(
                f"{self.label}: the body is not a chat completion ({type(exc).__name__}): {scrub(resp.text[:120])!r}"
            ) from None
        return data  # type: ignore[no-any-return]


_auth_class: type | None = None


def _holder_auth(credentials: Credentials) -> Any:
    """An ``httpx.Auth`` setting ``Authorization`` per request from the holder (the client keeps no copy)."""
    global _auth_class
    if _auth_class is None:
        import httpx

        class HolderAuth(httpx.Auth):
            def __init__(self, credentials: Credentials) -> None:
                self._credentials = credentials

            def auth_flow(self, request: httpx.Request) -> Any:
                request.headers["authorization"] = self._credentials.authorization or ""
                yield request

        _auth_class = HolderAuth
    return _auth_class(credentials)


def _refused(exc: BaseException) -> bool:
    """httpx-aiohttp reports a refused connection as ConnectTimeout; look at the real cause."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ConnectionError) or (isinstance(cause, OSError) and not isinstance(cause, TimeoutError)):
            return True
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    return False
