"""Golden files: the compiled demos of a program, reviewed in PRs and gated on in CI.

One JSON file per program, ``<test dir>/__dspex__/<test module>/<program>.json`` (schema 2)::

    {
      "schema_version": 2,
      "program": "triage",
      "predictors": {"self": {"signature": {"instructions": ..., "fields": [...]}, "demos": [
          {"inputs": {...}, "outputs": {...}, "bootstrapped": true, "reasoning": "..."?}, ...]}},
      "signature_fingerprint": {"self": {"hash": "sha256:…", "instructions": ...,
                                         "fields": [{"name", "role", "type"}, ...]}},
      "prompts": {"self": [{"role": "system", "content": ...},
                           {"role": "user", "content": "... Message: {message} ..."}]},
      "scores": {"validation": {"score": 0.85, "n": 40, "examples": {"ex-1": 1.0, "h:3fa…": 0.0}},
                 "train": {"score": 0.9, "n": 30}},
      "metric": "team_matches", "model": {...}, "optimizer": {...},
      "datasets": {"train": "sha256:…", "validation": "sha256:…"},
      "plugin_version": "0.1.0", "created_at": "2026-…",
      "selection": {"set": "trainset", "dataset": "sha256:…", "n": 40, "score": 0.9, "chosen": "shuffled-2"},
      "baseline": {"dataset": "sha256:…", "n": 200, "score": 0.85, "draws": 3, "how": "compile",
                   "examples": {"ex-1": [1.0, 1.0, 1.0], ...}, "measured_at": "2026-…"}
    }

Schema 3 keeps apart how the program was chosen (``selection``: on the ``valset``, the ``trainset``
with each example scored without its own demo, or ``in-sample`` on the gate's own dataset, opted
in) and what later runs are paired with (``baseline``: the chosen program measured afresh on the
gate dataset after the choice, ``draws`` passes; ``how`` is ``compile`` or ``rebaseline``).
``scores.validation`` is the selection pass. Older goldens have no ``baseline``: their selection
pass's outcomes are their baseline, and ``GoldenFile.provenance`` says so.

The pydantic models below (``GoldenModel`` and its parts) are the format's reference; a file that
does not fit them is a ``GoldenFileError`` naming the file and the field path.

* Demos are field values, not prompt text, so a golden stays valid across adapters.
* ``signature_fingerprint`` (schema 2) pins the signature each predictor was compiled for: a program
  whose fields differ is stale, a ``GoldenStaleError`` saying what changed (schema 1 files are
  checked against the signature they recorded, else their demos' fields). An edit of the
  instructions alone is stale for ``apply()`` by default; ``apply(program, instructions=False)``
  lets it through (the plugin gates it against the baseline; ``instruction_diff`` shows it).
* ``prompts`` (schema 2) are the messages each predictor sends, inputs shown as ``{field}``
  placeholders, so a PR diff shows the prompt that changed. Informative only: never read back.
* ``scores.validation.examples`` (schema 2) holds the per-example validation outcomes keyed by
  ``datasets.example_key``: the paired gate compares a run with them (``GoldenFile.compare``).
  Schema 1 files have none: the gate falls back to the tolerance against the recorded score.

Writes are atomic (temp file + rename) under a file lock, mode 0644. ``GoldenStore.write`` never
replaces a corrupted or newer-schema file unless forced, refuses a run over its error budget, and
keeps the better program only when the two are comparable (same signature, same validation set).
``to_dspy_state`` / ``from_dspy_state`` convert to and from DSPy's ``program.save()`` layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .._support.atomic import atomic_write_json
from ..errors import ConfigError, GoldenFileError, GoldenStaleError
from ..evaluation.comparison import Comparison, compare, outcomes_from_records
from ..programs.modules import Module, Predict, dspy_metadata
from ..programs.signatures import diff_fingerprints, fingerprint, fingerprint_of

__all__ = [
    "SCHEMA_VERSION",
    "GoldenFile",
    "GoldenModel",
    "GoldenStore",
    "WriteResult",
    "baseline_entry",
    "from_dspy_state",
    "golden_record",
    "render_prompts",
    "to_dspy_state",
]

SCHEMA_VERSION = 3
WriteOutcome = Literal["created", "updated", "unchanged", "kept"]
_VOLATILE = ("created_at", "plugin_version")
_FILE_MODE = 0o644


# -- the format ----------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldDescription(_Model):
    """One signature field as recorded: name, role, type; ``desc`` and ``prefix`` as shown to the LM."""

    name: str
    role: Literal["input", "output"]
    type: str = "str"
    desc: str = ""
    prefix: str = ""


class SignatureDescription(_Model):
    instructions: str = ""
    fields: list[FieldDescription] = Field(default_factory=list)


class Demo(_Model):
    """A demo as field values: ``inputs`` and ``outputs`` by field name, ``reasoning`` for CoT;
    ``metadata``: the demo's other columns (a labeled demo's ``id``...), never shown to the LM."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    bootstrapped: bool = False
    reasoning: Any = None
    metadata: dict[str, Any] | None = None


