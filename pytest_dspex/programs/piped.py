"""The loopback's LM work in a serving process of its own, over one multiplexed pipe.

Issue 22: a function calling the ``openai`` SDK spends the evaluating process's one core on the
SDK itself (~1 ms a call) plus, answered in process, the session LM's work for each call (the
upstream request through aiohttp, the cache, the accounting: ~0.5 ms). With ``ServingProcess`` the
loopback keeps its in-process hop (the SDK's httpx request answered in the process, no socket, no
HTTP parsing) but hands the request's raw bytes to a serving process (``serving``) that owns the
LM work, over one socket pair: each request a frame ``(id, method, path, rollout, events?, body)``,
each reply a frame ``(id, status, usage, headers, accounting, body)`` (the usage packed, the
accounting — LM call events when the evaluating process listens, LM errors — JSON only when there is
any); the frames written in one turn of the loop go out in one write on both sides. The other core does the LM's work.

Guarantees:

* **one LM**: the serving process builds the session's LM (same cache, mode, retries, breaker)
  linked to the run's limits and budget (``lm.link``), which the evaluating process's own LM uses
  too: the loopback's calls and the programs' share one in-flight limit, breaker and budget;
* **attribution**: each reply carries its call's usage, LM call events and LM errors; ``respond``
  counts them in the caller's context (the example's usage and cache hits, ``lm_errors``, the
  reports' events) as an in-process answer would;
* **secrets**: the upstream key goes over the pipe only — not in argv, not in the serving
  process's environment (the key variables are removed from it), never in a file or a log;
* **faults**: a serving process that cannot start, or dies, answers nothing more: every waiting
  and later request returns None and the endpoint answers it in process (``lost`` says why, once;
  the plugin warns). Nothing waits for a process that is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import typing
from collections.abc import Callable
from typing import Any

from .. import errors as _errors
from ..lm import callers
from ..lm.usage import Usage, record
from ..observe import events

__all__ = ["ServingProcess"]

logger = logging.getLogger("pytest_dspex.lm")

_HEAD = struct.Struct("!II")  # request id (0: control), payload length
_REPLY = struct.Struct("!HBII")  # status, packed usage's length (0: in the accounting), headers' and accounting's lengths
SERVING_MODULE = "pytest_dspex.programs.serving"  # what the serving process runs (``python -m``)
START_TIMEOUT = 30.0  # seconds for the serving process to import, build its LM and say it is ready
_USAGE_FIELDS = frozenset(Usage.__dataclass_fields__)
_USAGE_NAMES = tuple(Usage.__dataclass_fields__)
#: a call's usage, every field in order: 64-bit integers, the cost a double (no JSON either way)
_USAGE = struct.Struct("!" + "".join("d" if kind is float else "q" for kind in typing.get_type_hints(Usage).values()))
#: the reply headers' JSON, both ways: a handful of distinct sets in a run (content type, cache hit or miss)
_HEADERS_OUT: dict[tuple[tuple[str, str], ...], bytes] = {}
_HEADERS_IN: dict[bytes, dict[str, str]] = {}
_HEADERS_KEPT = 256


def frame(rid: int, payload: bytes) -> bytes:
    return _HEAD.pack(rid, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    rid, size = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    return rid, await reader.readexactly(size)


def request_frame(rid: int, method: str, path: str, rollout: Any, body: bytes, wants_events: bool = True) -> bytes:
    """``wants_events``: the evaluating process has event listeners (else the reply carries no LM call events)."""
    head = f"{method}\0{path}\0{json.dumps(rollout) if rollout is not None else ''}\0{'e' if wants_events else ''}\0".encode()
    return frame(rid, head + body)


def split_request(payload: bytes) -> tuple[str, str, Any, bytes, bool]:
    method, path, rollout, wants, body = payload.split(b"\0", 4)
    return method.decode(), path.decode(), json.loads(rollout) if rollout else None, body, bool(wants)


def reply_frame(rid: int, reply: callers.Reply, usage: Usage, noted: list[dict[str, Any]] | None, errors: list[BaseException]) -> bytes:
    """The reply, and what the call cost: its usage packed (``_USAGE``: every field, no JSON), its LM call
    events (when asked for) and LM errors as JSON, left out when there are none (the usual case)."""
    status, headers, body = reply
    accounting: dict[str, Any] = {}
    try:
        packed = _USAGE.pack(*[getattr(usage, name) for name in _USAGE_NAMES])
    except struct.error:  # a field that is not what its annotation says: sent exactly, as JSON
        packed, accounting["usage"] = b"", {name: getattr(usage, name) for name in _USAGE_NAMES}
    if noted:
        accounting["events"] = noted
    if errors:
        accounting["errors"] = [error_info(e) for e in errors]
    key = tuple(headers.items())
    head = _HEADERS_OUT.get(key)
    if head is None:
        head = json.dumps(headers).encode()
        if len(_HEADERS_OUT) < _HEADERS_KEPT:
            _HEADERS_OUT[key] = head
    acct = json.dumps(accounting).encode() if accounting else b""
    return frame(rid, _REPLY.pack(status, len(packed), len(head), len(acct)) + packed + head + acct + body)


def split_reply(payload: bytes) -> tuple[callers.Reply, Usage | None, dict[str, Any]]:
    """(status, headers, body), the call's usage (None: in the accounting) and its accounting (events, errors)."""
    status, ulen, hlen, alen = _REPLY.unpack_from(payload)
    at = _REPLY.size
    usage = Usage(*_USAGE.unpack_from(payload, at)) if ulen else None
    at += ulen
    head = payload[at : at + hlen]
    headers = _HEADERS_IN.get(head)
    if headers is None:
        headers = json.loads(head)
        if len(_HEADERS_IN) < _HEADERS_KEPT:
            _HEADERS_IN[head] = headers
    at += hlen
    accounting = json.loads(payload[at : at + alen]) if alen else {}
    return (status, dict(headers), payload[at + alen :]), usage, accounting


