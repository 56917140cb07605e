"""The golden file's format: the pydantic models below (``GoldenModel`` and its parts) are its
reference; ``validate`` turns a file that does not fit them into a ``GoldenFileError`` naming the
file and the field path. One JSON file per program, ``<test dir>/__dspex__/<test module>/<program>.json``::

    {
      "schema_version": 3,
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
with none answered from its own demo — ``own_demos``: ``skipped`` or ``left out`` —, or ``in-sample`` on the gate's own dataset, opted
in) and what later runs are paired with (``baseline``: the chosen program measured afresh on the
gate dataset after the choice, ``draws`` passes; ``how`` is ``compile`` or ``rebaseline``).
``scores.validation`` is the selection pass. Older goldens have no ``baseline``: their selection
pass's outcomes are their baseline.

* ``signature_fingerprint`` (schema 2) pins the signature each predictor was compiled for.
* ``prompts`` (schema 2) are the messages each predictor sends, inputs shown as ``{field}``
  placeholders, so a PR diff shows the prompt that changed. Informative only: never read back.
* ``scores.validation.examples`` (schema 2) holds the per-example validation outcomes keyed by
  ``datasets.example_key``. Schema 1 files have none: the gate falls back to the tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ..errors import GoldenFileError

__all__ = ["SCHEMA_VERSION", "GoldenModel", "validate"]

SCHEMA_VERSION = 3


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

    ``set`` is ``valset`` (the marker's), ``trainset`` (none answered from its own demo: ``own_demos``
    says how) or ``in-sample`` (the gate's own dataset, opted in: its score is not held out).
    ``own_demos`` (on the trainset): ``skipped`` (a candidate scored on the examples that are none of
    its demos) or ``left out`` (each example asked without its own demo; goldens before it: absent, read as
    ``left out``, or ``in the prompt`` for a ``LabeledFewShot``/``BootstrapFewShot`` golden, which asked each
    demo's example with that demo: ``provenance``)."""

    set: str
    dataset: str = ""
    n: int = 0
    score: float | None = None
    chosen: str = ""
    own_demos: str = ""


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
    #: ``metrics.metric_fingerprint`` of the metric the baseline was scored with ("": older goldens)
    metric_fingerprint: str = ""


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


def validate(path: Path, data: Any) -> GoldenModel:
    """``data`` (a golden file's JSON) as a ``GoldenModel``; else a ``GoldenFileError`` naming ``path``."""
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