class FieldWording(_Model):
    desc: str | None = None
    prefix: str | None = None


class Overrides(_Model):
    """Wording the predictor runs with instead of its code's: instructions rewritten by an optimizer
    (DSPy's MIPROv2/COPRO, imported) and field descriptions/prefixes. ``signature`` and
    ``signature_fingerprint`` stay the code's; the instructions override applies while the code's
    instructions are the ones fingerprinted (an edit in the code wins, and is gated as an edit)."""

    instructions: str | None = None
    fields: dict[str, FieldWording] = Field(default_factory=dict)


class PredictorState(_Model):
    signature: SignatureDescription | None = None
    overrides: Overrides | None = None
    demos: list[Demo] = Field(default_factory=list)
    #: a calibrated classifier's label -> score adjustment (``pytest_dspex.programs.calibration``)
    calibration: dict[str, float] | None = None


class FieldShape(_Model):
    name: str
    role: Literal["input", "output"]
    type: str


class SignatureFingerprint(_Model):
    """``hash`` covers instructions and each field's name, role and type (``signatures.fingerprint``)."""

    hash: str
    instructions: str = ""
    fields: list[FieldShape] = Field(default_factory=list)


class PromptMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class ScoreEntry(_Model):
    """A score over ``n`` examples; for validation (schema 2) also each example's score by key."""

    score: float
    n: int = 0
    examples: dict[str, float] | None = None


class Selection(_Model):
    """How the program was chosen (schema 3): on which set, how many examples, the chosen candidate.

    ``set`` is ``valset`` (the marker's), ``trainset`` (each example scored without its own demo) or
    ``in-sample`` (the gate's own dataset, opted in: its score is not held out)."""

    set: str
    dataset: str = ""
    n: int = 0
    score: float | None = None
    chosen: str = ""


class Baseline(_Model):
    """What every later run is paired with (schema 3): the chosen program measured *after* the choice,
    on the gate dataset, with answers that took no part in it. ``examples`` maps each example key to its
    ``draws`` scores (a number when one draw). ``how``: ``compile`` or ``rebaseline``."""

    dataset: str
    n: int
    score: float
    draws: int = 1
    examples: dict[str, float | list[float]] = Field(default_factory=dict)
    how: str = "compile"
    measured_at: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class Scores(_Model):
    validation: ScoreEntry | None = None
    train: ScoreEntry | None = None


class GoldenModel(_Model):
    """A whole golden file (schema 1 or 2; the schema-2 keys are absent from schema-1 files)."""

    schema_version: int
    program: str = ""
    predictors: dict[str, PredictorState]
    signature_fingerprint: dict[str, SignatureFingerprint] = Field(default_factory=dict)
    prompts: dict[str, list[PromptMessage]] = Field(default_factory=dict)
    scores: Scores = Field(default_factory=Scores)
    metric: str = ""
    model: dict[str, Any] = Field(default_factory=dict)
    optimizer: dict[str, Any] = Field(default_factory=dict)
    datasets: dict[str, str] = Field(default_factory=dict)
    plugin_version: str = ""
    created_at: str = ""
    selection: Selection | None = None
    baseline: Baseline | None = None


