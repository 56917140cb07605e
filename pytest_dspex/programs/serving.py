"""The loopback endpoint's serving process: ``python -m pytest_dspex.programs.serving FD``.

Started by ``piped.ServingProcess`` with one end of a socket pair as file descriptor ``FD`` (its
only argument: no secret in argv; the environment it inherits has the API key variables removed).
The first frame is the session LM's configuration, secrets included (``SessionLMs.serving_config``):
this process builds the same LM — same cache and mode, retries, breaker — linked to the run's
limits and budget (``lm.link.RunLink``, the coordinator the evaluating process and every xdist
worker use), so the loopback's calls and the programs' own calls are one LM's. Then each request
frame is answered by a ``LoopbackEndpoint.respond`` with that LM, and its reply frame carries what
the call cost (usage, LM call events, LM errors) for the evaluating process to count against the
example that asked. Replies ready in one turn of the loop go out in one write. The process ends
when the pipe closes (its parent ended or closed it). Nothing is printed, nothing is logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
import sys
from typing import Any

from . import piped

_events: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("dspex_served_events", default=None)


def _note_event(event: Any) -> None:
    found = _events.get()
    if found is not None:
        found.append(event.to_dict())


def _build(config: dict[str, Any]) -> Any:
    from ..lm import LM
    from ..lm.link import RunLink
    from ..lm.redis_cache import open_response_cache
    from ..lm.resilience import Breaker
    from ..lm.secrets import Credentials, redact_url

    settings = dict(config["settings"])
    credentials = Credentials(config["url"].rstrip("/"), config["api_key"], env_key=config["env_key"])
    breaker = Breaker(redact_url(credentials.url), 5, 30.0, settings.get("rate_limit_patience", 60.0))
    address, _, token = config["limits"].partition(" ")
    link = RunLink(address, token, name="loopback serving process")
    cache_spec = config["cache"]
    cache = open_response_cache(cache_spec["mode"], directory=cache_spec["directory"])
    budget = link.budget(*config["budget"]) if config["budget"] else None
    return LM(config["model"], cache=cache, budget=budget, limits=link, _family=(credentials, breaker), **settings)


async def serve(sock: socket.socket) -> None:
    from ..lm import callers
    from ..lm.usage import track_usage
    from ..observe import events
    from .loopback import LoopbackEndpoint

    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        config = json.loads((await piped.read_frame(reader))[1])
        lm = _build(config)
        del config
    except Exception as exc:  # said to the evaluating process, which serves the loopback itself
        writer.write(piped.frame(0, json.dumps({"failed": f"{type(exc).__name__}: {exc}"}).encode()))
        await writer.drain()
        return
    endpoint = LoopbackEndpoint(lm)
    events.subscribe(_note_event)
    out = piped.Coalescer(writer)
    writer.write(piped.frame(0, b'{"ready": true}'))

    async def one(rid: int, payload: bytes) -> None:
        method, path, rollout, body, wants_events = piped.split_request(payload)
        noted: list[dict[str, Any]] | None = [] if wants_events else None
        _events.set(noted)
        with track_usage() as usage, callers.lm_errors() as errors:
            reply = await endpoint.respond(method, path, body, rollout=rollout)
        out.send(piped.reply_frame(rid, reply, usage, noted, errors))

    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                rid, payload = await piped.read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            task = asyncio.get_running_loop().create_task(one(rid, payload), context=contextvars.Context())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await lm.aclose()
        if lm.cache is not None:
            lm.cache.flush()
            lm.cache.close()
        if lm.limits is not None:
            await lm.limits.aclose()


def main(argv: list[str]) -> None:
    from .._support import runtime as _runtime

    sock = socket.socket(fileno=int(argv[0]))
    try:
        _runtime.run_sync(serve(sock))
    finally:
        sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
