"""One HTTP attempt: POST a chat-completions body, get the parsed JSON or an ``LMError``.

``HTTPTransport`` is the one client path every request takes: the headers (``Authorization`` set
per request from the credentials holder; no client keeps a copy), the overall timeout, the status
and body checks and every error message (built from the redacted URL, scrubbed of the credentials'
secrets). Below it, a :class:`Wire` — one HTTP library on one event loop — only moves bytes:

* :class:`AiohttpWire` (the default): an ``aiohttp.ClientSession`` made per event loop on first use
  and closed at shutdown. Measured on a loopback endpoint at 64 concurrent requests, httpx's own
  pool costs several ms of CPU per request, and httpx in front of aiohttp (``httpx-aiohttp``) still
  spends ~0.1 ms per request building and parsing its own request/response objects, plus ~0.1 s to
  import.
* :class:`HttpxWire`: an ``httpx.AsyncClient`` over a caller-supplied ``httpx.AsyncBaseTransport``
  (``LM(transport=...)``, e.g. ``httpx.MockTransport`` in tests): the tests that use a mock
  transport run the same client code as production, only the bytes move differently.

A wire reports what went wrong in three words every wire speaks: ``TimeoutError`` (no answer in
time), ``ConnectionRefusedError`` (nobody listens), :class:`WireError` (anything else, with the
library's exception); ``HTTPTransport`` turns them into ``LMTimeoutError`` / ``LMUnavailableError``.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._support import runtime as _runtime
from .._support.deferred_certs import import_aiohttp
from ..errors import LMHTTPError, LMResponseError, LMTimeoutError, LMUnavailableError
from .resilience import parse_retry_after
from .secrets import Credentials, redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["AiohttpWire", "HTTPTransport", "HttpxWire", "Wire", "WireError"]


class WireError(Exception):
    """A request a wire could not make (not a timeout, not a refused connection): ``error`` says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class Wire(Protocol):
    """One HTTP library on one event loop: POST bytes, return ``(status, body, Retry-After)``."""

    async def post(self, content: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, str | None]: ...

    async def aclose(self) -> None: ...


class AiohttpWire:
    """The production wire: an ``aiohttp.ClientSession`` (no cookies, no redirects)."""

    def __init__(self, endpoint: str, *, timeout: float, connect_timeout: float, max_connections: int) -> None:
        import yarl

        aiohttp = import_aiohttp()

        self._url = yarl.URL(endpoint)  # parsed once, not per request
        ssl: Any = _ssl_context() if self._url.scheme == "https" else True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=ssl),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout),
        )

    async def post(self, content: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, str | None]:
        import aiohttp

        try:
            async with self._session.post(self._url, data=content, headers=headers, allow_redirects=False) as resp:
                return resp.status, await resp.read(), resp.headers.get("retry-after")
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise ConnectionRefusedError from None
            raise WireError(exc) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: e.g. a URL aiohttp cannot use
            raise WireError(exc) from None

    async def aclose(self) -> None:
        await self._session.close()


class HttpxWire:
    """An ``httpx.AsyncClient`` over the caller's ``httpx.AsyncBaseTransport`` (e.g. ``MockTransport``)."""

    def __init__(self, endpoint: str, transport: httpx.AsyncBaseTransport, *, timeout: float, connect_timeout: float) -> None:
        import httpx

        self._endpoint = endpoint
        self._client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None))

    async def post(self, content: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, str | None]:
        import httpx

        try:
            resp = await self._client.post(self._endpoint, content=content, headers=dict(headers))
        except (TimeoutError, httpx.TimeoutException) as exc:
            if _refused(exc):  # a caller's transport may report a refused connection as a timeout
                raise ConnectionRefusedError from None
            raise TimeoutError from None
        except (httpx.HTTPError, ValueError) as exc:
            raise WireError(exc) from None
        return resp.status_code, resp.content, resp.headers.get("retry-after")

    async def aclose(self) -> None:
        await self._client.aclose()


