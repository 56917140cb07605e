"""A cheap serving path for the standalone fake LM endpoint (``python -m pytest_dspex.testing.fake_server``).

The benchmarks run the fake endpoint in a process of its own next to the product under test, on the
same cores: its CPU is CPU a real hosted endpoint never takes from the client's machine. Served by
aiohttp's server (:class:`~pytest_dspex.testing.fake_server.FakeLMServer`) it costs 0.16 ms of CPU a
request driven by a bare aiohttp client (0.27 ms by the ``openai`` SDK), this server 0.10 ms
(0.15 ms): ``bench/fake_server_cpu.py``, bench/RESULTS-issue22.md. It answers the same requests with
the same bodies from an ``asyncio.Protocol``: HTTP/1.1 with keep-alive, ``Content-Length`` request
bodies, pipelined requests answered in order, the latency a ``loop.call_later`` per request (no task),
each answer built once as bytes. What it serves is what ``main()`` serves: ``POST /v1/chat/completions`` (the responder,
``max_tokens`` cuts, usage, the faults of :class:`Faults`, the ``max_in_flight`` 429 with
``Retry-After``), ``GET /v1/models`` and ``GET /v1/_counts``.

Not served: chunked request bodies (answered 501, then the connection is closed), HTTP/2, TLS. A
request line or header it cannot read is answered 400 and its connection closed; the server goes on.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .answers import (
    BAD_SHAPE,
    GARBLED,
    NOT_FOUND_ERROR,
    Faults,
    Responder,
    chat_completion,
    pick_fault,
    refusal_completion,
)

__all__ = ["FastLMServer", "serve"]

_REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 413: b"Payload Too Large",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented",
}  # fmt: skip
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json; charset=utf-8"
_MAX_HEAD = 64 * 1024  # a request line and headers longer than this: 431, closed
_MAX_BODY = 64 * 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _response(status: int, body: bytes, content_type: bytes = _TEXT, headers: bytes = b"", close: bool = False) -> bytes:
    """One whole HTTP/1.1 response; ``headers``: more header lines, each ending in CRLF."""
    if close:
        headers += b"Connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, _REASONS[status], content_type, len(body), headers, body)  # fmt: skip


def _json(status: int, value: Any, close: bool) -> bytes:
    return _response(status, json.dumps(value).encode(), _JSON, close=close)


class FastLMServer:
    """The state and the answers: what each request gets, counted as ``FakeLMServer`` counts them."""

    def __init__(self, responder: Responder, *, latency: float = 0.0, faults: Faults | None = None,
                 model: str = "fake-model", max_in_flight: int | None = None) -> None:  # fmt: skip
        self.responder = responder
        self.latency = latency
        self.faults = faults or Faults()
        self.model = model
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.peak_in_flight = 0
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(self.faults.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        retry_after = f"Retry-After: {self.faults.retry_after}\r\n".encode()
        self._too_many = {  # by close: the cap's and the ``http_429`` fault's answers, built once
            close: _response(429, b"too many requests in flight", headers=retry_after, close=close) for close in (False, True)
        }
        self._slow_down = {close: _response(429, b"slow down", headers=retry_after, close=close) for close in (False, True)}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        self._loop = asyncio.get_running_loop()
        server = await self._loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        return server

    # -- routes: each returns the response's bytes now, or schedules ``conn.answer(slot, ...)``

    def route(self, conn: _Connection, slot: list[Any], method: bytes, target: bytes, body: bytes, close: bool) -> None:
        path = target.split(b"?", 1)[0]
        if path == b"/v1/chat/completions":
            if method == b"POST":
                return self.chat(conn, slot, body, close)
            allowed = b"POST"
        elif path in (b"/v1/models", b"/v1/_counts"):
            if method in (b"GET", b"HEAD"):
                value = self.models() if path == b"/v1/models" else self.counts_json()
                data = _json(200, value, close)
                if method == b"HEAD":
                    data = data[: data.index(b"\r\n\r\n") + 4]
                return conn.answer(slot, data)
            allowed = b"GET, HEAD"
        else:
            return conn.answer(slot, _response(404, b"404: Not Found", close=close))
        conn.answer(slot, _response(405, b"405: Method Not Allowed", headers=b"Allow: %s\r\n" % allowed, close=close))

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

    def counts_json(self) -> dict[str, Any]:
        return {**self.counts, "requests": sum(self.counts.values()), "peak_in_flight": self.peak_in_flight, "early": 0}

    def chat(self, conn: _Connection, slot: list[Any], raw: bytes, close: bool) -> None:
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            self.counts["over_cap"] += 1
            return conn.answer(slot, self._too_many[close])
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # (UnicodeDecodeError is one)
            error = {"error": {"message": f"The request body is not a JSON object: {exc}", "type": "invalid_request_error"}}
            return conn.answer(slot, _json(400, error, close))
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        fault = pick_fault(self.faults, self._rng)
        self.counts[fault or "ok"] += 1
        delay = self.latency
        try:
            if fault is None or fault == "stall":
                data = _json(200, chat_completion(body, self.responder, self.model), close)
                if fault == "stall":
                    delay += self.faults.stall_s
            elif fault == "http_500":
                data = _response(500, b"internal error (injected)", close=close)
            elif fault == "http_429":
                data = self._slow_down[close]
            elif fault == "garbled":
                data = _response(200, GARBLED.encode(), _JSON, close=close)
            elif fault == "bad_shape":
                data = _json(200, BAD_SHAPE, close)
            elif fault == "http_404":
                data = _json(404, NOT_FOUND_ERROR, close)
            else:  # refusal
                data = _json(200, refusal_completion(body, self.model), close)
        except Exception:  # the responder's own error (e.g. a body without messages): as aiohttp answers it
            data = _response(500, b"500 Internal Server Error\n\nServer got itself in trouble", close=close)
        if delay > 0:
            assert self._loop is not None
            self._loop.call_later(delay, self._done, conn, slot, data)
        else:
            self._done(conn, slot, data)

    def _done(self, conn: _Connection, slot: list[Any], data: bytes) -> None:
        self.in_flight -= 1
        conn.answer(slot, data)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as their bytes arrive, answers them in the order they came.

    Each request gets a slot ``[response bytes or None, close after it]`` in ``pending``; an answer
    fills its slot and writes every filled slot at the head, so pipelined requests whose answers are
    ready out of order are still answered in order.
    """

    __slots__ = ("buf", "closing", "head", "pending", "server", "transport")

    def __init__(self, server: FastLMServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: deque[list[Any]] = deque()
        self.head: tuple[bytes, bytes, int, bool] | None = None  # a request whose body has not all come
        self.closing = False  # no more requests read: the last one asked to close, or could not be read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # answers still due are dropped (their timers still count them out)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.buf
        buf += data
        try:
            self._parse(buf)
        except Exception:  # a bug of ours must not leave the client waiting: answer 500 and close
            self._fail(500, b"500 Internal Server Error\n\nServer got itself in trouble")

    def _parse(self, buf: bytearray) -> None:
        while not self.closing:
            if self.head is None:
                while buf[:2] == b"\r\n":  # empty lines before a request line are ignored (RFC 9112 2.2)
                    del buf[:2]
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        self._fail(431, b"request line and headers too long")
                    return
                raw = bytes(buf[:end])
                del buf[: end + 4]
                head = self._read_head(raw)
                if head is None:
                    return
                self.head = head[:4]
                if head[4] and len(buf) < head[2] and self.transport is not None:
                    self.transport.write(_CONTINUE)
            method, target, length, close = self.head
            if len(buf) < length:
                return
            body = bytes(buf[:length])
            del buf[:length]
            self.head = None
            slot: list[Any] = [None, close]
            self.pending.append(slot)
            if close:
                self.closing = True
            self.server.route(self, slot, method, target, body, close)

    def _read_head(self, head: bytes) -> tuple[bytes, bytes, int, bool, bool] | None:
        """``(method, target, Content-Length, close after it, expects 100-continue)``, or None: answered and closing."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha() or not parts[1].startswith(b"/"):
            self._fail(400, b"bad request line")
            return None
        method, target, version = parts
        close = version == b"HTTP/1.0"
        length, expect = 0, False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self._fail(400, b"bad header line")
                return None
            name = name.lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    self._fail(400, b"bad Content-Length")
                    return None
                length = int(value)
                if length > _MAX_BODY:
                    self._fail(413, b"request body too large")
                    return None
            elif name == b"connection":
                value = value.lower()
                if b"close" in value:
                    close = True
                elif b"keep-alive" in value:
                    close = False
            elif name == b"transfer-encoding":
                self._fail(501, b"chunked request bodies are not served: send a Content-Length")
                return None
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        return method, target, length, close, expect

    def _fail(self, status: int, text: bytes) -> None:
        """Answer ``status`` after the answers still due, then close: the bytes after it cannot be framed."""
        self.closing = True
        self.head = None
        self.buf.clear()
        slot: list[Any] = [None, True]
        self.pending.append(slot)
        self.answer(slot, _response(status, text, close=True))

    def answer(self, slot: list[Any], data: bytes) -> None:
        slot[0] = data
        transport, pending = self.transport, self.pending
        if transport is None:
            return
        while pending and pending[0][0] is not None:
            data, close = pending.popleft()
            transport.write(data)
            if close:
                transport.close()
                self.transport = None
                pending.clear()
                return


def serve(responder: Responder, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
          faults: Faults | None = None, max_in_flight: int | None = None,
          ready: Callable[[str], None] | None = None) -> None:  # fmt: skip
    """Serve on this thread until interrupted; ``ready(base_url)`` once listening."""
    import gc

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fast = FastLMServer(responder, latency=latency, faults=faults, max_in_flight=max_in_flight)
    server = loop.run_until_complete(fast.start(host, port))
    bound = server.sockets[0].getsockname()[1]
    gc.freeze()  # what start-up made lives as long as the process: no collection walks it again
    if ready is not None:
        ready(f"http://{host}:{bound}/v1")
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        loop.close()