def _validation_error(path: Path, exc: pydantic.ValidationError) -> GoldenFileError:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return GoldenFileError(f"{path}: corrupted golden file ({'; '.join(parts)}{more})")


def _validate(path: Path, data: Any) -> GoldenModel:
    if not isinstance(data, dict):
        raise GoldenFileError(f"{path}: corrupted golden file (expected a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise GoldenFileError(f"{path}: corrupted golden file (no integer schema_version)")
    if version > SCHEMA_VERSION:
        raise GoldenFileError(
            f"{path}: written by a newer pytest-dspex (schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}); upgrade pytest-dspex"
        )
    try:
        return GoldenModel.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _validation_error(path, exc) from None


# -- building a record ---------------------------------------------------------------------------
def _demo_to_golden(predictor: Predict, demo: Mapping[str, Any]) -> dict[str, Any]:
    sig = predictor.signature
    ins = {k: demo[k] for k in sig.input_fields() if k in demo}
    outs = {k: demo[k] for k in sig.output_fields() if k in demo and k != "reasoning"}
    entry: dict[str, Any] = {"inputs": ins, "outputs": outs, "bootstrapped": bool(demo.get("augmented"))}
    if "reasoning" in demo and "reasoning" in sig.fields:
        entry["reasoning"] = demo["reasoning"]
    metadata = {k: v for k, v in demo.items() if k not in sig.fields and k != "augmented"}
    if metadata:
        entry["metadata"] = metadata
    return entry


def _demo_from_golden(entry: Mapping[str, Any]) -> dict[str, Any]:
    demo = {**(entry.get("metadata") or {}), **entry.get("inputs", {}), **entry.get("outputs", {})}
    if entry.get("reasoning") is not None:
        demo["reasoning"] = entry["reasoning"]
    if entry.get("bootstrapped"):
        demo["augmented"] = True
    return demo


def _jsonable(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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
        placeholders = {name: "{" + name + "}" for name in p.signature.input_fields()}
        try:
            request = chosen.format(p.signature, p.demos, placeholders)
        except Exception:
            continue
        prompts[path] = [{"role": str(m["role"]), "content": str(m["content"])} for m in request.messages]
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
            "demos": [_jsonable(_demo_to_golden(p, d)) for d in p.demos],
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
) -> dict[str, Any]:
    """The ``baseline`` of a golden from ``draws`` fresh passes over the gate set (``{key: score}`` each).

    ``labels`` (``datasets.label_hashes`` of the gate set) records a short hash of each example's
    expected outputs, so that a later run leaves out of the pairing the examples relabelled since.

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
    }


_SECRET_KEYS = {"api_key", "authorization", "token", "secret", "password"}


def _redact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k.lower() not in _SECRET_KEYS}


def provenance_text(p: Mapping[str, Any]) -> str:
    """``chosen on the trainset (n=30, leave-one-out) · baseline: fresh, 200 examples × 3 draws, 0.815``."""
    sel, base = p.get("selection") or {}, p.get("baseline") or {}
    where = {
        "valset": "the valset",
        "trainset": "the trainset, each example without its own demo",
        "in-sample": "the gate's own examples (IN-SAMPLE: not held out)",
        "validation": "a validation set",
        "imported": "DSPy's side (an imported save)",
    }.get(str(sel.get("set")), str(sel.get("set")))
    facts = [f"n={sel['n']}"] if sel.get("n") else []
    if sel.get("score") is not None and sel.get("n"):
        facts.append(f"score {float(sel['score']):.3f}")
    text = f"chosen on {where}" + (f" ({', '.join(facts)})" if facts else "")
    if sel.get("set") == "none":  # baseline_only: a plain function, nothing was chosen
        text = "nothing to optimize (no predictors: the program runs as written)"
    score = base.get("score")
    shown = f", score {float(score):.3f}" if score is not None else ""
    if base.get("fresh"):
        draws = int(base.get("draws") or 1)
        how = "re-baselined" if base.get("how") == "rebaseline" else "measured" if sel.get("set") == "none" else "measured after the choice"
        text += f"; baseline {how} on the gate set: {base.get('n', 0)} examples x {draws} draw{'s' if draws != 1 else ''}{shown}"
    else:
        text += f"; baseline: the {base.get('how', 'selection pass')}{shown}, not a fresh measurement"
    return text


def instruction_diff(old: str, new: str, label: str = "") -> str:
    """A unified diff of two instructions (``-`` the golden's, ``+`` the program's)."""
    import difflib

    name = f" ({label})" if label else ""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"golden instructions{name}", f"program instructions{name}", lineterm="", n=1
    )
    return "\n".join(lines)


# -- reading and applying ------------------------------------------------------------------------
def _recompile_hint(program: str) -> str:
    target = f"--dspex-compile={program}" if program else "--dspex-compile"
    return f"run pytest {target} to recompile"


class GoldenFile:
    """One golden file: ``data`` (the JSON as read) and ``model`` (the same, validated)."""

    def __init__(self, path: Path, data: dict[str, Any], model: GoldenModel | None = None) -> None:
        self.path = path
        self.data = data
        self.model = model if model is not None else _validate(path, data)

    def __repr__(self) -> str:
        return f"GoldenFile({str(self.path)!r}, schema={self.schema_version})"

    @property
    def schema_version(self) -> int:
        return self.model.schema_version

    @property
    def program(self) -> str:
        return self.model.program

    @property
    def validation_score(self) -> float | None:
        v = self.model.scores.validation
        return float(v.score) if v is not None else None

    @property
    def validation_n(self) -> int | None:
        v = self.model.scores.validation
        return int(v.n) if v is not None else None

    @property
    def validation_examples(self) -> dict[str, float] | None:
        """Per-example validation outcomes by example key (schema 2), else None (no paired gate)."""
        v = self.model.scores.validation
        return dict(v.examples) if v is not None and v.examples is not None else None

    @property
    def validation_dataset(self) -> str | None:
        return self.model.datasets.get("validation")

    # -- the baseline: what every later run is paired with ----------------------------------------
    @property
    def baseline_outcomes(self) -> dict[str, float | list[float]] | None:
        """Per-example baseline outcomes by key (a list of draws when there were several), or None.

        Schema 3: the fresh baseline measured after the choice. Older goldens: the selection pass's
        outcomes (``validation_examples``), which is what they were gated against.
        """
        b = self.model.baseline
        if b is not None:
            return dict(b.examples)
        return self.validation_examples  # type: ignore[return-value]

    def paired_baseline(self, examples: Iterable[Any]) -> tuple[dict[str, float | list[float]] | None, int]:
        """The baseline outcomes to pair a run on ``examples`` with, and how many were left out because
        the example's labels (expected outputs) changed since the baseline was measured. Goldens
        without recorded label hashes: every outcome, 0 left out."""
        outcomes = self.baseline_outcomes
        b = self.model.baseline
        if outcomes is None or b is None or not b.labels:
            return outcomes, 0
        from ..evaluation.datasets import label_hashes

        now = label_hashes(examples)
        changed = {k for k, h in b.labels.items() if k in now and now[k] != h}
        return {k: v for k, v in outcomes.items() if k not in changed}, len(changed)

    @property
    def baseline_score(self) -> float | None:
        b = self.model.baseline
        return float(b.score) if b is not None else self.validation_score

    @property
    def baseline_n(self) -> int | None:
        b = self.model.baseline
        return int(b.n) if b is not None else self.validation_n

    @property
    def baseline_dataset(self) -> str | None:
        """The fingerprint of the dataset the baseline was measured on (older goldens: the selection set)."""
        b = self.model.baseline
        return b.dataset if b is not None else self.validation_dataset

    def provenance(self, gate_fingerprint: str | None = None) -> dict[str, Any]:
        """Where the golden's numbers come from, for every view: how the program was chosen (set, n,
        score, chosen candidate) and how its baseline was measured (n, score, draws, fresh or not).

        ``gate_fingerprint`` (the gate dataset's) lets an older golden say whether it was chosen on the
        gate's own examples (in-sample). ``text`` is one line for people.
        """
        sel, base = self.model.selection, self.model.baseline
        out: dict[str, Any] = {}
        if sel is not None:
            out["selection"] = sel.model_dump(include={"set", "n", "score", "chosen"})
        else:
            v = self.model.scores.validation
            same = gate_fingerprint is not None and self.validation_dataset == gate_fingerprint
            imported = self.model.optimizer.get("name") == "dspy-import"
            out["selection"] = {
                "set": "imported" if imported else "in-sample" if same else "validation",
                "n": v.n if v is not None else 0,
                "score": v.score if v is not None else None,
                "chosen": str(self.model.optimizer.get("chosen", "")),
            }
        if base is not None:
            out["baseline"] = {"n": base.n, "score": base.score, "draws": base.draws, "how": base.how, "fresh": True}
        else:
            v = self.model.scores.validation
            out["baseline"] = {
                "n": v.n if v is not None else 0,
                "score": v.score if v is not None else None,
                "draws": 1,
                "how": f"selection pass (golden schema {self.schema_version})",
                "fresh": False,
            }
        out["in_sample"] = out["selection"]["set"] == "in-sample"
        out["text"] = provenance_text(out)
        return out

    @property
    def prompts(self) -> dict[str, list[dict[str, str]]]:
        return {k: [m.model_dump() for m in v] for k, v in self.model.prompts.items()}

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """The signature fingerprint per predictor: recorded (schema 2), else rebuilt from the recorded
        signature (schema 1); a predictor with neither is left out."""
        out = {k: v.model_dump() for k, v in self.model.signature_fingerprint.items()}
        for path, state in self.model.predictors.items():
            if path not in out and state.signature is not None:
                fields = [{"name": f.name, "role": f.role, "type": f.type} for f in state.signature.fields]
                out[path] = fingerprint_of(state.signature.instructions, fields)
        return out

    def compare(
        self, outcomes: Mapping[str, float] | Iterable[Any], *, alpha: float = 0.05, tolerance: float = 0.05
    ) -> Comparison | None:
        """The paired comparison of a run's outcomes (``{key: score}`` or records) with this golden's,
        or None when the golden has no per-example outcomes (schema 1)."""
        base = self.validation_examples
        if base is None:
            return None
        current = (
            {str(k): float(v) for k, v in outcomes.items()}
            if isinstance(outcomes, Mapping)
            else outcomes_from_records(outcomes)
        )
        return compare(base, current, alpha=alpha, tolerance=tolerance)

    def instruction_changes(self, program: Module) -> dict[str, tuple[str, str]]:
        """Predictors whose instructions alone differ from the golden's: ``{path: (golden's, now)}``.

        Empty when nothing differs or when fields differ too (then ``check`` raises).
        """
        recorded = self.fingerprints()
        out: dict[str, tuple[str, str]] = {}
        for path, pred in program.named_predictors():
            old = recorded.get(path)
            if old is None:
                continue
            now = fingerprint(pred.declared_signature)
            if old["hash"] != now["hash"] and diff_fingerprints(old, now) == ["instructions changed"]:
                out[path] = (str(old.get("instructions", "")), str(now["instructions"]))
        return out

    def instruction_diff(self, program: Module) -> str:
        """The diff of every predictor's instructions that changed since the golden ('' when none did)."""
        changes = self.instruction_changes(program)
        return "\n".join(
            instruction_diff(old, new, "" if len(changes) == 1 else path) for path, (old, new) in changes.items()
        )

    def check(self, program: Module, *, instructions: bool = True) -> None:
        """Raise ``GoldenStaleError`` when ``program`` is not the program this golden was compiled for.

        ``instructions=False``: an edit of the instructions alone (same fields, roles and types, so the
        golden's demos still fit) is not stale — the plugin gates it against the baseline instead.
        """
        preds = dict(program.named_predictors())
        saved = self.model.predictors
        hint = _recompile_hint(self.program)
        if set(saved) != set(preds):
            gone, new = sorted(set(saved) - set(preds)), sorted(set(preds) - set(saved))
            moved = [f"predictor {p!r} removed" for p in gone] + [f"predictor {p!r} added" for p in new]
            raise GoldenStaleError(
                f"{self.path}: golden is stale: golden has predictors {sorted(saved)}, the program has "
                f"{sorted(preds)}; {hint}",
                changes=moved,
            )
        recorded = self.fingerprints()
        changes: list[str] = []
        for path, pred in preds.items():
            old = recorded.get(path)
            if old is None:
                changes += _demo_field_problems(path, pred, saved[path])
                continue
            now = fingerprint(pred.declared_signature)
            if old["hash"] != now["hash"]:
                label = "" if len(preds) == 1 else f"predictor {path!r}: "
                diff = diff_fingerprints(old, now)
                if not instructions and diff == ["instructions changed"]:
                    continue
                changes += [label + c for c in diff]
        if changes:
            raise GoldenStaleError(
                f"{self.path}: golden is stale, the signature changed since it was compiled: "
                f"{'; '.join(changes)}; {hint}",
                changes=changes,
            )

    def apply(self, program: Module, *, instructions: bool = True) -> Module:
        """Load this golden's demos into (a copy of) ``program``; a stale golden is a ``GoldenStaleError``.

        ``instructions=False`` lets an instructions-only edit through (the program keeps its own
        instructions, with the golden's demos): see ``check``.
        """
        self.check(program, instructions=instructions)
        program = program.deepcopy()
        recorded = self.fingerprints()
        for path, pred in program.named_predictors():
            state = self.model.predictors[path]
            pred.demos = [_demo_from_golden(d.model_dump()) for d in state.demos]
            pred.calibration = dict(state.calibration) if state.calibration else None
            _apply_overrides(pred, state.overrides, recorded.get(path))
        return program


