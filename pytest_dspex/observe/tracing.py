"""OpenTelemetry spans: the one module that knows OpenTelemetry.

With ``opentelemetry-api`` installed and a tracer provider set (an SDK, e.g. exporting to Phoenix,
Langfuse or Jaeger), a run's spans nest as a user thinks of it::

    dspex.compile                      (the optimizer; the program's name from compile_program)
      dspex.bootstrap                  (building the candidates' demos: teacher runs)
      dspex.candidate                  (one per candidate: its demos, score, where it was dropped)
        dspex.evaluate                 (a batch of examples on one program)
          dspex.example                (index, key, score, error kind)
            dspex.program              (a user's Module)   /  dspex.predict (a predictor: signature, demos)
              chat MODEL               (one LM call: GenAI semantic conventions)

LM spans carry the GenAI semantic-convention attributes (``gen_ai.operation.name`` = "chat",
``gen_ai.provider.name`` / ``gen_ai.system`` = "openai" — the API spoken, whatever serves it —
``gen_ai.request.model``, ``gen_ai.request.temperature``, ``gen_ai.request.max_tokens``,
``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``,
``gen_ai.response.model`` and ``gen_ai.response.id`` when the server names them) plus
``dspex.cache_hit``, ``dspex.retries``, ``dspex.cost``, ``server.address`` and ``server.port``.
No attribute carries a secret (the endpoint's credentials never reach one) or message content.

Nothing is traced, and nothing costs more than one check per call, when no tracer provider is set:
the API's own no-op spans cost ~40 µs per call. ``configure(tracer_provider=...)`` traces to a
provider of your own without setting the global one (tests do).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["NO_SPAN", "configure", "enabled", "span"]


# What this module is handed, by shape: it imports nothing above ``observe`` (the evaluation's
# ``ExampleRecord`` and the client's ``Completion`` have these attributes).
class _Scored(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def error_kind(self) -> str | None: ...


class _Answered(Protocol):
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def cached(self) -> bool: ...
    @property
    def cost(self) -> float: ...

#: what a caller uses instead of a span when tracing is off (``with span(...) if enabled() else NO_SPAN``)
NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()

_provider: Any = None  # from configure(); else the global provider
_trace: Any = None  # the opentelemetry.trace module, once imported (False: not installed)
_context: Any = None  # the opentelemetry.context module
_tracers: dict[int, Any] = {}
_MISSING = object()
_global_on: bool | None = None  # None: no global provider yet; then whether it is a real one
# a provider named by the environment is loaded by the API on first use
_env_provider = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
# the innermost dspex span of this context, by name: a span opened with ``join=True`` under one of
# the same name adds its attributes to it (compile_program and the optimizer both open "dspex.compile")
_open: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar("dspex_open_span", default=None)


def _api() -> Any:
    global _trace, _context
    if _trace is None:
        try:
            from opentelemetry import context, trace
        except ImportError:
            _trace = False
        else:
            _trace, _context = trace, context
    return _trace


def configure(tracer_provider: Any = None) -> None:
    """Trace to ``tracer_provider`` instead of the global provider (``None``: back to the global one)."""
    global _provider
    _provider = tracer_provider
    _tracers.clear()


def enabled() -> bool:
    """Is there somewhere to send spans: a provider from ``configure`` or a global SDK provider?

    Checked on every call, so a provider set later is picked up: ~60 ns while none is set (the
    API's ``get_tracer_provider()`` costs ~1 µs: it looks up an environment variable each time).
    The global provider is set at most once, so the answer is kept once there is one.
    """
    global _global_on
    if _provider is not None or _global_on:
        return True
    if _global_on is False:
        return False
    if _trace is None and not _env_provider and "opentelemetry.trace" not in sys.modules:
        # nobody has imported the API, so nobody has set a provider: no import here (the API's
        # import costs ~10 ms of CPU, paid inside a new process's first LM call, on every request
        # of the first wave's path; a bootstrap's first call went out 21 ms after compile() began)
        return False
    trace = _trace if _trace is not None else _api()
    if trace is False:
        return False
    if getattr(trace, "_TRACER_PROVIDER", _MISSING) is None and not _env_provider:
        return False  # none set yet (the API's own check, without the environment lookup)
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return False  # still none: asked again next time
    _global_on = not isinstance(provider, trace.NoOpTracerProvider)
    return _global_on


def _tracer() -> Any:
    trace = _api()
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    tracer = _tracers.get(id(provider))
    if tracer is None:
        from .._support.version import __version__

        tracer = _tracers[id(provider)] = provider.get_tracer("pytest_dspex", __version__)
    return tracer


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, join: bool = False, kind: str = "INTERNAL") -> Iterator[Any]:
    """A span, current in the block (callers check ``enabled()`` first; see ``NO_SPAN``).

    ``join``: when the innermost dspex span of this context has the same name, add the attributes
    to it instead of opening a child.
    """
    current = _open.get()
    if join and current is not None and current[0] == name:
        current[1].set_attributes(_clean(attributes or {}))
        yield current[1]
        return
    trace = _api()
    with _tracer().start_as_current_span(name, kind=getattr(trace.SpanKind, kind), attributes=_clean(attributes or {})) as s:
        token = _open.set((name, s))
        try:
            yield s
        finally:
            _open.reset(token)


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A child of the current span that is not made current (see ``use_span``); None when off."""
    if not enabled():
        return None
    return _tracer().start_span(name, attributes=_clean(attributes or {}))


def use_span(s: Any) -> contextlib.AbstractContextManager[Any]:
    """Make ``s`` (from ``start_span``; None is allowed) the current span in the block, without ending it."""
    if s is None:
        return NO_SPAN
    return _api().use_span(s, end_on_exit=False)  # type: ignore[no-any-return]


def end_span(s: Any, attributes: Mapping[str, Any] | None = None) -> None:
    if s is not None:
        if attributes:
            s.set_attributes(_clean(attributes))
        s.end()


# -- examples ---------------------------------------------------------------------------------------
def example_started(index: int) -> Any:
    """Open an example's span and make it current in this task (``example_finished`` closes it)."""
    trace = _api()
    s = _tracer().start_span("dspex.example", attributes={"dspex.example.index": index})
    token = _context.attach(trace.set_span_in_context(s))
    return s, token


def example_finished(started: Any, record: _Scored) -> None:
    s, token = started
    _context.detach(token)
    attributes: dict[str, Any] = {"dspex.example.key": record.key, "dspex.score": record.score}
    if record.error_kind is not None:
        attributes["dspex.error_kind"] = record.error_kind
        attributes["error.type"] = record.error_kind
        s.set_status(_api().Status(_api().StatusCode.ERROR, record.error_kind))
    s.set_attributes(attributes)
    s.end()


def evaluate_finished(s: Any, records: list[Any]) -> None:
    done = [r for r in records if r is not None]
    if done:
        errors = sum(1 for r in done if r.error_kind is not None)
        s.set_attributes({"dspex.score": sum(r.score for r in done) / len(done), "dspex.errors": errors})


# -- LM calls ---------------------------------------------------------------------------------------
def lm_attributes(model: str, base_url: str, temperature: Any, max_tokens: Any) -> dict[str, Any]:
    """A chat call's request attributes (GenAI semantic conventions); ``base_url`` is already redacted."""
    parts = urlsplit(base_url)
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    except ValueError:
        port = None
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",  # the API spoken (OpenAI-compatible chat completions)
        "gen_ai.system": "openai",  # the attribute's older name, still read by many tools
        "gen_ai.request.model": model,
        "gen_ai.request.temperature": float(temperature) if isinstance(temperature, int | float) else None,
        "gen_ai.request.max_tokens": int(max_tokens) if isinstance(max_tokens, int) else None,
        "server.address": host if host and host != "***" else None,
        "server.port": port,
    }


