"""Plain functions as programs: code you already have, evaluated and gated like any program.

    def triage(message: str) -> str:                       # calls the openai SDK, LiteLLM, ...
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])
        return reply.choices[0].message.content.strip()

    @pytest.mark.dspex_program(triage, outputs=["team"])   # or dspex.program(triage, outputs=["team"])
    @pytest.mark.dspex_metric(team_matches, threshold=0.8)
    def test_triage(dspex_evaluate): ...

The function takes the example's input fields as keyword arguments (its parameter names are the
input keys, unless ``inputs=`` says otherwise) and returns a dict, a pydantic model, a
``Prediction``, or a string when the program has one output field (``outputs=["team"]``). Sync
functions run in a worker thread, async ones on pytest-dspex's loop. It has no predictors, so a
compile has nothing to optimize: it records the function's baseline only (the paired gate works).

An LM error answered by the loopback endpoint to a call the function made (a spent budget, a
replay miss, an unreachable endpoint) is what the example failed with, whatever the client library
raised on top of it: the record's error kind is the LM's, so the error budget counts it. A client
library's own connection, timeout or server-status error (openai, httpx, aiohttp, LiteLLM, ... or a
``ConnectionError``) is an LM error too, never a low score; when the example made no call through
the session at all, its message starts by saying so and how to route the calls (README: "Gating
code you already have").
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .._support.threads import run_in_thread
from ..errors import (
    AdapterParseError,
    ConfigError,
    LMError,
    LMHTTPError,
    LMTimeoutError,
    LMUnavailableError,
    ModelRefusedError,
)
from ..lm import callers
from ..lm.usage import track_usage
from .modules import Module
from .primitives import Prediction

__all__ = ["FunctionProgram", "program"]


class FunctionProgram(Module):
    """A sync or async callable as a program (``program(fn, outputs=[...])``)."""

    def __init__(self, fn: Callable[..., Any], *, outputs: Sequence[str] | None = None, inputs: Sequence[str] | None = None) -> None:
        if not callable(fn) or isinstance(fn, type):
            raise ConfigError(f"program(fn): expected a function, got {fn!r}")
        if isinstance(outputs, str) or (outputs is not None and not all(isinstance(o, str) for o in outputs)):
            raise ConfigError(f"program({_name(fn)}, outputs={outputs!r}): outputs is a list of field names")
        self._fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        self.outputs = tuple(outputs) if outputs else ()
        self.input_keys = tuple(inputs) if inputs is not None else (_parameters(fn) or _module_inputs(fn))
        self.name = _name(fn)

    @property
    def fn(self) -> Callable[..., Any]:
        return self._fn

    def __repr__(self) -> str:
        outputs = f", outputs={list(self.outputs)!r}" if self.outputs else ""
        return f"program({self.name}{outputs})"

    def reset_copy(self) -> FunctionProgram:
        return self  # nothing learned, nothing to reset

    def __deepcopy__(self, memo: dict[int, Any]) -> FunctionProgram:
        return self  # the function and what it closes over are the user's: shared, never copied

    async def aforward(self, **inputs: Any) -> Prediction:
        with callers.lm_errors() as errors, track_usage() as usage:
            try:
                if self._async:
                    value = await self._fn(**inputs)
                else:  # its LM calls block: never on the loop (which answers them, for the loopback endpoint)
                    value = await run_in_thread(functools.partial(self._fn, **inputs))
            except Exception as exc:
                failed = [e for e in errors if not isinstance(e, ModelRefusedError)]
                if failed:  # the LM error behind what the client library raised
                    raise failed[0] from exc
                if errors:  # a refusal was relayed (content null): the program's error is its own, said after it
                    refusal = str(errors[0]).removeprefix("the model refused: ")
                    exc.add_note(f"{NOTE}it raised after the model refused this example's request: {refusal}")
                # first in the message, so a shortened one still says how to route the calls
                hint = "" if usage.calls or usage.cache_hits else "not through pytest-dspex (use --dspex-openai-env or dspex_endpoint): "
                infra = client_lm_error(exc, hint)
                if infra is None:
                    raise
                raise infra from exc
        return self.prediction(value)

    def prediction(self, value: Any) -> Prediction:
        """What the function returned, as a ``Prediction`` of the program's output fields."""
        if isinstance(value, Prediction):
            fields = dict(value.items())
        elif isinstance(value, dict):
            fields = dict(value)
        elif hasattr(value, "model_dump") and callable(value.model_dump):
            fields = dict(value.model_dump())
        elif callable(getattr(value, "toDict", None)):  # DSPy's Prediction (a DSPy module wrapped whole)
            fields = dict(value.toDict())
        elif isinstance(value, str):
            if len(self.outputs) != 1:
                raise ConfigError(
                    f"{self.name} returned a string; a string answers one output field: name it with "
                    f"dspex.program({self.name}, outputs=['answer']) or @pytest.mark.dspex_program({self.name}, outputs=['answer'])"
                    + (f" (it has {len(self.outputs)}: {', '.join(self.outputs)}; return a dict)" if self.outputs else "")
                )
            fields = {self.outputs[0]: value}
        else:
            raise ConfigError(
                f"{self.name} returned {type(value).__name__}; a program function returns a dict, a pydantic model, "
                "a Prediction or a string (one output field)"
            )
        missing = [o for o in self.outputs if o not in fields]
        if missing:  # the answer lacks a field: the model's wrong format, scored 0, not a program bug
            raise AdapterParseError(
                f"{self.name} returned no {', '.join(repr(m) for m in missing)} (got {', '.join(map(repr, fields)) or 'nothing'})",
                completion=repr(value)[:200],
            )
        return Prediction(fields)


