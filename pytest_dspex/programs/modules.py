"""Programs: ``Module`` (user compositions), ``Predict`` and ``ChainOfThought``.

    triage = Predict(Triage)                 # or Predict("message -> team")
    pred = triage(message="I was charged twice")          # sync
    pred = await triage.acall(message="...")              # async, any event loop

    class RAG(Module):
        def __init__(self):
            self.answer = ChainOfThought("context, question -> answer")
        async def aforward(self, question):            # or a sync `forward`
            return await self.answer.acall(context=lookup(question), question=question)

Every predictor call inside ``trace_scope()`` is recorded as ``(predictor, inputs, prediction)``;
optimizers turn passing traces into demos. Demos are plain field dicts per predictor and save to
the same layout as DSPy's ``program.save()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .._support import runtime as _runtime
from ..errors import AdapterParseError, ConfigError, ModelRefusedError, SignatureError
from ..lm import estimates
from ..lm.types import LMRequest
from ..observe import tracing
from . import calibration, constrained, saved_state, settings
from .adapters import Adapter, JSONAdapter, expected_answer, get_adapter
from .constrained import choice_value
from .primitives import Prediction
from .saved_state import field_prefix
from .signatures import OutputField, Signature, ensure_signature, render_value

__all__ = ["ChainOfThought", "Module", "Predict", "TraceStep", "trace_scope"]

TraceStep = tuple["Predict", dict[str, Any], Prediction]
_trace: contextvars.ContextVar[list[TraceStep] | None] = contextvars.ContextVar("dspex_trace", default=None)


@contextlib.contextmanager
def trace_scope() -> Iterator[list[TraceStep]]:
    """Record every predictor call made inside the block (and its tasks/threads)."""
    steps: list[TraceStep] = []
    token = _trace.set(steps)
    try:
        yield steps
    finally:
        _trace.reset(token)


class Module:
    """Base class of programs. Define ``forward(**inputs)`` and/or ``async aforward(**inputs)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            raise TypeError(f"{type(self).__name__} takes keyword arguments only (field=value)")
        if tracing.enabled():
            with tracing.span("dspex.program", _span_attributes(self)):
                return self._call_forward(kwargs)
        return self._call_forward(kwargs)

    def _call_forward(self, kwargs: dict[str, Any]) -> Prediction:
        if type(self).forward is Module.forward and type(self).aforward is not Module.aforward:
            return _runtime.run_sync(self.aforward(**kwargs))
        return self.forward(**kwargs)

    async def acall(self, **kwargs: Any) -> Prediction:
        """Call the program from async code (any event loop)."""
        if tracing.enabled():
            with tracing.span("dspex.program", _span_attributes(self)):
                return await self._acall_forward(kwargs)
        return await self._acall_forward(kwargs)

    async def _acall_forward(self, kwargs: dict[str, Any]) -> Prediction:
        if type(self).aforward is not Module.aforward:
            return await self.aforward(**kwargs)
        return await asyncio.to_thread(self.forward, **kwargs)

    def forward(self, **kwargs: Any) -> Prediction:
        raise NotImplementedError(f"{type(self).__name__} defines neither forward() nor aforward()")

    async def aforward(self, **kwargs: Any) -> Prediction:
        raise NotImplementedError  # pragma: no cover - see acall

    # -- structure ------------------------------------------------------------------------------
    def named_predictors(self) -> list[tuple[str, Predict]]:
        """Every predictor reachable from this module, with DSPy-style dotted paths."""
        found: list[tuple[str, Predict]] = []
        seen: set[int] = set()

        def walk(obj: Any, path: str) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if isinstance(obj, Predict):
                found.append((path, obj))
            elif isinstance(obj, Module):
                for name, value in vars(obj).items():
                    if not name.startswith("_"):
                        walk(value, f"{path}.{name}" if path else name)
            elif isinstance(obj, list | tuple):
                for i, value in enumerate(obj):
                    walk(value, f"{path}[{i}]")
            elif isinstance(obj, dict):
                for k, value in obj.items():
                    walk(value, f"{path}['{k}']")

        if isinstance(self, Predict):
            return [("self", self)]
        for name, value in vars(self).items():
            if not name.startswith("_"):
                walk(value, name)
        return found

    def predictors(self) -> list[Predict]:
        return [p for _, p in self.named_predictors()]

    def set_lm(self, lm: Any) -> None:
        for p in self.predictors():
            p.lm = lm

    def deepcopy(self) -> Module:
        return copy.deepcopy(self)

    def reset_copy(self) -> Module:
        """A deep copy with every predictor's demos cleared."""
        new = self.deepcopy()
        for p in new.predictors():
            p.demos = []
            p.calibration = None
        return new

    # -- state (DSPy layout: ``saved_state``) ------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        if isinstance(self, Predict):
            return saved_state.dump(self)
        return {path: saved_state.dump(p) for path, p in self.named_predictors()}

    def load_state(self, state: Mapping[str, Any]) -> Module:
        if isinstance(self, Predict):
            saved_state.load(self, state, "self")
            return self
        preds = dict(self.named_predictors())
        for path, pred in preds.items():
            if path not in state:
                raise ConfigError(f"saved state has no entry for predictor {path!r} (has: {', '.join(k for k in state if k != 'metadata')})")
            saved_state.load(pred, state[path], path)
        return self

    def save(self, path: str | Path) -> None:
        from .._support.atomic import atomic_write_json

        state = self.dump_state()
        state["metadata"] = saved_state.dspy_metadata()
        atomic_write_json(Path(path), state)

    def load(self, path: str | Path) -> Module:
        return self.load_state(json.loads(Path(path).read_text(encoding="utf-8")))


