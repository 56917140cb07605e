"""A loopback OpenAI-compatible endpoint in front of an ``LM``: any LM code under the gate.

    with LoopbackEndpoint(lm) as endpoint:          # the plugin: the ``dspex_endpoint`` fixture
        client = openai.OpenAI(base_url=endpoint.base_url, api_key="anything")
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

``POST /v1/chat/completions`` goes through ``lm.arespond``: the LM's cache (same keys and modes:
``replay`` answers from the cache or fails, never calls upstream), in-flight sharing, circuit
breaker, budget, retries, limits and accounting — the path a program's own call takes. What the
application sends and what is used:

* ``messages``, ``temperature``, ``max_tokens`` (or ``max_completion_tokens``), ``stop`` and every
  other sampling or tool field are the request, hence the cache key; fields that do not change
  the answer (``stream``, ``stream_options``, ``user``, ``metadata``, ``store``) are left out.
* ``model`` is not: the LM's model answers (the session's ``--dspex-model``, or the embedded
  model), whatever model the code names; the answer's ``model`` says which.
* the application's API key (``Authorization``) is ignored and never read; the LM's own key goes
  upstream. Nothing is logged.
* ``stream: true`` is answered whole by the LM (so it is cached like any request) and sent as
  OpenAI's server-sent events: a role chunk, content chunks, a finish chunk, a usage chunk when
  ``stream_options.include_usage`` asks, then ``[DONE]``.

``GET /v1/models`` lists the LM's model. Errors are OpenAI-shaped (``{"error": {"message", "type",
"param", "code"}}``): a bad request is a 400; an upstream refusal keeps its status (429, 401,
404, 5xx, with ``Retry-After``); an unreachable upstream is a 502, a timeout a 504, an open
breaker or a replay miss a 503, a spent budget a 429 ``insufficient_quota``. Every error carries
``x-should-retry: false``: the LM client has already retried, and SDKs that retry on their own
(the ``openai`` SDK does, twice) would multiply the calls.

Who asked: a request is answered in the context of the thread or task that sent it (``callers``)
— its tokens, cost and cache hits count for the example being evaluated, its repeat's rollout id
keys the cache. httpx clients (the ``openai`` SDK, LiteLLM) are answered in the process, without
the socket; other clients over HTTP. Either way the work runs on pytest-dspex's event loop, where
the LM lives; application code calls it from threads (sync clients) or tasks (async clients) —
a sync client called on that loop itself is an error saying to use the async client, not a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._support import runtime as _runtime
from ..errors import (
    BudgetExceededError,
    CacheMissError,
    CircuitOpenError,
    DspexError,
    LMError,
    LMHTTPError,
    LMTimeoutError,
    LMUnavailableError,
    ModelRefusedError,
)
from ..lm import callers
from ..lm.types import LMRequest
from . import settings

if TYPE_CHECKING:
    from aiohttp import web

    from ..lm.client import LM
    from .piped import ServingProcess

__all__ = ["LoopbackEndpoint"]

#: request fields that do not change the answer: not sent upstream, not in the cache key
_NEUTRAL = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"})
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip
_NO_RETRY = {"x-should-retry": "false"}
_CALLER: Any = object()  # respond's rollout: the caller's (its call overrides)


class BadRequest(Exception):
    """What is wrong with a request, as OpenAI says it (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class LoopbackEndpoint:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose every answer comes through ``lm``.

    ``lm`` may be a zero-argument callable, called (in a worker thread) on the first request that
    needs it: the plugin's session LM, which may start the embedded model, is only built when an
    application asks. ``counts`` says what was served: ``answered``, ``cache_hits``, ``streamed``,
    ``errors``, ``bad_requests``, ``unattributed`` (requests over the socket without a caller's
    context). ``in_process=False`` sends httpx clients over the socket too (for measuring the hop).
    ``serving``: a ``piped.ServingProcess`` that does the chat completions' LM work in a process of
    its own (counted here, in the caller's context); when it cannot, they are answered here.
    """

    def __init__(
        self, lm: LM | Callable[[], LM], *, host: str = "127.0.0.1", port: int = 0, in_process: bool = True, serving: ServingProcess | None = None,
        sock: Any = None,
    ) -> None:
        self._lm: LM | None = None
        self._make: Callable[[], LM] | None = None
        if callable(lm) and not hasattr(lm, "arespond"):
            self._make = lm
        else:
            self._lm = lm  # type: ignore[assignment]
        self.host = host
        self.port = port
        self.in_process = in_process
        self.counts: Counter[str] = Counter()
        self._runner: Any = None
        self._address: Any = None
        self._lm_lock: asyncio.Lock | None = None
        self.serving = serving
        #: a listening socket bound in advance (its URL handed out before the endpoint started): served as is
        self._sock = sock
        if sock is not None:
            self.host, self.port = sock.getsockname()[:2]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``OPENAI_BASE_URL`` / ``base_url=`` / ``api_base=`` take."""
        if self._runner is None:
            raise RuntimeError("the loopback endpoint is not started")
        return f"http://{self.host}:{self.port}/v1"

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._runner is not None else "stopped"
        return f"LoopbackEndpoint({where})"

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> LoopbackEndpoint:
        if self._runner is None:
            _runtime.run_sync(self._start())
            if self.serving is not None:
                _runtime.run_sync(self.serving.begin())  # up while the run collects; requests until then: here
            self._address = callers.open_address(self.host, self.port, self.respond if self.in_process else None)
            self._address.__enter__()
        return self

    def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        if self.serving is not None:
            try:
                _runtime.run_sync(self.serving.aclose())
            except RuntimeError:
                pass
        if self._address is not None:
            self._address.__exit__(None, None, None)
            self._address = None
        try:
            _runtime.run_sync(runner.cleanup())
        except RuntimeError:  # called from the loop itself (a shutdown callback): nothing to wait for
            pass

    def __enter__(self) -> LoopbackEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        from aiohttp import web

        server = web.Server(self._handle, access_log=None, handler_cancellation=False)
        runner = web.ServerRunner(server, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        site: Any = web.SockSite(runner, self._sock) if self._sock is not None else web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner
        _runtime.on_shutdown(self._cleanup_on_shutdown)

    async def _cleanup_on_shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if self.serving is not None:
            await self.serving.aclose()
        if runner is not None:
            await runner.cleanup()

    async def _get_lm(self) -> LM:
        if self._lm is not None:
            return self._lm
        if self._lm_lock is None:
            self._lm_lock = asyncio.Lock()
        async with self._lm_lock:
            if self._lm is None:
                assert self._make is not None
                # built off the loop: making it may start a server and wait for it
                self._lm = await asyncio.to_thread(self._make)
        return self._lm

    # -- requests -------------------------------------------------------------------------------
    async def respond(self, method: str, path: str, body: bytes, *, rollout: Any = _CALLER) -> callers.Reply:
        """Answer one request: (status, headers, body). Runs on pytest-dspex's loop, in the caller's
        context (its accounting, rollout id and ``lm_errors``): the HTTP server and the in-process
        path for httpx clients (``callers``) both come here. ``rollout``: the repeat's rollout id
        (default: the caller's; the serving process is given it with the request)."""
        path = path.rstrip("/")
        if path.endswith("/chat/completions") and method == "POST":
            if rollout is _CALLER:
                rollout = (settings.get("call_overrides") or {}).get("rollout_id")
            if self.serving is not None:
                reply = await self.serving.respond(method, path, body, rollout)
                if reply is not None:
                    self._served(reply)
                    return reply
            return await self._chat(body, rollout)
        if path.endswith("/models") and method == "GET":
            return await self._models()
        return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None, "not_found")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The HTTP server's handler: a client that is not httpx (or in another process)."""
        from aiohttp import web

        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        context = callers.claim_port(peer[1] if peer else None)
        if context is None:
            self.counts["unattributed"] += 1
            status, headers, content = await self.respond(request.method, request.path, body)
        else:
            task = asyncio.get_running_loop().create_task(self.respond(request.method, request.path, body), context=context)
            status, headers, content = await task
        return web.Response(status=status, body=content, headers=headers)

    async def _models(self) -> callers.Reply:
        try:
            lm = await self._get_lm()
        except BaseException as exc:  # pytest.fail's exception, a ConfigError: said as a 503
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            return self._failed(exc)
        entry = {"id": lm.model, "object": "model", "created": 0, "owned_by": "pytest-dspex"}
        return 200, {"content-type": "application/json"}, json.dumps({"object": "list", "data": [entry]}).encode()

    def _served(self, reply: callers.Reply) -> None:
        """Count an answer of the serving process as ``_chat`` counts its own."""
        status, headers = reply[0], reply[1]
        if status == 200:
            self.counts["answered"] += 1
            self.counts["cache_hits"] += headers.get("x-dspex-cache") == "hit"
            self.counts["streamed"] += headers.get("content-type") == "text/event-stream"
        elif status == 400:
            self.counts["bad_requests"] += 1
        else:
            self.counts["errors"] += 1

    async def _chat(self, raw: bytes, rollout: Any = None) -> callers.Reply:
        try:
            body = _read_json(raw)
            lm_request, params, stream = _translate(body)
        except BadRequest as exc:
            self.counts["bad_requests"] += 1
            return _error(400, str(exc), "invalid_request_error", exc.param, None)
        try:
            lm = await self._get_lm()
            if rollout is not None:  # a repeat of the example: its own cache entry
                params["rollout_id"] = rollout
            data, completion = await lm.arespond(lm_request, **params)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            callers.served_error(exc)
            return self._failed(exc)
        self.counts["answered"] += 1
        self.counts["cache_hits"] += completion.cached
        if completion.refusal is not None and not completion.text.strip():  # relayed as it came; a program
            # that then raises says so (``function``): its error is its own, after the model's refusal
            callers.served_error(ModelRefusedError(f"the model refused: {completion.refusal[:200]!r}", refusal=completion.refusal))
        cache = "hit" if completion.cached else "miss"
        if stream:
            self.counts["streamed"] += 1
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            headers = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-dspex-cache": cache}
            return 200, headers, sse_chunks(data, include_usage=include_usage)
        return 200, {"content-type": "application/json", "x-dspex-cache": cache}, json.dumps(data).encode()

    def _failed(self, exc: BaseException) -> callers.Reply:
        self.counts["errors"] += 1
        status, kind, code = _status(exc)
        headers = dict(_NO_RETRY)
        if isinstance(exc, LMHTTPError) and exc.retry_after is not None:
            headers["retry-after"] = f"{exc.retry_after:g}"
        message = str(getattr(exc, "msg", None) or exc) or type(exc).__name__
        return _error(status, f"pytest-dspex loopback: {message}", kind, None, code, headers)


def _status(exc: BaseException) -> tuple[int, str, str | None]:
    """The HTTP status, error type and code a client sees for ``exc`` (what it would have seen upstream)."""
    if isinstance(exc, BudgetExceededError):
        return 429, "insufficient_quota", "insufficient_quota"
    if isinstance(exc, CacheMissError):
        return 503, "api_error", "dspex_replay_miss"
    if isinstance(exc, CircuitOpenError):
        return 503, "api_error", "dspex_circuit_open"
    if isinstance(exc, LMHTTPError):
        return exc.status, _TYPES.get(exc.status, "api_error"), None
    if isinstance(exc, LMTimeoutError):
        return 504, "api_error", "upstream_timeout"
    if isinstance(exc, LMUnavailableError):
        return 502, "api_error", "upstream_unavailable"
    if isinstance(exc, LMError):
        return 502, "api_error", "upstream_error"
    if isinstance(exc, DspexError):
        return 503, "api_error", exc.kind
    return 503, "api_error", "dspex_unavailable"  # the session's LM could not be made (pytest.fail, ...)


def _error(
    status: int, message: str, kind: str, param: str | None, code: str | None, headers: dict[str, str] | None = None
) -> callers.Reply:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, {"content-type": "application/json", **(headers or _NO_RETRY)}, json.dumps(body).encode()


def _read_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _translate(body: dict[str, Any]) -> tuple[LMRequest, dict[str, Any], bool]:
    """The LM request and call parameters for an OpenAI chat-completions body, and whether to stream."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"Invalid value for 'messages[{i}]': each message is an object with a 'role'", f"messages[{i}]")
    stop = body.get("stop")
    if isinstance(stop, str):
        stops: tuple[str, ...] = (stop,)
    elif stop is None:
        stops = ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest(f"Invalid value for 'stop': {stop!r} (a string or an array of strings)", "stop")
    params = {k: v for k, v in body.items() if k not in _NEUTRAL and k not in ("messages", "stop")}
    newer, older = params.pop("max_completion_tokens", None), params.pop("max_tokens", None)
    limit = newer if newer is not None else older
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest(f"Invalid value for 'max_tokens': {limit!r} (an integer >= 1)", "max_tokens")
        params["max_tokens"] = limit
    temperature = params.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)):
        raise BadRequest(f"Invalid type for 'temperature': {temperature!r} (a number)", "temperature")
    if "temperature" in params and temperature is None:
        del params["temperature"]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"Invalid type for 'stream': {stream!r} (a boolean)", "stream")
    return LMRequest(messages=messages, stop=stops), params, stream


_PIECE = re.compile(r"\s*\S+\s*|\s+")


def sse_chunks(data: dict[str, Any], *, include_usage: bool = False) -> bytes:
    """The server-sent events of ``data`` streamed: what OpenAI sends for ``stream: true``."""
    head = {
        "id": data.get("id") or "chatcmpl-dspex",
        "object": "chat.completion.chunk",
        "created": data.get("created") or int(time.time()),
        "model": data.get("model") or "",
    }
    if data.get("system_fingerprint"):
        head["system_fingerprint"] = data["system_fingerprint"]
    out: list[bytes] = []

    def emit(choices: list[dict[str, Any]], **extra: Any) -> None:
        out.append(b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n")

    for i, choice in enumerate(data.get("choices") or []):
        index = choice.get("index", i)
        message = choice.get("message") or {}
        emit([{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""}, "finish_reason": None}])
        for piece in _PIECE.findall(message.get("content") or ""):
            emit([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
        if message.get("refusal"):
            emit([{"index": index, "delta": {"refusal": message["refusal"]}, "finish_reason": None}])
        for j, call in enumerate(message.get("tool_calls") or []):
            emit([{"index": index, "delta": {"tool_calls": [{"index": j, **call}]}, "finish_reason": None}])
        emit([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}])
    if include_usage and data.get("usage") is not None:
        emit([], usage=data["usage"])
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