def _apply_overrides(pred: Predict, overrides: Overrides | None, recorded: Mapping[str, Any] | None) -> None:
    """Run ``pred`` with the golden's wording (none: the code's). The instructions override holds
    only while the code's instructions are the ones the golden fingerprinted."""
    if overrides is None:
        pred.set_wording()
        return
    instructions = overrides.instructions
    if instructions is not None and recorded is not None and recorded.get("instructions") != pred.declared_signature.instructions:
        instructions = None  # the code's instructions were edited since: the edit runs (and is gated)
    fields = {
        name: {"desc": w.desc, "prefix": w.prefix}
        for name, w in overrides.fields.items()
        if name in pred.declared_signature.fields
    }
    pred.set_wording(instructions, fields)


def _demo_field_problems(path: str, pred: Predict, state: PredictorState) -> list[str]:
    """For a golden without a recorded signature: demos whose fields the signature does not have."""
    fields = set(pred.signature.fields)
    problems: list[str] = []
    for i, entry in enumerate(state.demos):
        demo = _demo_from_golden(entry.model_dump())
        unknown = set(demo) - fields - {"augmented"}
        if unknown:
            problems.append(
                f"predictor {path!r} demo {i} has field(s) {', '.join(sorted(unknown))} not in the signature "
                f"({pred.signature.signature_string()})"
            )
        missing = [n for n in pred.signature.input_fields() if n not in demo]
        if missing:
            problems.append(f"predictor {path!r} demo {i} lacks input field(s) {', '.join(missing)}")
    return problems


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    """What makes two goldens the same: all but the timestamps and the optimizer's candidate table.

    The candidates' race scores are a record of the search, not of the program: on llama.cpp they
    move by an example or two between runs (its numerics depend on the cached prompt prefix) while
    the chosen demos, prompts and validation outcomes stay the same, and a golden rewritten for that
    would be a diff to review for nothing.
    """
    out = {k: v for k, v in data.items() if k not in _VOLATILE}
    optimizer = out.get("optimizer")
    if isinstance(optimizer, dict):
        out["optimizer"] = {k: v for k, v in optimizer.items() if k != "candidates"}
    baseline = out.get("baseline")
    if isinstance(baseline, dict):
        out["baseline"] = {k: v for k, v in baseline.items() if k != "measured_at"}
    return out