class Predict(Module):
    """Ask an LM for a signature's outputs given its inputs."""

    def __init__(
        self,
        signature: str | type[Signature],
        *,
        adapter: Adapter | str | None = None,
        lm: Any = None,
        json_fallback: bool | None = None,
        **config: Any,
    ) -> None:
        self.signature = ensure_signature(signature)
        self.adapter = get_adapter(adapter) if adapter is not None else None
        self.lm = lm
        self.json_fallback = json_fallback
        self.config = _request_config(config)
        self.demos: list[dict[str, Any]] = []
        #: label -> score adjustment of a calibrated classifier (``pytest_dspex.programs.calibration``), or None
        self.calibration: dict[str, float] | None = None
        #: the signature as the code declares it, while ``signature`` runs with other wording (``set_wording``)
        self._declared: type[Signature] | None = None

    def __repr__(self) -> str:
        return f"Predict({self.signature.signature_string()!r}, demos={len(self.demos)})"

    # -- wording: instructions and field descriptions other than the code's -----------------------
    @property
    def declared_signature(self) -> type[Signature]:
        """The signature as the code declares it (``signature`` is what runs: the same, or reworded)."""
        return self._declared if self._declared is not None else self.signature

    def set_wording(
        self, instructions: str | None = None, fields: Mapping[str, Mapping[str, str | None]] | None = None
    ) -> None:
        """Run with other instructions and/or field ``desc``/``prefix`` than the code declares.

        This is what a DSPy optimizer that rewrites instructions (MIPROv2, COPRO) leaves in a saved
        program, and what a golden's ``overrides`` hold. Each call starts from the declared
        signature (``set_wording()`` restores it); the declared signature is what golden files
        fingerprint, so a reworded program is still the program its code describes.
        """
        base = self.declared_signature
        self.signature = base.with_wording(instructions, fields) if instructions is not None or fields else base
        self._declared = base if self.wording_overrides(base) else None
        if self._declared is None:
            self.signature = base

    def wording_overrides(self, base: type[Signature] | None = None) -> dict[str, Any]:
        """How the running wording differs from the declared: ``{"instructions": ..., "fields":
        {name: {"desc"?: ..., "prefix"?: ...}}}``, only the parts that differ (``{}`` when none)."""
        base = base if base is not None else self.declared_signature
        now = self.signature
        out: dict[str, Any] = {}
        if now.instructions != base.instructions:
            out["instructions"] = now.instructions
        fields: dict[str, dict[str, str]] = {}
        for name, spec in now.fields.items():
            old = base.fields.get(name)
            if old is None:
                continue
            change = {}
            if spec.desc != old.desc:
                change["desc"] = spec.desc
            if field_prefix(spec) != field_prefix(old):
                change["prefix"] = field_prefix(spec)
            if change:
                fields[name] = change
        if fields:
            out["fields"] = fields
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> Predict:
        new = copy.copy(self)
        new.demos = [dict(d) for d in self.demos]
        new.config = dict(self.config)
        new.calibration = dict(self.calibration) if self.calibration else None
        return new

    def _check_inputs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        missing = [n for n in self.signature.input_fields() if n not in kwargs]
        if missing:
            raise SignatureError(
                f"{self!r}: missing input field(s) {', '.join(missing)} (got {', '.join(kwargs) or 'nothing'})"
            )
        return dict(kwargs)

    def forward(self, **kwargs: Any) -> Prediction:
        inputs = self._check_inputs(kwargs)
        pred = _runtime.run_sync(self._run(inputs))
        _record(self, inputs, pred)
        return pred

    async def aforward(self, **kwargs: Any) -> Prediction:
        inputs = self._check_inputs(kwargs)
        pred = await _runtime.run_async(self._run(inputs))
        _record(self, inputs, pred)
        return pred

    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            raise TypeError(f"{self!r} takes keyword arguments only (field=value)")
        return self.forward(**kwargs)

    async def acall(self, **kwargs: Any) -> Prediction:
        return await self.aforward(**kwargs)

    async def _run(self, inputs: dict[str, Any], **overrides: Any) -> Prediction:
        if tracing.enabled():
            with tracing.span("dspex.predict", _span_attributes(self)):
                return await self._predict(inputs, **overrides)
        return await self._predict(inputs, **overrides)

    async def _predict(self, inputs: dict[str, Any], **overrides: Any) -> Prediction:
        lm = self.lm or settings.current_lm()
        if lm is None:
            raise ConfigError(
                f"{self!r} has no LM: pass Predict(..., lm=LM(...)) or call pytest_dspex.configure(lm=...)"
            )
        adapter = self.adapter or get_adapter(settings.current_adapter())
        params = {**self.config, **(settings.get("call_overrides") or {}), **overrides}
        request = adapter.format(self.signature, self.demos, inputs)
        if getattr(lm, "estimate", False):  # --dspex-estimate: the answer the example's labels make is counted
            labels = estimates.current_labels() or {}
            with estimates.expecting(expected_answer(adapter, self.signature, labels, self.demos)):
                try:
                    return await self._answer(lm, adapter, request, inputs, params)
                except estimates.EstimatedCall:
                    # counted, not made: the program goes on with the labels' answer (a field they lack
                    # empty), so the calls of its later predictors are counted too
                    return Prediction({n: labels[n] if labels.get(n) is not None else "" for n in self.signature.output_fields()})
        return await self._answer(lm, adapter, request, inputs, params)

    async def _answer(self, lm: Any, adapter: Adapter, request: LMRequest, inputs: dict[str, Any], params: dict[str, Any]) -> Prediction:
        calibrated = calibration.calibration_field(self, adapter) if self.calibration else None
        if calibrated is not None:
            completion = await calibration.acomplete(lm, request, params)
        else:
            completion = await constrained.acomplete(lm, request, **params)
        if completion.refusal is not None and not completion.text.strip():
            raise ModelRefusedError(f"the model refused: {completion.refusal[:200]!r}", refusal=completion.refusal)
        if calibrated is None:
            return Prediction(await self._parse(adapter, completion, lm, inputs, params, request))
        spec, shown = calibrated
        if len(self.signature.output_fields()) == 1:
            try:
                values = adapter.parse(self.signature, completion.text)
            except AdapterParseError:
                values = {}  # the calibrated label may still be the answer
        else:
            values = await self._parse(adapter, completion, lm, inputs, params, request)
        written = values.get(spec.name)
        label = calibration.calibrated_label(
            shown, completion.top_logprobs, self.calibration or {}, None if written is None else render_value(written)
        )
        if label is not None:
            values[spec.name] = choice_value(spec, label)
        elif not values:
            values = await self._parse(adapter, completion, lm, inputs, params, request)  # its error, or the JSON retry
        return Prediction(values)

    async def _parse(
        self, adapter: Adapter, completion: Any, lm: Any, inputs: dict[str, Any], params: dict[str, Any], request: LMRequest
    ) -> dict[str, Any]:
        """The answer's fields; a layout the adapter cannot read is asked again as JSON (``json_fallback``).

        An answer that stopped at the token limit and cannot be read says so, and which limit to raise.
        """
        try:
            return adapter.parse(self.signature, completion.text)
        except AdapterParseError as first:
            if getattr(completion, "finish_reason", None) == "length":
                raise _truncated(first, self.signature, lm, params, request) from None
            fallback = self.json_fallback if self.json_fallback is not None else settings.get("json_fallback")
            if not fallback or isinstance(adapter, JSONAdapter):
                raise
            json_adapter = JSONAdapter()
            retry = await constrained.acomplete(lm, json_adapter.format(self.signature, self.demos, inputs), **params)
            try:
                return json_adapter.parse(self.signature, retry.text)
            except AdapterParseError:
                raise first from None