def error_info(exc: BaseException) -> dict[str, Any]:
    """An LM error the serving process answered with, as the evaluating process rebuilds it."""
    return {"type": type(exc).__name__, "message": str(exc), "status": getattr(exc, "status", None),
            "retry_after": getattr(exc, "retry_after", None), "retries": getattr(exc, "retries", 0)}  # fmt: skip


def rebuild_error(info: dict[str, Any]) -> BaseException:
    cls = getattr(_errors, str(info.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, _errors.DspexError)):
        cls = _errors.LMError
    exc: BaseException
    if issubclass(cls, _errors.LMHTTPError):
        exc = cls(info["message"], status=int(info.get("status") or 502), retry_after=info.get("retry_after"))
    else:
        exc = cls(info["message"])
    if info.get("retries"):
        exc.retries = info["retries"]  # type: ignore[attr-defined]
    return exc


#: frames a ``Coalescer`` holds before it writes them without waiting for the loop's turn to end
FLUSH_AT = 4


class _Writer(typing.Protocol):
    """A stream writer or a transport: where a ``Coalescer`` writes."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class _Replies(asyncio.Protocol):
    """The evaluating process's end of the pipe: reply frames parsed as their bytes arrive, each
    waiting request's future resolved right there — no reader task woken per batch, no coroutine
    per frame (a ``StreamReader`` costs two ``readexactly`` a frame and a task step a read).
    Frame 0 is the serving process's word at start-up (``said``)."""

    def __init__(self, owner: ServingProcess) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self.said: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at, size, waiting = 0, len(buffer), self._owner._waiting
        while size - at >= _HEAD.size:
            rid, length = _HEAD.unpack_from(buffer, at)
            end = at + _HEAD.size + length
            if end > size:
                break
            fut = self.said if rid == 0 else waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(bytes(buffer[at + _HEAD.size : end]))
            at = end
        if at:
            del buffer[:at]

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.said.done():
            self.said.set_result(None)  # it ended before it said it was ready
        self._owner._ended()


