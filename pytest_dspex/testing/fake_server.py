"""An OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

It answers with a function you give it, after a fixed latency, and injects faults on demand::

    def answer(body: dict) -> str:
        return "billing"

    with FakeLMServer(answer, latency=0.05, faults=Faults(http_500=0.1, http_429=0.1)) as server:
        lm = LM("fake", base_url=server.base_url, api_key="test")

Faults: ``http_500``, ``http_429`` (with ``Retry-After: retry_after``), ``garbled`` (a 200 with a
body that is not JSON), ``bad_shape`` (JSON without ``choices``), ``stall`` (sleeps ``stall_s``
before answering), ``refusal`` (a 200 whose message has ``content: null`` and a ``refusal``, as
OpenAI's models decline), ``http_404`` (the wrong path: a 404 with OpenAI's error body). Each is a
probability per request, drawn from a seeded RNG. ``max_in_flight=N`` is a provider's concurrency
cap: a request arriving while N are in flight gets a 429 (``Retry-After: faults.retry_after``),
counted as ``over_cap``; ``peak_in_flight`` is the most it held at once. ``hold_at=N``: the Nth
request gets a 429 with ``Retry-After: faults.retry_after``; each request arriving before that time
is up is counted as ``early`` (and answered as usual: did the clients respect the Retry-After?). ``GET /v1/_counts`` returns
the counts as JSON (for a server in another process). Uses aiohttp's
server (aiohttp is already installed as httpx's transport) on its own thread and loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._support.loop_thread import LoopThread
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

__all__ = ["FakeLMServer", "Faults", "labels_responder"]

def triage_responder(body: dict[str, Any], *, pass_every: int = 1) -> str:
    """A perfect billing/technical router that answers in whichever layout the adapter asked for.

    With ``pass_every=K``, only messages whose ``case N`` has N % K == 0 get the right answer.
    """
    import re

    last = last_user_message(body)
    last = last.rsplit("Message:", 1)[-1] if "Message:" in last else last
    last = last.rsplit("[[ ## message ## ]]", 1)[-1]
    team = "billing" if re.search(r"charge|refund|invoice", last, re.I) else "technical"
    if pass_every > 1:
        m = re.search(r"case (\d+)", last)
        if m is None or int(m.group(1)) % pass_every:
            team = "other"
    system = str(body["messages"][0].get("content", ""))
    if "[[ ## " in system:
        return f"[[ ## team ## ]]\n{team}\n\n[[ ## completed ## ]]"
    if "JSON" in system:
        return json.dumps({"team": team})
    return f" {team}"


def labels_responder(examples: list[dict[str, Any]], inputs: list[str], outputs: list[str], *,
                     reasoning: Callable[[dict[str, Any]], str] | None = None) -> Responder:  # fmt: skip
    """A responder that answers each request with the labels of the example whose inputs it asks
    about, in the layout the adapter asked for (compact ``Label: value`` lines, DSPy's chat sections,
    JSON): a model that is always right. ``reasoning(example)`` writes a ChainOfThought's rationale,
    first, as its ``reasoning`` field; a question no example matches is answered with empty fields.
    Only the ``outputs`` the request asks for are answered (its instructions' "produce the fields
    `a`, `b`"), so each predictor of a multi-predictor program gets its own fields."""
    import re

    def key(values: dict[str, Any]) -> tuple[str, ...]:
        return tuple(" ".join(str(values.get(n, "")).split()) for n in inputs)

    by_inputs = {key(e): e for e in examples}

    def shown(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    def fields_asked(body: dict[str, Any]) -> list[str]:
        system = str((body.get("messages") or [{}])[0].get("content", ""))
        wanted = re.search(r"produce the fields (.*)", system)
        named = [n for n in outputs if wanted is not None and f"`{n}`" in wanted.group(1)]
        return named or outputs

    def respond(body: dict[str, Any]) -> str:
        last = last_user_message(body)
        outputs = fields_asked(body)
        if last.lstrip().startswith("{"):  # the JSON layout: the inputs as an object
            try:
                asked = json.loads(last)
            except ValueError:
                asked = {}
            example = by_inputs.get(key(asked), {})
            fields = (["reasoning"] if reasoning else []) + outputs
            return json.dumps({n: reasoning(example) if n == "reasoning" and reasoning else example.get(n, "") for n in fields})
        chat = "[[ ## " in last
        values = {}
        for n in inputs:
            if chat:
                found = re.search(rf"\[\[ ## {n} ## \]\]\n(.*?)(?:\n\n|$)", last, re.S)
            else:  # the last block of ``Label: value`` lines
                label = n.replace("_", " ").title()
                found = re.search(rf"(?:^|\n){label}: (.*?)(?:\n|$)", last.rsplit("\n\n", 1)[-1], re.S)
            values[n] = found.group(1) if found else ""
        example = by_inputs.get(key(values), {})
        answer = {n: shown(example.get(n, "")) for n in outputs}
        if reasoning is not None:
            answer = {"reasoning": reasoning(example), **answer}
        if chat:
            return "\n\n".join([*(f"[[ ## {n} ## ]]\n{v}" for n, v in answer.items()), "[[ ## completed ## ]]"])
        items = list(answer.items())  # the prompt ends with the first field's label
        return " " + "\n".join([items[0][1], *(f"{n.replace('_', ' ').title()}: {v}" for n, v in items[1:])])

    return respond


def last_user_message(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


class FakeLMServer:
    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency: float = 0.0,
        faults: Faults | None = None,
        port: int = 0,
        model: str = "fake-model",
        host: str = "127.0.0.1",
        reject_fields: tuple[str, ...] = (),
        stall_if: Callable[[dict[str, Any], int], bool] | None = None,
        max_in_flight: int | None = None,
        hold_at: int | None = None,
    ) -> None:
        self.responder: Responder = responder or (lambda body: "ok")
        # body fields this server answers HTTP 400 to, as OpenAI does to a llama.cpp ``grammar``
        self.reject_fields = reject_fields
        # ``stall_if(body, seen)``: stall this request (``faults.stall_s``)? ``seen``: earlier requests
        # with the same messages (0 for the first), so a test can hang a chosen request but not its retry
        self.stall_if = stall_if
        self._seen: Counter[str] = Counter()
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.peak_in_flight = 0
        self.hold_at = hold_at
        self.arrived = 0
        self.early = 0
        self.held_until = 0.0  # monotonic: a 429 with Retry-After asked clients to wait until then
        self.latency = latency
        self.faults = faults or Faults()
        self.port = port
        self.host = host  # 127.0.0.1 unless a test serves another (network-namespace) address
        self.model = model
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.keep_bodies = True
        self._rng = random.Random(self.faults.seed)
        self._thread = LoopThread("fake-lm-server")
        self._runner: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    def _pick_fault(self) -> str | None:
        return pick_fault(self.faults, self._rng)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.arrived += 1
        if self.hold_at is not None:
            now = time.monotonic()
            if self.arrived == self.hold_at:
                self.held_until = now + self.faults.retry_after
                self.counts["hold"] += 1
                return web.Response(status=429, text="slow down", headers={"Retry-After": f"{self.faults.retry_after:g}"})
            if now < self.held_until:
                self.early += 1
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            self.counts["over_cap"] += 1
            return web.Response(status=429, text="too many requests in flight", headers={"Retry-After": str(self.faults.retry_after)})
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _counts(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({**self.counts, "requests": self.requests, "peak_in_flight": self.peak_in_flight,
                                  "early": self.early})

    async def _answer(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        if self.keep_bodies:
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
        rejected = [f for f in self.reject_fields if f in body]
        if rejected:
            self.counts["rejected"] += 1
            error = {"error": {"message": f"Unrecognized request argument supplied: {rejected[0]}", "type": "invalid_request_error"}}
            return web.json_response(error, status=400)
        fault = self._pick_fault()
        if fault is None and self.stall_if is not None:
            seen_key = json.dumps(body.get("messages"), sort_keys=True)
            if self.stall_if(body, self._seen[seen_key]):
                fault = "stall"
            self._seen[seen_key] += 1
        self.counts[fault or "ok"] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "http_500":
            return web.Response(status=500, text="internal error (injected)")
        if fault == "http_429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": str(self.faults.retry_after)})
        if fault == "garbled":
            return web.Response(status=200, text=GARBLED, content_type="application/json")
        if fault == "bad_shape":
            return web.json_response(BAD_SHAPE)
        if fault == "http_404":
            return web.json_response(NOT_FOUND_ERROR, status=404)
        if fault == "stall":
            await asyncio.sleep(self.faults.stall_s)
        if fault == "refusal":
            return web.json_response(refusal_completion(body, self.model))
        return web.json_response(chat_completion(body, self.responder, self.model))

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def start(self) -> FakeLMServer:
        from aiohttp import web

        async def setup() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            app.router.add_get("/v1/models", self._models)
            app.router.add_get("/v1/_counts", self._counts)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._thread.start(setup)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        self._thread.stop(cleanup)

    def __enter__(self) -> FakeLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m pytest_dspex.testing.fake_server --port 8900 --latency 0.05``: serve until killed.

    Answers like ``triage_responder`` (in the compact, DSPy chat or JSON layout); prints ``READY <base_url>`` once listening.
    Served by ``fast_server`` (an asyncio.Protocol: about half the CPU a request of aiohttp's server,
    CPU a real endpoint never takes from the machine under test; bench/RESULTS-issue22.md); ``--aiohttp``:
    by ``FakeLMServer``, as before.
    """
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--pass-every", type=int, default=1)
    parser.add_argument("--faults", default="{}", help='JSON for Faults, e.g. {"http_500": 0.1}')
    parser.add_argument("--max-in-flight", type=int, default=None, help="answer 429 to a request arriving while this many are in flight")
    parser.add_argument("--aiohttp", action="store_true", help="serve with aiohttp's server (FakeLMServer), as before: ~2x the CPU a request")
    args = parser.parse_args(argv)

    def respond(body: dict[str, Any]) -> str:
        return triage_responder(body, pass_every=args.pass_every)

    faults = Faults(**json.loads(args.faults))
    if not args.aiohttp:
        from .fast_server import serve

        serve(respond, host=args.host, port=args.port, latency=args.latency, faults=faults, max_in_flight=args.max_in_flight,
              ready=lambda url: print(f"READY {url}", flush=True))  # fmt: skip
        return
    server = FakeLMServer(respond, latency=args.latency, port=args.port, host=args.host, faults=faults, max_in_flight=args.max_in_flight)
    server.keep_bodies = False
    server.start()
    print(f"READY {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()



if __name__ == "__main__":
    main()