#: what ``Predict(..., **config)`` may set on each request (beside ``extra_body={...}``, sent as given)
REQUEST_SETTINGS = frozenset({
    "temperature", "max_tokens", "max_completion_tokens", "stop", "top_p", "top_k", "min_p", "seed",
    "presence_penalty", "frequency_penalty", "repeat_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "rollout_id",
})  # fmt: skip


def _request_config(config: dict[str, Any]) -> dict[str, Any]:
    """``Predict``'s request settings; an unknown keyword (a typo, DSPy's ``n=3``) is a ``TypeError``
    naming the equivalent instead of a field silently sent in the request body."""
    from .._support.dspy_idioms import reject_unknown

    config = dict(config)
    extra = config.pop("extra_body", None) or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"Predict(extra_body=...) must be a dict of request fields, got {type(extra).__name__}")
    if config.get("n", 1) == 1:
        config.pop("n", None)  # DSPy's default: one completion, as here
    unknown = {k: v for k, v in config.items() if k not in REQUEST_SETTINGS}
    reject_unknown("Predict", unknown, [*REQUEST_SETTINGS, "adapter", "lm", "json_fallback", "extra_body"])
    return {**config, **extra}


def _truncated(error: AdapterParseError, signature: type[Signature], lm: Any, params: Mapping[str, Any],
               request: LMRequest) -> AdapterParseError:  # fmt: skip
    """``error`` said as what it is: the answer was cut at the token limit before every field was written."""
    lm_limit = getattr(lm, "max_tokens", None)
    limit = params.get("max_tokens") or (
        request.max_tokens if lm_limit is None else min(lm_limit, request.max_tokens or lm_limit)
    )
    if lm_limit is not None and limit == lm_limit and "max_tokens" not in params:
        how = "raise --dspex-max-tokens (dspex_max_tokens in pytest.ini, or LM(max_tokens=...))"
    elif "max_tokens" in params:
        how = "raise the max_tokens passed to the program"
    else:
        fields = ", ".join(signature.output_fields())
        how = f"raise OutputField(max_tokens=...) of its output fields ({fields}): their types allow {limit} tokens in all"
    return AdapterParseError(
        f"answer truncated at the token limit ({limit} tokens) before every field was written; {how}. {error}",
        completion=error.completion, adapter=error.adapter,
    )


