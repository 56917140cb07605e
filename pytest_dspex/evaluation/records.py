"""``ExampleRecord``: one evaluated example, the unit that crosses processes.

Both test modes, xdist workers, the JSON report and shard ``combine`` all speak this record::

    rec = ExampleRecord.from_json(json.loads(line))
    result = EvaluationResult.from_records(records, program="triage", metric="team_matches")

Everything in a record is JSON-able (pydantic values are dumped with ``model_dump(mode="json")``),
so ``ExampleRecord.from_json(rec.to_json()) == rec``. The live ``Example``, ``Prediction`` and
exception of an in-process evaluation ride along in fields that are never serialized.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..programs.primitives import Example, Prediction
from .datasets import example_key

__all__ = ["ANSWER_ERROR_KINDS", "ERROR_KINDS", "INFRA_ERROR_KINDS", "ExampleRecord", "example_key", "failing_with", "jsonable", "refused_with"]

#: Errors of the infrastructure, not of the model: they count against the error budget
#: (``--dspex-max-error-rate``) and are never read as a low score.
INFRA_ERROR_KINDS = frozenset(
    {"lm_unavailable", "lm_timeout", "lm_http", "rate_limited", "lm_response", "budget", "cache_miss", "timeout"}
)
#: Errors that are the model's answer (one that did not parse, a refusal): scored 0, shown as a miss.
ANSWER_ERROR_KINDS = frozenset({"parse", "refused"})
#: Every kind a record may carry; ``parse``, ``refused``, ``metric`` and ``program`` are the model's
#: (or the code's), scored 0.
ERROR_KINDS = INFRA_ERROR_KINDS | ANSWER_ERROR_KINDS | {"metric", "program"}

#: what to check when the endpoint answered a status (the endpoint was reached: not a network problem)
_REFUSAL_HINTS = {
    401: "check the API key (--dspex-api-key-env names its variable)",
    403: "check the API key and that it may use this model",
    404: "check --dspex-base-url (the URL up to /v1, e.g. http://host:8000/v1) and --dspex-model",
    405: "check --dspex-base-url (the URL up to /v1, e.g. http://host:8000/v1)",
    410: "check --dspex-base-url and --dspex-model",
}


def refused_with(records: Iterable[ExampleRecord]) -> str | None:
    """``"the endpoint answered HTTP 404 Not Found: check --dspex-base-url …"`` when ``records`` lost
    answers to an endpoint that answered a 4xx (``lm_http``: it was reached, it refused), else None.
    The status is the one most of them got, read from their errors (a fail-fast error names it too)."""
    import re
    from collections import Counter

    seen: Counter[int] = Counter()
    specific: dict[int, str] = {}  # the transport's own hint for a status (a base URL path without /v1)
    for r in records:
        if r.error_kind == "lm_http" and r.error:
            m = re.search(r"HTTP (4\d\d)\b", r.error)
            if m:
                seen[int(m.group(1))] += 1
                said = re.search(r"\((the base URL's path .*? has no /v1[^)]*|the model name .*? provider prefix [^)]*)\)", r.error)
                if said:
                    specific.setdefault(int(m.group(1)), said.group(1))
    if not seen:
        return None
    status = seen.most_common(1)[0][0]
    phrase = _status_phrase(status)
    hint = _REFUSAL_HINTS.get(status, "check --dspex-model and the request's settings")
    if status in specific:  # in the verdict itself, not only in a captured log (trial2 F8)
        hint = f"{specific[status]}; {hint}"
    return f"the endpoint answered HTTP {status}{phrase}: {hint}"


def _status_phrase(status: int) -> str:
    """``" Not Found"`` for 404: the status's reason phrase with a leading space, or "" when unknown."""
    import http

    try:
        return " " + http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def failing_with(records: Iterable[ExampleRecord]) -> str | None:
    """``"the endpoint answered HTTP 500 Internal Server Error: …"`` when most of ``records``' LM errors name
    a 5xx the endpoint answered (after the retries, or the breaker it opened: it was reached and is failing,
    not unreachable), else None."""
    import re
    from collections import Counter

    lost = [r for r in records if r.error_kind in ("lm_http", "lm_unavailable") and r.error]
    seen: Counter[int] = Counter()
    for r in lost:
        m = re.search(r"HTTP (5\d\d)\b", r.error or "")
        if m:
            seen[int(m.group(1))] += 1
    if not seen or sum(seen.values()) * 2 <= len(lost):
        return None
    status = seen.most_common(1)[0][0]
    phrase = _status_phrase(status)
    return f"the endpoint answered HTTP {status}{phrase}: it was reached and is failing (its logs say why), not unreachable"


_USAGE_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost", "retries", "hedges")


_PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: pydantic models dumped, examples as dicts, the rest ``str``."""
    if type(value) in _PLAIN or value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping | Example):
        return {str(k): v if type(v) in _PLAIN else jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return str(value)


def _usage(raw: Mapping[str, Any] | None) -> dict[str, float]:
    raw = raw or {}
    out = {k: raw.get(k, 0) for k in _USAGE_KEYS}
    if raw.get("estimated") or raw.get("repeated"):  # calls an estimate run would make (``--dspex-estimate``)
        out["estimated"] = raw.get("estimated", 0)
        out["estimated_limit"] = raw.get("estimated_limit", 0)
        out["repeated"] = raw.get("repeated", 0)
    return out


@dataclass(slots=True)
class ExampleRecord:
    """One evaluated example: what went in, what came out, its score and any error (JSON-able).

    ``score`` is in [0, 1] (the mean over ``repeats`` when an example ran more than once, or their
    worst / best draw with ``reduction`` ``all`` / ``any``); an
    error scores 0 and names its ``error_kind`` (see ``ERROR_KINDS``).
    """

    index: int
    key: str
    inputs: dict[str, Any]
    expected: dict[str, Any]
    prediction: dict[str, Any] | None
    score: float
    error_kind: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    usage: dict[str, float] = field(default_factory=lambda: _usage(None))
    repeats: list[float] | None = None
    #: how ``score`` was made from ``repeats`` when not their mean: ``all`` (pass^k), ``any`` (pass@k)
    reduction: str | None = None
    #: against a noisy golden baseline: the scores of the fresh answers asked after a first answer that
    #: disagreed with it (``comparison.RedrawPlan``); ``score`` stays the first answer's. None: not asked
    redraws: list[float] | None = None
    #: a redraw was lost to an LM error: the paired gate leaves the example out
    redraw_lost: bool = False
    # the live objects of an in-process evaluation; never serialized, not part of equality
    example: Example | None = field(default=None, repr=False, compare=False)
    output: Prediction | None = field(default=None, repr=False, compare=False)
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        index: int,
        example: Example,
        prediction: Prediction | None,
        score: float,
        *,
        error_kind: str | None = None,
        error: str | None = None,
        latency_s: float = 0.0,
        usage: Mapping[str, Any] | None = None,
        key: str | None = None,
        exception: BaseException | None = None,
    ) -> ExampleRecord:
        """A record from live objects (inputs and expected values split by the example's input keys)."""
        in_keys = example.input_keys or ()
        inputs: dict[str, Any] = {}
        expected: dict[str, Any] = {}
        for k, v in example.items():  # plain values (the usual case) as they are, the rest made JSON-able
            (inputs if k in in_keys else expected)[k] = v if type(v) in _PLAIN else jsonable(v)
        return cls(
            index=index,
            key=key if key is not None else example_key(example),
            inputs=inputs,
            expected=expected,
            prediction=jsonable(prediction) if prediction is not None else None,
            score=score,
            error_kind=error_kind,
            error=error,
            latency_s=round(latency_s, 6),
            usage=_usage(usage),
            example=example,
            output=prediction,
            exception=exception,
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "index": self.index,
            "key": self.key,
            "inputs": self.inputs,
            "expected": self.expected,
            "prediction": self.prediction,
            "score": self.score,
            "repeats": self.repeats,
            "error_kind": self.error_kind,
            "error": self.error,
            "latency_s": self.latency_s,
            "usage": dict(self.usage),
        }
        if self.reduction is not None:
            data["reduction"] = self.reduction
        if self.redraws is not None:
            data["redraws"] = list(self.redraws)
        if self.redraw_lost:
            data["redraw_lost"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExampleRecord:
        return cls(
            index=int(data["index"]),
            key=str(data["key"]),
            inputs=dict(data.get("inputs") or {}),
            expected=dict(data.get("expected") or {}),
            prediction=data.get("prediction"),
            score=float(data["score"]),
            error_kind=data.get("error_kind"),
            error=data.get("error"),
            latency_s=float(data.get("latency_s") or 0.0),
            usage=_usage(data.get("usage")),
            repeats=list(data["repeats"]) if data.get("repeats") is not None else None,
            reduction=data.get("reduction"),
            redraws=[float(v) for v in data["redraws"]] if data.get("redraws") is not None else None,
            redraw_lost=bool(data.get("redraw_lost", False)),
        )


#: columns of a dataset row that name or describe the example, never an expected output
META_KEYS = frozenset({"id", "uid", "key", "example_id", "meta", "metadata", "source", "split", "tags"})


def split_expected(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record's ``expected`` as (expected outputs, metadata such as ``id``), shown apart.

    With a prediction the outputs are its fields; without one (an error), every column but the
    usual metadata names (``META_KEYS``)."""
    expected = dict(record.get("expected") or {})
    predicted = record.get("prediction")
    if isinstance(predicted, Mapping) and predicted:
        outs = {k: v for k, v in expected.items() if k in predicted}
        if outs:
            return outs, {k: v for k, v in expected.items() if k not in predicted}
    return (
        {k: v for k, v in expected.items() if k not in META_KEYS},
        {k: v for k, v in expected.items() if k in META_KEYS},
    )