#: client libraries whose errors are about reaching the LM, not about the program (by module prefix)
_CLIENT_PACKAGES = frozenset({"openai", "httpx", "httpcore", "aiohttp", "litellm", "anthropic", "requests", "urllib3", "google"})
_TIMEOUT_NAMES = frozenset({"APITimeoutError", "Timeout", "TimeoutException", "ReadTimeout", "ConnectTimeout",
                            "WriteTimeout", "PoolTimeout", "ServerTimeoutError", "TimeoutError"})  # fmt: skip
_CONNECT_NAMES = frozenset({"APIConnectionError", "ConnectError", "ConnectionError", "ClientConnectorError", "ClientConnectionError",
                            "ServerDisconnectedError", "RemoteProtocolError", "ServiceUnavailableError", "NetworkError"})  # fmt: skip


#: a note ``describe_error`` adds to a program's error message (what the program met before it raised)
NOTE = "pytest-dspex: "


def client_lm_error(exc: BaseException, hint: str = "") -> LMError | None:
    """The LM error a client library's exception stands for (or one in its cause chain), else None.

    Known by class name and module alone, so no optional package is imported: a connection error
    is ``lm_unavailable``, a timeout ``lm_timeout``, a 429 ``rate_limited``, a 5xx ``lm_http``; anything else
    (a 400, a bug in the code) stays the program's. ``hint`` starts the message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, LMError):
            return current
        text = f"{hint}{type(current).__name__}: {current}"
        if isinstance(current, ConnectionError):  # the builtin (refused, reset, aborted)
            return LMUnavailableError(text)
        names = {c.__name__ for c in type(current).__mro__ if c.__module__.split(".")[0] in _CLIENT_PACKAGES}
        if names & _TIMEOUT_NAMES:
            return LMTimeoutError(text)
        if names & _CONNECT_NAMES:
            return LMUnavailableError(text)
        status = getattr(current, "status_code", None) or getattr(current, "status", None)
        if names and isinstance(status, int) and (status == 429 or status >= 500):
            return LMHTTPError(text, status=status)
        current = current.__cause__ or current.__context__
    return None


def program(fn: Callable[..., Any], *, outputs: Sequence[str] | None = None, inputs: Sequence[str] | None = None) -> FunctionProgram:
    """A plain function (sync or async) as a program: ``dspex.program(triage, outputs=["team"])``.

    ``fn`` takes the example's input fields as keyword arguments and returns a dict, a pydantic
    model, a ``Prediction``, or a string when ``outputs`` names one field. ``inputs`` overrides the
    input keys read from ``fn``'s parameters.
    """
    return FunctionProgram(fn, outputs=outputs, inputs=inputs)


def _name(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _module_inputs(fn: Any) -> tuple[str, ...]:
    """A DSPy module's input fields, its ``__call__`` taking ``**kwargs``: its ``forward``'s parameters,
    else (``dspy.Predict``, ``dspy.ChainOfThought``) its signature's input fields."""
    forward = getattr(type(fn), "forward", None)  # from the class: DSPy warns when an instance's forward is read
    keys = _parameters(forward) if callable(forward) else ()
    if keys:
        return keys
    fields = getattr(getattr(fn, "signature", None), "input_fields", None)
    return tuple(str(k) for k in fields) if isinstance(fields, dict) else ()


def _parameters(fn: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