def state_file(path: Path, suffix: str, state_dir: Path | None = None) -> Path:
    """The file (``<digest>.lock``, ``<digest>.compiled``) that belongs to the golden at ``path`` in the
    private state folder (``_private``: mode 0700, never a shared folder of the temporary directory)."""
    from .._support.private import default_state_dir, private_dir

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    folder = private_dir(state_dir / "locks") if state_dir is not None else private_dir(default_state_dir() / "locks")
    return folder / f"{digest}{suffix}"


_locks: dict[str, Any] = {}


class WriteResult(str):
    """What ``GoldenStore.write`` did — ``"created"``, ``"updated"``, ``"unchanged"`` or ``"kept"``
    (it compares equal to those strings) — and ``reason``, why, in words."""

    reason: str

    def __new__(cls, outcome: WriteOutcome, reason: str = "") -> WriteResult:
        obj = super().__new__(cls, outcome)
        obj.reason = reason
        return obj

    @property
    def outcome(self) -> WriteOutcome:
        return str(self)  # type: ignore[return-value]


class GoldenStore:
    """Reads and writes golden files under ``root`` (usually ``<test dir>/__dspex__``)."""

    def __init__(self, root: str | os.PathLike[str], *, state_dir: Path | None = None) -> None:
        self.root = Path(root)
        #: the private folder its locks live in (``_private``); None: the user's default one
        self.state_dir = state_dir

    def path_for(self, module: str, program: str) -> Path:
        return self.root / module / f"{program}.json"

    def lock(self, path: Path, timeout: float = 3600) -> Any:
        """A cross-process lock for ``path``, in the private state folder (outside the repo, so no stray
        lock files; 0700, so no other user can take or redirect it).

        The same lock object is returned for the same path, so it is re-entrant in a process.
        """
        from filelock import FileLock

        try:
            key = str(state_file(path, ".lock", self.state_dir))
        except (OSError, ConfigError) as exc:
            raise GoldenFileError(f"{path}: no private folder for the golden's lock ({exc})") from None
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = FileLock(key, timeout=timeout)
        return lock

    @staticmethod
    def read(path: Path) -> GoldenFile:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise GoldenFileError(f"{path}: cannot read golden file ({exc})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GoldenFileError(
                f"{path}: corrupted golden file (not valid JSON: {exc}); restore it from version control "
                "or re-run pytest --dspex-compile --dspex-force"
            ) from None
        return GoldenFile(path, data, _validate(path, data))

    def write(
        self,
        path: Path,
        record: dict[str, Any],
        *,
        force: bool = False,
        error_rate: float | None = None,
        max_error_rate: float | None = None,
        over_error_budget: bool = False,
        dry_run: bool = False,
    ) -> WriteResult:
        """Write ``record`` atomically (mode 0644), or keep the existing golden and say why.

        ``dry_run``: decide and say what would happen, write nothing (an xdist worker compiles, the
        controller writes: the worker evaluates with the program the controller will keep).

        * A run over its error budget (``over_error_budget``, or ``error_rate > max_error_rate``) is
          never written, forced or not: a golden of errors is worse than none.
        * An existing file that is corrupted or from a newer schema is never replaced unless ``force``.
        * Keep-better (unless ``force``): the existing golden is kept when its validation score is
          higher *and* it is comparable — same signature fingerprints, same validation set. A golden
          for another signature or validation set is replaced (the reason says which).
        """
        new = _validate(path, record)
        if over_error_budget or (
            error_rate is not None and max_error_rate is not None and error_rate > max_error_rate
        ):
            detail = []
            if error_rate is not None:
                detail.append(f"{error_rate:.0%} of the validation examples failed with LM errors")
            if max_error_rate is not None:
                detail.append(f"the budget is {max_error_rate:.0%} (--dspex-max-error-rate)")
            why = f" ({', '.join(detail)})" if detail else ""
            raise GoldenFileError(
                f"{path}: golden not written: the compile run was over its error budget{why}; a golden of "
                "errors is worse than none. Fix the LM endpoint and re-run pytest --dspex-compile"
            )
        write = (lambda p, r: None) if dry_run else self._write
        with self.lock(path):
            if not path.exists():
                write(path, record)
                return WriteResult("created", "no golden file yet")
            try:
                old = self.read(path)
            except GoldenFileError as exc:
                if not force:
                    raise GoldenFileError(
                        f"{exc} — not replaced; restore it from version control, or re-run with "
                        "pytest --dspex-compile --dspex-force to overwrite it"
                    ) from None
                write(path, record)
                return WriteResult("updated", "replaced an unreadable golden file (forced)")
            if force:
                write(path, record)
                return WriteResult("updated", "replaced (forced)")
            if _stable(old.data) == _stable(json.loads(json.dumps(record))):
                return WriteResult("unchanged", "same demos, prompts and scores as the golden file")
            reason = _replace_reason(old, GoldenFile(path, record, new))
            if reason is None:
                if old.model.baseline is not None and new.baseline is not None:
                    return WriteResult(
                        "kept",
                        f"kept: the golden's baseline {old.baseline_score:.3f} is higher than this run's "
                        f"{new.baseline.score:.3f} on the same signature and gate set; use --dspex-force to replace it",
                    )
                return WriteResult(
                    "kept",
                    f"kept: the golden's validation score {old.validation_score:.3f} is higher than this run's "
                    f"{new.scores.validation.score if new.scores.validation else 0.0:.3f} on the same signature "
                    "and validation set; use --dspex-force to replace it",
                )
            write(path, record)
            return WriteResult("updated", reason)

    @staticmethod
    def _write(path: Path, record: dict[str, Any]) -> None:
        try:
            atomic_write_json(path, record)
            os.chmod(path, _FILE_MODE)  # mkstemp creates 0600; a golden is a reviewed, shared file
        except OSError as exc:  # a read-only folder, a path under a file: one clear line, not a tempfile traceback
            folder = path.parent
            raise GoldenFileError(
                f"{path}: golden not written: cannot write in {folder} ({exc.strerror or exc}); make the folder "
                "writable and re-run pytest --dspex-compile (the previous golden, if any, is unchanged)"
            ) from None

    def all_files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.rglob("*.json") if not p.name.startswith("."))


