"""Which caller made a request to the loopback endpoint: its context crosses the HTTP hop.

Application code calls the loopback endpoint (``loopback``) over HTTP, from the thread or task
that evaluates one example. The endpoint must count that call for the example (its tokens, cost,
cache hits), reuse the example's rollout id (repeats) and report an LM error to it — all of which
live in context variables of the caller, which a socket does not carry. While an endpoint is
open, two things carry them:

* **httpx clients** (the ``openai`` SDK, LiteLLM, LangChain's OpenAI clients; ``httpx`` and
  ``httpx2``): the default transports' ``handle_request`` / ``handle_async_request`` are wrapped,
  and a request to a live endpoint's address is answered in the process, without the socket: the
  endpoint's ``respond`` runs on pytest-dspex's loop in the caller's context (``_runtime.run_sync``
  from a thread, awaited from a task), and the transport returns its answer as the response. The
  client's own machinery (auth, hooks, retries, streaming, parsing) runs as for any server; the
  hop costs no connection, no HTTP parsing on either side.
* **every other client** (DSPy 3.4's own socket transport, ``requests``/``urllib3``,
  ``http.client``, aiohttp): ``socket.socket.send`` / ``sendall`` are wrapped; a socket connected
  to a live endpoint records, by its local port, the context of the last thread or task that sent
  on it. An HTTP/1.1 connection carries one request at a time, so when the endpoint reads a
  request from peer port P, the context that sent it is the one recorded for P (sockets to any
  other address are looked at once, then passed through).

Why at the moment of sending and not a per-example URL: clients are usually built once (a
module-level ``OpenAI()``) and reused by every example and thread, so only the moment of sending
knows the caller. Requests from another process are answered in the endpoint's own context:
counted for the run, not for an example.

Only requests to a live endpoint's own address are touched; the wrappers are removed when the
last endpoint closes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import socket
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .._support import runtime as _runtime

__all__ = ["LMErrors", "Reply", "claim_port", "lm_errors", "open_address", "served_error"]

#: what an endpoint answers: status, headers, body
Reply = tuple[int, dict[str, str], bytes]
Responder = Callable[[str, str, bytes], Coroutine[Any, Any, Reply]]

_endpoints: dict[tuple[str, int], list[Responder | None]] = {}  # (host, port) of live endpoints -> their ``respond``
_lock = threading.Lock()
_originals: list[tuple[type, str, Any]] = []  # what ``_install`` replaced, to put back

#: the LM errors the loopback endpoint answered a caller with (``lm_errors``): a plain function
#: under evaluation that fails after one re-raises it, so the record's error kind is the LM's
#: (``budget``, ``cache_miss``, ``lm_unavailable``), not ``program``.
LMErrors = list[BaseException]
_errors: contextvars.ContextVar[LMErrors | None] = contextvars.ContextVar("dspex_loopback_errors", default=None)


@contextlib.contextmanager
def lm_errors() -> Iterator[LMErrors]:
    """Collect the LM errors the loopback endpoint answers the calls made inside this block with."""
    errors: LMErrors = []
    token = _errors.set(errors)
    try:
        yield errors
    finally:
        _errors.reset(token)


def served_error(exc: BaseException) -> None:
    """The endpoint answered the current caller with ``exc``: tell its ``lm_errors`` block, if any."""
    errors = _errors.get()
    if errors is not None:
        errors.append(exc)


def claim_port(port: int | None) -> contextvars.Context | None:
    """The context that last sent on the client socket whose local port is ``port`` (None if unknown)."""
    return _by_port.get(port) if port is not None else None


@contextlib.contextmanager
def open_address(host: str, port: int, respond: Responder | None) -> Iterator[None]:
    """While open, requests to ``host:port`` (and its loopback aliases) carry their sender's context;
    those of httpx clients are answered by ``respond`` in the process (None: over the socket)."""
    names = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
    with _lock:
        for name in names:
            _endpoints.setdefault((name, port), []).append(respond)
        if not _originals:
            _install()
    try:
        yield
    finally:
        with _lock:
            for name in names:
                live = _endpoints.get((name, port), [])
                if respond in live:
                    live.remove(respond)
                if not live:
                    _endpoints.pop((name, port), None)
            if not _endpoints:
                _uninstall()


# -- httpx: answered in the process -----------------------------------------------------------------
def _responder(request: Any) -> Responder | None:
    url = request.url
    live = _endpoints.get((url.host, url.port))
    return live[-1] if live else None


_builders: dict[type, Callable[[int, dict[str, str], bytes, Any], Any]] = {}  # a flavour's Request class -> its builder


def _response(request: Any, reply: Reply) -> Any:
    status, headers, body = reply
    kind = type(request)
    build = _builders.get(kind)
    if build is None:  # httpx or httpx2: its own Response
        build = _builders[kind] = _builder(importlib.import_module(kind.__module__.split(".")[0]))
    return build(status, headers, body, request)


_CONTENT_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding"})


def _builder(module: Any) -> Callable[[int, dict[str, str], bytes, Any], Any]:
    """How a reply becomes this httpx flavour's ``Response``: what ``Response(content=body)`` gives (its
    ``Content-Length``, the body read, the stream consumed and closed) without its generic path — the
    read through the stream's iterators and the content decoder cost ~22 µs of the ~27 of each call of
    the in-process hop. Used when a probe shows the two give the same response (else, or for a reply
    with its own content headers, ``Response(content=body)`` itself)."""
    response_class, byte_stream = module.Response, getattr(module, "ByteStream", None)

    def generic(status: int, headers: dict[str, str], body: bytes, request: Any) -> Any:
        return response_class(status, headers=headers, content=body, request=request)

    if byte_stream is None:
        return generic

    def direct(status: int, headers: dict[str, str], body: bytes, request: Any) -> Any:
        if not body or any(name.lower() in _CONTENT_HEADERS for name in headers):
            return generic(status, headers, body, request)
        response = response_class(status, headers=[*headers.items(), ("Content-Length", str(len(body)))], stream=byte_stream(body), request=request)
        response._content = body  # what ``read()`` leaves: no content-encoding, the bytes as they are
        response.is_stream_consumed = response.is_closed = True
        return response

    try:
        request = module.Request("POST", "http://127.0.0.1/v1/chat/completions")
        reply = (200, {"content-type": "application/json", "x-dspex-cache": "hit"}, b'{"id": "probe"}')
        want, got = generic(*reply, request), direct(*reply, request)
        same = (
            {k: v for k, v in vars(want).items() if k not in ("stream", "headers", "_decoder")}
            == {k: v for k, v in vars(got).items() if k not in ("stream", "headers", "_decoder")}
            and want.headers.raw == got.headers.raw and type(want.stream) is type(got.stream)
        )  # fmt: skip
    except Exception:  # another httpx than the ones this was written for: its own way
        same = False
    return direct if same else generic


def _wrap_transport(handle: Any) -> Any:
    @functools.wraps(handle)
    def wrapped(self: Any, request: Any) -> Any:
        respond = _responder(request) if _endpoints else None
        if respond is None:
            return handle(self, request)
        if _runtime.in_runtime():
            raise RuntimeError(
                "a synchronous LM client (e.g. openai.OpenAI) was called from async code running on pytest-dspex's "
                "event loop, which it would block; in an async function use the async client (openai.AsyncOpenAI)"
            )
        body = request.read()
        return _response(request, _runtime.run_sync(respond(request.method, request.url.path, body)))

    wrapped.__dspex_wrapped__ = handle  # type: ignore[attr-defined]
    return wrapped


def _wrap_async_transport(handle: Any) -> Any:
    @functools.wraps(handle)
    async def wrapped(self: Any, request: Any) -> Any:
        respond = _responder(request) if _endpoints else None
        if respond is None:
            return await handle(self, request)
        body = await request.aread()
        return _response(request, await _runtime.run_async(respond(request.method, request.url.path, body)))

    wrapped.__dspex_wrapped__ = handle  # type: ignore[attr-defined]
    return wrapped


# -- everything else: the sending socket's context --------------------------------------------------
_by_port: dict[int, contextvars.Context] = {}  # local port of a socket to a live endpoint -> last sender's context
_socket_ports: weakref.WeakKeyDictionary[socket.socket, int] = weakref.WeakKeyDictionary()  # 0: not to an endpoint


def _note_sender(sock: socket.socket) -> None:
    port = _socket_ports.get(sock)
    if port is None:  # first send on this socket: is its peer a live endpoint?
        try:
            peer = sock.getpeername()
            port = sock.getsockname()[1] if (peer[0], peer[1]) in _endpoints else 0
        except (OSError, TypeError, IndexError):
            port = 0
        try:
            _socket_ports[sock] = port
        except TypeError:  # pragma: no cover - a socket that cannot be weakly referenced
            return
    if port:
        _by_port[port] = contextvars.copy_context()


def _wrap_socket(send: Any) -> Any:
    @functools.wraps(send)
    def wrapped(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if _endpoints:
            _note_sender(self)
        return send(self, *args, **kwargs)

    wrapped.__dspex_wrapped__ = send  # type: ignore[attr-defined]
    return wrapped


def _replace(cls: type, attr: str, wrap: Callable[[Any], Any]) -> None:
    original = getattr(cls, attr, None)
    if original is None or hasattr(original, "__dspex_wrapped__"):
        return
    _originals.append((cls, attr, original))
    setattr(cls, attr, wrap(original))


def _install() -> None:
    """Wrap the default transports of every httpx flavour that is installed, and the socket's sends."""
    for attr in ("send", "sendall"):
        _replace(socket.socket, attr, _wrap_socket)
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "HTTPTransport"):
            _replace(module.HTTPTransport, "handle_request", _wrap_transport)
        if hasattr(module, "AsyncHTTPTransport"):
            _replace(module.AsyncHTTPTransport, "handle_async_request", _wrap_async_transport)


def _uninstall() -> None:
    while _originals:
        cls, attr, original = _originals.pop()
        inherited = cls is socket.socket and original is getattr(socket.socket.__mro__[1], attr, None)
        if inherited:
            delattr(cls, attr)  # it was the C method, inherited: inherit it again
        else:
            setattr(cls, attr, original)
    _by_port.clear()