#: LiteLLM's provider prefixes (``dspy.LM("openai/gpt-4o-mini")``): a 404 for such a name says it is sent as given
_LITELLM_PROVIDERS = frozenset({
    "openai", "azure", "azure_ai", "anthropic", "gemini", "vertex_ai", "bedrock", "ollama", "ollama_chat",
    "hosted_vllm", "vllm", "together_ai", "groq", "mistral", "deepseek", "fireworks_ai", "cohere", "xai",
    "perplexity", "databricks", "lm_studio", "litellm_proxy", "text-completion-openai", "cerebras",
})  # fmt: skip


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
        self._model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._transport = transport
        if transport is None:
            # aiohttp is imported when the first LM is made (50-130 ms cold), not inside the first
            # request, where it would delay every request of the first wave (measured: the first of
            # 50 bootstrap calls answered at 148 ms with a 50 ms endpoint). ``import pytest_dspex``
            # and a pytest run that makes no LM stay free of it. Its default SSL contexts load the CA
            # store at their first use, not at import (``deferred_certs``: never, for this client).
            import_aiohttp()
            import yarl  # noqa: F401
        self._wires: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wire] = weakref.WeakKeyDictionary()

    # -- wires, one per event loop --------------------------------------------------------------
    def _wire(self) -> Wire:
        loop = asyncio.get_running_loop()
        wire = self._wires.get(loop)
        if wire is None:
            if self._transport is None:
                wire = AiohttpWire(self._endpoint, timeout=self.timeout, connect_timeout=self.connect_timeout, max_connections=self.max_connections)
            else:
                wire = HttpxWire(self._endpoint, self._transport, timeout=self.timeout, connect_timeout=self.connect_timeout)
            self._wires[loop] = wire
            if _runtime.in_runtime():
                _runtime.on_shutdown(self.aclose)
        return wire

    async def aclose(self) -> None:
        """Close the wire of the running loop (wires of other loops go with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always awaited
            return
        wire = self._wires.pop(loop, None)
        if wire is not None:
            await wire.aclose()

    @property
    def open(self) -> bool:
        return bool(self._wires)

    def _hint(self, status: int) -> str:
        """A 404 from a base URL whose path has no ``/v1``: the usual slip (``http://host:8000``); or for a
        model name spelt as LiteLLM (DSPy) spells it, ``openai/gpt-4o-mini``: sent as given here."""
        from urllib.parse import urlsplit

        if status != 404:
            return ""
        path = urlsplit(self._credentials.url).path.rstrip("/")
        if "/v1" not in path:
            return f" (the base URL's path {path or '/'!r} has no /v1: OpenAI-compatible servers answer at <host>/v1/chat/completions)"
        provider, slash, name = self._model.partition("/")
        if slash and name and provider.lower() in _LITELLM_PROVIDERS:
            return (f" (the model name {self._model!r} has LiteLLM's provider prefix {provider + '/'!r}: "
                    f"pytest-dspex sends the name as given; try --dspex-model={name})")  # fmt: skip
        return ""

    # -- one request ----------------------------------------------------------------------------
    async def post(self, content: bytes) -> dict[str, Any]:
        """One request; the parsed chat completion, or an ``LMError`` saying what went wrong."""
        wire = self._wire()
        auth = self._credentials.authorization
        headers = {"content-type": "application/json", "authorization": auth} if auth else _JSON_HEADERS
        try:
            async with asyncio.timeout(self.timeout + self.connect_timeout):
                status, body, retry_after = await wire.post(content, headers)
        except TimeoutError:
            raise LMTimeoutError(f"{self.label}: no answer within {self.timeout:g}s") from None
        except ConnectionRefusedError:
            raise LMUnavailableError(f"{self.label}: connection refused") from None
        except WireError as exc:
            raise self._unavailable(exc.error) from None
        scrub = self._credentials.scrub
        if status != 200:
            detail = scrub(_text(body)[:200]).strip()
            raise LMHTTPError(
                f"{self.label}: HTTP {status}{_phrase(status)}" + (f": {detail}" if detail else "") + self._hint(status),
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
