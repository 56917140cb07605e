"""One HTTP attempt: POST a chat-completions body, get the parsed JSON or an ``LMError``.

By default the request goes straight through an ``aiohttp.ClientSession`` made per event loop on
first use and closed at shutdown: measured on a loopback endpoint at 64 concurrent requests, httpx's
own pool costs several ms of CPU per request, and httpx in front of aiohttp (``httpx-aiohttp``) still
spends ~0.1 ms per request building and parsing its own request/response objects, plus ~0.1 s to
import. A caller-supplied ``httpx.AsyncBaseTransport`` (``LM(transport=...)``, e.g.
``httpx.MockTransport`` in tests) goes through an ``httpx.AsyncClient`` instead. Both paths give the
same errors. Every message is built from the redacted URL and scrubbed of the credentials' secrets;
the ``Authorization`` header is set per request from the holder (no client keeps a copy).
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from typing import TYPE_CHECKING, Any

from .._support import runtime as _runtime
from ..errors import LMHTTPError, LMResponseError, LMTimeoutError, LMUnavailableError
from .resilience import parse_retry_after
from .secrets import Credentials, redact_url

if TYPE_CHECKING:
    import aiohttp
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
        if transport is None:
            # aiohttp is imported when the first LM is made (50-130 ms cold), not inside the first
            # request, where it would delay every request of the first wave (measured: the first of
            # 50 bootstrap calls answered at 148 ms with a 50 ms endpoint). ``import pytest_dspex``
            # and a pytest run that makes no LM stay free of it.
            import aiohttp  # noqa: F401
            import yarl  # noqa: F401
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._url: Any = None  # the endpoint as a parsed ``yarl.URL`` (parsed once, not per request)

    # -- clients, one per event loop ------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._clients.get(loop)
        if session is None:
            import aiohttp  # imported on first use: keeps `import pytest_dspex` fast
            import yarl

            if self._url is None:
                self._url = yarl.URL(self._endpoint)
            ssl: Any = _ssl_context() if self._url.scheme == "https" else True
            connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=ssl)
            session = self._clients[loop] = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.timeout),
            )
            self._on_shutdown()
        return session

    def _httpx_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import httpx

            client = self._clients[loop] = httpx.AsyncClient(
                transport=self._transport,
                headers={"content-type": "application/json"},
                auth=_holder_auth(self._credentials) if self._credentials.authorization else None,
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout, pool=None),
            )
            self._on_shutdown()
        return client

    def _on_shutdown(self) -> None:
        if _runtime.in_runtime():
            _runtime.on_shutdown(self.aclose)

    async def aclose(self) -> None:
        """Close the client of the running loop (clients of other loops go with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always awaited
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await (client.aclose() if self._transport is not None else client.close())

    @property
    def open(self) -> bool:
        return bool(self._clients)

    # -- one request ----------------------------------------------------------------------------
    async def post(self, content: bytes) -> dict[str, Any]:
        """One request; the parsed chat completion, or an ``LMError`` saying what went wrong."""
        if self._transport is not None:
            status, body, retry_after = await self._post_httpx(content)
        else:
            status, body, retry_after = await self._post_aiohttp(content)
        scrub = self._credentials.scrub
        if status != 200:
            detail = scrub(_text(body)[:200]).strip()
            raise LMHTTPError(
                f"{self.label}: HTTP {status}{_phrase(status)}" + (f": {detail}" if detail else ""),
                status=status,
                retry_after=parse_retry_after(retry_after),
            )
        try:
            data = json.loads(body)
            text = data["choices"][0]["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LMResponseError(
                f"{self.label}: the body is not a chat completion ({type(exc).__name__}): {scrub(_text(body)[:120])!r}"
            ) from None
        return data  # type: ignore[no-any-return]

    async def _post_aiohttp(self, content: bytes) -> tuple[int, bytes, str | None]:
        import aiohttp

        session = self._session()
        auth = self._credentials.authorization
        headers = {"content-type": "application/json", "authorization": auth} if auth else _JSON_HEADERS
        try:
            async with asyncio.timeout(self.timeout + self.connect_timeout):
                async with session.post(self._url, data=content, headers=headers, allow_redirects=False) as resp:
                    return resp.status, await resp.read(), resp.headers.get("retry-after")
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise LMTimeoutError(f"{self.label}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise LMUnavailableError(f"{self.label}: connection refused") from None
            raise self._unavailable(exc) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: e.g. a URL aiohttp cannot use
            raise self._unavailable(exc) from None

    async def _post_httpx(self, content: bytes) -> tuple[int, bytes, str | None]:
        import httpx

        client = self._httpx_client()
        try:
            async with asyncio.timeout(self.timeout + self.connect_timeout):
                resp = await client.post(self._endpoint, content=content)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if _refused(exc):
                raise LMUnavailableError(f"{self.label}: connection refused") from None
            raise LMTimeoutError(f"{self.label}: no answer within {self.timeout:g}s") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise self._unavailable(exc) from None
        return resp.status_code, resp.content, resp.headers.get("retry-after")

    def _unavailable(self, exc: BaseException) -> LMUnavailableError:
        return LMUnavailableError(f"{self.label}: {type(exc).__name__}: {self._credentials.scrub(str(exc))}")


_JSON_HEADERS = {"content-type": "application/json"}


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


_ssl: Any = None


def _ssl_context() -> Any:
    """Certificate checks as httpx makes them: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else certifi's bundle."""
    global _ssl
    if _ssl is None:
        import ssl

        if os.environ.get("SSL_CERT_FILE"):
            _ssl = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        elif os.environ.get("SSL_CERT_DIR"):
            _ssl = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
        else:
            import certifi

            _ssl = ssl.create_default_context(cafile=certifi.where())
    return _ssl


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
    """A caller's httpx transport may report a refused connection as a timeout; look at the real cause."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, ConnectionError) or (isinstance(cause, OSError) and not isinstance(cause, TimeoutError)):
            return True
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    return False


def _phrase(status: int) -> str:
    """`` Not Found`` for 404: what the status means, for error messages."""
    import http

    try:
        return " " + http.HTTPStatus(status).phrase
    except ValueError:
        return ""