def _record(pred: Predict, inputs: dict[str, Any], prediction: Prediction) -> None:
    steps = _trace.get()
    if steps is not None:
        steps.append((pred, inputs, prediction))


class ChainOfThought(Module):
    """``Predict`` with a ``reasoning`` output asked for before the others."""

    def __init__(self, signature: str | type[Signature], *, rationale_desc: str | None = None, **kwargs: Any) -> None:
        sig = ensure_signature(signature)
        spec = OutputField(desc=rationale_desc or "think step by step in one short paragraph", prefix="Reasoning:")
        self.predict = Predict(sig.prepend_output("reasoning", spec, str), **kwargs)

    @property
    def signature(self) -> type[Signature]:
        return self.predict.signature

    def forward(self, **kwargs: Any) -> Prediction:
        return self.predict(**kwargs)

    async def aforward(self, **kwargs: Any) -> Prediction:
        return await self.predict.acall(**kwargs)

    def __repr__(self) -> str:
        return f"ChainOfThought({self.signature.signature_string()!r}, demos={len(self.predict.demos)})"


def _span_attributes(program: Any) -> dict[str, Any]:
    """A program's span attributes: a predictor's signature, demos and adapter; else its class."""
    if isinstance(program, Predict):
        sig = program.signature
        return {
            "dspex.signature": sig.__name__,
            "dspex.signature.fields": sig.signature_string(),
            "dspex.demos": len(program.demos),
            "dspex.adapter": type(program.adapter).__name__ if program.adapter is not None else None,
        }
    return {"dspex.program.class": type(program).__qualname__}