def lm_answered(s: Any, completion: _Answered) -> None:
    """What a finished LM call adds to its span: usage, finish reason, cache hit."""
    s.set_attributes(
        _clean({
            "gen_ai.usage.input_tokens": completion.prompt_tokens,
            "gen_ai.usage.output_tokens": completion.completion_tokens,
            "gen_ai.response.finish_reasons": [completion.finish_reason] if completion.finish_reason else None,
            "dspex.cache_hit": completion.cached,
            "dspex.cost": completion.cost,
        })
    )  # fmt: skip


def lm_fetched(data: Mapping[str, Any], retries: int) -> None:
    """What the server's answer adds to the current LM span (not known for a cache hit's span)."""
    s = _api().get_current_span()
    model, rid = data.get("model"), data.get("id")
    s.set_attributes(
        _clean({
            "dspex.retries": retries,
            "gen_ai.response.model": model if isinstance(model, str) else None,
            "gen_ai.response.id": rid if isinstance(rid, str) else None,
        })
    )  # fmt: skip


def lm_failed(s: Any, exc: BaseException) -> None:
    kind = getattr(exc, "kind", None) or type(exc).__name__
    s.set_attributes(_clean({"error.type": kind, "dspex.retries": getattr(exc, "retries", None), "dspex.cache_hit": False}))