class Coalescer:
    """Frames sent during one turn of the loop go out in one write, ``FLUSH_AT`` at a time at most.

    A turn of the evaluating process's loop can be long: a burst of answers read at once wakes every
    example waiting for them, and each runs its SDK work (~1 ms) and sends its next request in the
    same turn. Held to the turn's end, 50 requests left together 50 ms late, came back together, and
    the run moved in waves: measured (1,000-3,000 examples of an ``AsyncOpenAI`` function, 64 at once,
    a 50 ms endpoint), a call took 81 ms against the serving process's 56 ms, 0.45-0.52 of the
    latency limit; written four at a time, 0.55-0.65, with the same CPU per example.
    """

    __slots__ = ("_out", "_writer")

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer
        self._out: list[bytes] = []

    def send(self, data: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)
        if len(self._out) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if not self._out:  # written already (``FLUSH_AT``): the turn's scheduled flush has nothing left
            return
        data = b"".join(self._out)
        self._out.clear()
        if not self._writer.is_closing():
            self._writer.write(data)


class ServingProcess:
    """The evaluating process's side: starts the serving process on first use, forwards requests.

    ``config`` (called off the loop, once) gives the serving process's LM configuration
    (``SessionLMs.serving_config``); None, or an exception, means the loopback is not served
    apart: ``respond`` returns None and nothing is said (the in-process path says any error)."""

    def __init__(self, config: Callable[[], dict[str, Any] | None]) -> None:
        self._config = config
        self._starting: asyncio.Future[bool] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.Transport | None = None
        self._closing = False
        self._out: Coalescer | None = None
        self._waiting: dict[int, asyncio.Future[bytes | None]] = {}
        self._ids = itertools.count(1)
        self._reading: asyncio.Task[None] | None = None
        #: why the serving process is not used any more (it could not start, or died): said once
        self.lost: str | None = None
        self.told = False
        self.forwarded = 0
        #: requests waiting for the serving process when it was lost (answered in process instead)
        self.orphaned = 0

    @property
    def ready(self) -> bool:
        """Is the serving process up and answering (requests before it is are answered in process)?"""
        return self._writer is not None and self.lost is None

    @property
    def in_flight(self) -> int:
        """Requests waiting for the serving process's answer."""
        return len(self._waiting)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- life -----------------------------------------------------------------------------------
    async def begin(self) -> None:
        """Start the serving process in the background (on the loop); requests meanwhile are answered in process."""
        if self._starting is None:
            task = asyncio.get_running_loop().create_task(self._ensure())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # said through ``lost``, never raised

    async def _ensure(self) -> bool:
        if self._writer is not None:
            return self.lost is None
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_future()
            try:
                up = await self._start()
            except BaseException as exc:
                up = False
                if not isinstance(exc, Exception):
                    self._starting.set_result(False)
                    raise
                self._lose(f"the loopback's serving process could not start ({type(exc).__name__}: {exc})")
            self._starting.set_result(up)
            return up
        return await asyncio.shield(self._starting)

    async def _start(self) -> bool:
        try:
            config = await asyncio.to_thread(self._config)
        except BaseException as exc:  # pytest.fail's (no model named): the in-process path says it where it is asked
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            config = None
        if config is None:
            self.lost = "not served apart"
            self.told = True  # nothing to say: the session's configuration keeps it in process
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if not _secret_variable(k, config)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", SERVING_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        transport, replies = await asyncio.get_running_loop().create_unix_connection(lambda: _Replies(self), sock=ours)
        transport.write(frame(0, json.dumps(config).encode()))
        del config
        try:
            said = await asyncio.wait_for(replies.said, START_TIMEOUT)
            answer = json.loads(said) if said is not None else {}
        except (TimeoutError, ValueError):
            answer = {}
        if not answer.get("ready"):
            self._closing = True  # what the pipe's end says next is not news
            transport.close()
            self._kill()
            self._lose(f"the loopback's serving process could not start ({answer.get('failed', 'it ended or said nothing within 30 s')})")
            return False
        self._writer, self._out = transport, Coalescer(transport)
        return True

    def _ended(self) -> None:
        """The pipe closed: the serving process ended (or was closed by ``aclose`` / ``_lose``)."""
        if self._closing or self._writer is None or self.lost is not None:  # closed here, or not ready yet (``_start`` says it)
            return
        process = self._process
        code = process.poll() if process is not None else None
        ended = f"the loopback's serving process{f' (pid {process.pid})' if process is not None else ''} ended"
        self._lose(ended + _how_it_ended(code))  # the requests waiting for it are answered here at once
        if process is not None and code is None and self.lost == ended:
            self._reading = asyncio.get_running_loop().create_task(self._exit_status(process, ended))

    async def _exit_status(self, process: subprocess.Popen[bytes], ended: str) -> None:
        for _ in range(50):  # its pipe closes a moment before it is reaped: its exit status, for the warning
            await asyncio.sleep(0.01)
            if (code := process.poll()) is not None:
                self.lost = ended + _how_it_ended(code)
                break

    def _lose(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        if self.lost is None:
            self.orphaned = sum(not fut.done() for fut in waiting.values())
            self.lost = why
            logger.warning("pytest-dspex: %s; the loopback endpoint answers in this process from now on", why)
        for fut in waiting.values():
            if not fut.done():
                fut.set_result(None)
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    async def aclose(self) -> None:
        self._closing = True
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()  # the serving process ends when its pipe closes
        if self._reading is not None:
            self._reading.cancel()
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 5)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.lost is None:
            self.lost = "closed"
            self.told = True

    # -- requests -------------------------------------------------------------------------------
    async def respond(self, method: str, path: str, body: bytes, rollout: Any) -> callers.Reply | None:
        """The serving process's answer, counted in the caller's context; None: answer in process
        (it is lost, or still starting: the first request starts it)."""
        if self._writer is None or self.lost is not None:
            if self._starting is None and self.lost is None:
                await self.begin()
            return None
        assert self._out is not None
        rid = next(self._ids)
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._out.send(request_frame(rid, method, path, rollout, body, events.has_listeners()))
        payload = await fut
        if payload is None:
            return None
        reply, usage, accounting = split_reply(payload)
        self.forwarded += 1
        _count(usage, accounting)
        return reply


def _count(usage: Usage | None, accounting: dict[str, Any]) -> None:
    """A served call's accounting, counted in the caller's context as the LM would have."""
    if usage is None and (fields := accounting.get("usage")):
        usage = Usage(**{k: v for k, v in fields.items() if k in _USAGE_FIELDS})
    if usage is not None:
        record(usage)
    noted = accounting.get("events")
    if noted and events.has_listeners():
        for data in noted:
            data = dict(data)
            data.pop("event", None)
            events.emit(events.LMCallEvent(**data))
    for info in accounting.get("errors") or ():
        callers.served_error(rebuild_error(info))


def _secret_variable(name: str, config: dict[str, Any]) -> bool:
    """Environment variables the serving process does not inherit: the key's (it gets it over the pipe)."""
    upper = name.upper()
    return upper in ("OPENAI_API_KEY", str(config["settings"].get("api_key_env", "")).upper()) or upper.endswith("_API_KEY")


def _how_it_ended(returncode: int | None) -> str:
    """`` (killed by SIGKILL)``, `` (exit code 1)``, or nothing while it is not known."""
    if returncode is None:
        return ""
    if returncode < 0:
        import signal

        try:
            return f" (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f" (killed by signal {-returncode})"
    return f" (exit code {returncode})"