def _replace_reason(old: GoldenFile, new: GoldenFile) -> str | None:
    """Why ``new`` replaces ``old``, or None when ``old`` is comparable and better (keep it)."""
    old_fp = {k: v["hash"] for k, v in old.fingerprints().items()}
    new_fp = {k: v["hash"] for k, v in new.fingerprints().items()}
    if old_fp != new_fp:
        return "replaced because the signature changed since the golden was compiled"
    if old.validation_dataset and new.validation_dataset and old.validation_dataset != new.validation_dataset:
        return "replaced because the validation set changed (scores on different sets are not comparable)"
    if old.model.metric and new.model.metric and old.model.metric != new.model.metric:
        return f"replaced because the metric changed ({old.model.metric} -> {new.model.metric})"
    if old.model.baseline is not None and new.model.baseline is not None:
        if old.baseline_dataset != new.baseline_dataset:
            return "replaced because the gate dataset changed (baselines on different sets are not comparable)"
        o, n = old.baseline_score, new.baseline_score
        what = "baseline"
    else:
        o, n = old.validation_score, new.validation_score
        what = "validation score"
    if o is None or n is None:
        return f"replaced because the golden has no {what} to compare with"
    if o > n:
        return None
    return f"replaced because this run's {what} {n:.3f} is at least the golden's {o:.3f}"


# -- DSPy interop --------------------------------------------------------------------------------
def to_dspy_state(golden: GoldenFile | dict[str, Any], program: Module) -> dict[str, Any]:
    """The golden's demos in the layout DSPy's ``program.load()`` reads (metadata: ``dspy_metadata``)."""
    gf = golden if isinstance(golden, GoldenFile) else GoldenFile(Path("<golden>"), golden)
    state = gf.apply(program).dump_state()
    state["metadata"] = dspy_metadata()
    return state


def from_dspy_state(state: dict[str, Any], program: Module, *, source: str = "<dspy state>") -> Module:
    """Load demos from a program saved by DSPy (``program.save("x.json")``) into ``program``."""
    from ..errors import ConfigError

    program = program.deepcopy()
    try:
        if isinstance(program, Predict):
            program.load_state(state.get("self", state) if "demos" not in state else state)
        else:
            program.load_state({k: v for k, v in state.items() if k != "metadata"})
    except ConfigError as exc:
        raise GoldenFileError(f"{source}: {exc}") from None
    return program
