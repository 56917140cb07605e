"""Building a golden file's record: ``golden_record`` (demos, fingerprints, prompts, scores,
provenance) and ``baseline_entry`` (what later runs are paired with); ``placeholder_messages`` is the
one renderer of a predictor's prompt with ``{field}`` placeholders (recorded here, matched in
``production`` to tell which adapter a golden was made with).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..evaluation.comparison import outcomes_from_records
from ..programs import demos
from ..programs.signatures import fingerprint
from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from ..programs.adapters import Adapter
    from ..programs.modules import Module, Predict

__all__ = ["baseline_entry", "golden_record", "placeholder_messages", "render_prompts"]


def placeholder_messages(adapter: Adapter, predictor: Predict) -> list[dict[str, str]]:
    """The messages ``predictor`` sends through ``adapter``, its inputs shown as ``{field}`` placeholders."""
    values = {name: "{" + name + "}" for name in predictor.signature.input_fields()}
    request = adapter.format(predictor.signature, predictor.demos, values)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in request.messages]


def render_prompts(program: Module, adapter: Any = None) -> dict[str, list[dict[str, str]]]:
    """The messages each predictor sends, with inputs as ``{field}`` placeholders.

    Each predictor's own adapter is used, else ``adapter``, else the configured default; the
    predictors' demos are part of the prompt, as they are when the program runs. The prompts are
    informative (never read back): a custom adapter that cannot format placeholders (it checks input
    types, say) leaves its predictor out rather than failing the compile.
    """
    from ..programs import settings
    from ..programs.adapters import get_adapter

    prompts: dict[str, list[dict[str, str]]] = {}
    for path, p in program.named_predictors():
        chosen = p.adapter or get_adapter(adapter if adapter is not None else settings.current_adapter())
        try:
            prompts[path] = placeholder_messages(chosen, p)
        except Exception:
            continue
    return prompts


def golden_record(
    program: Module,
    *,
    name: str,
    metric: str = "",
    validation: tuple[float, int] | None = None,
    train: tuple[float, int] | None = None,
    model: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    datasets: dict[str, str] | None = None,
    records: Iterable[Any] | Mapping[str, float] | None = None,
    adapter: Any = None,
    selection: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the JSON-able content of a (schema 3) golden file for ``program``.

    ``records`` are the validation run's per-example outcomes: ``ExampleRecord`` objects, their JSON
    dicts (``{"key", "score", ...}``), or a ``{key: score}`` mapping. Without ``validation`` the
    validation score and n are computed from them. ``adapter`` renders the recorded prompts for
    predictors that have no adapter of their own (default: the configured adapter).
    ``selection`` (``Selection``'s fields) says how the program was chosen, ``baseline`` (``Baseline``'s
    fields, see ``baseline_entry``) what later runs are paired with.
    """
    from .._support.version import __version__

    predictors = {
        path: {
            "signature": p.declared_signature.describe(),
            **({"overrides": overrides} if (overrides := p.wording_overrides()) else {}),
            "demos": [demos.to_golden(p.signature, d) for d in p.demos],
            **({"calibration": dict(p.calibration)} if p.calibration else {}),
        }
        for path, p in program.named_predictors()
    }
    examples: dict[str, float] | None = None
    if records is not None:
        if isinstance(records, Mapping):
            examples = {str(k): float(v) for k, v in records.items()}
        else:
            examples = outcomes_from_records(records)
    scores: dict[str, Any] = {}
    if validation is None and examples:
        validation = (sum(examples.values()) / len(examples), len(examples))
    if validation is not None:
        scores["validation"] = {"score": round(validation[0], 6), "n": validation[1]}
        if examples is not None:
            scores["validation"]["examples"] = {k: round(v, 6) for k, v in examples.items()}
    if train is not None:
        scores["train"] = {"score": round(train[0], 6), "n": train[1]}
    return {
        "schema_version": SCHEMA_VERSION,
        "program": name,
        "predictors": predictors,
        "signature_fingerprint": {path: fingerprint(p.declared_signature) for path, p in program.named_predictors()},
        "prompts": render_prompts(program, adapter),
        "scores": scores,
        "metric": metric,
        "model": _redact(model or {}),
        "optimizer": optimizer or {},
        "datasets": datasets or {},
        "plugin_version": __version__,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        **({"selection": dict(selection)} if selection is not None else {}),
        **({"baseline": dict(baseline)} if baseline is not None else {}),
    }


def baseline_entry(
    draws: Sequence[Mapping[str, float]],
    *,
    dataset: str,
    how: str = "compile",
    labels: Mapping[str, str] | None = None,
    metric_fingerprint: str | None = None,
) -> dict[str, Any]:
    """The ``baseline`` of a golden from ``draws`` fresh passes over the gate set (``{key: score}`` each).

    ``labels`` (``datasets.label_hashes`` of the gate set) records a short hash of each example's
    expected outputs, so that a later run leaves out of the pairing the examples relabelled since;
    ``metric_fingerprint`` (``metrics.metric_fingerprint``) the metric that scored it, so that a later
    run with an edited metric says so rather than reading the new scores as the program's.

    An example's entry is its list of draw scores (a number when there was one draw); the score is the
    mean over examples of their mean. Keys missing from a draw (lost to LM errors) are left out of it.
    """
    keys = list(dict.fromkeys(k for d in draws for k in d))
    examples: dict[str, float | list[float]] = {}
    for k in keys:
        values = [round(float(d[k]), 6) for d in draws if k in d]
        examples[k] = values[0] if len(draws) == 1 else values
    means = [v if isinstance(v, float) else sum(v) / len(v) for v in examples.values()]
    return {
        "dataset": dataset,
        "n": len(examples),
        "score": round(sum(means) / len(means), 6) if means else 0.0,
        "draws": len(draws),
        "examples": examples,
        "how": how,
        "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        **({"labels": {k: labels[k] for k in examples if k in labels}} if labels else {}),
        **({"metric_fingerprint": metric_fingerprint} if metric_fingerprint else {}),
    }


_SECRET_KEYS = {"api_key", "authorization", "token", "secret", "password"}


def _redact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k.lower() not in _SECRET_KEYS}
