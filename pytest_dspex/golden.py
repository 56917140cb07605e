"""Golden files: the compiled demos of a program, reviewed in PRs and gated on in CI.

One JSON file per program, ``<test dir>/__dspex__/<test module>/<program>.json``::

    {
      "schema_version": 1,
      "program": "triage",
      "predictors": {"self": {"signature": {...}, "demos": [
          {"inputs": {...}, "outputs": {...}, "bootstrapped": true}, ...]}},
      "scores": {"validation": {"score": 0.85, "n": 40}, "train": {...}},
      "metric": "team_matches", "model": {...}, "optimizer": {...},
      "datasets": {"train": "sha256:…", "validation": "sha256:…"},
      "plugin_version": "0.1.0", "created_at": "2026-…"
    }

Demos are stored as field values, not prompt text, so a golden stays valid across adapters.
Writes are atomic (temp file + rename) under a file lock; the better program is kept unless
forced. ``to_dspy_state`` / ``from_dspy_state`` convert to and from DSPy's ``program.save()`` layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ._atomic import atomic_write_json
from ._exceptions import GoldenFileError
from .programs import Module, Predict

__all__ = ["SCHEMA_VERSION", "GoldenFile", "GoldenStore", "from_dspy_state", "golden_record", "to_dspy_state"]

SCHEMA_VERSION = 1
WriteOutcome = Literal["created", "updated", "unchanged", "kept"]
_VOLATILE = ("created_at", "plugin_version")


def _demo_to_golden(predictor: Predict, demo: dict[str, Any]) -> dict[str, Any]:
    sig = predictor.signature
    ins = {k: demo[k] for k in sig.input_fields() if k in demo}
    outs = {k: demo[k] for k in sig.output_fields() if k in demo and k != "reasoning"}
    entry: dict[str, Any] = {"inputs": ins, "outputs": outs, "bootstrapped": bool(demo.get("augmented"))}
    if "reasoning" in demo and "reasoning" in sig.fields:
        entry["reasoning"] = demo["reasoning"]
    return entry


def _demo_from_golden(entry: dict[str, Any]) -> dict[str, Any]:
    demo = {**entry.get("inputs", {}), **entry.get("outputs", {})}
    if "reasoning" in entry:
        demo["reasoning"] = entry["reasoning"]
    if entry.get("bootstrapped"):
        demo["augmented"] = True
    return demo


def _jsonable(value: Any) -> Any:
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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
) -> dict[str, Any]:
    """Build the JSON-able content of a golden file for ``program``."""
    from . import __version__

    predictors = {
        path: {
            "signature": p.signature.describe(),
            "demos": [_jsonable(_demo_to_golden(p, d)) for d in p.demos],
        }
        for path, p in program.named_predictors()
    }
    scores: dict[str, Any] = {}
    if validation is not None:
        scores["validation"] = {"score": round(validation[0], 6), "n": validation[1]}
    if train is not None:
        scores["train"] = {"score": round(train[0], 6), "n": train[1]}
    return {
        "schema_version": SCHEMA_VERSION,
        "program": name,
        "predictors": predictors,
        "scores": scores,
        "metric": metric,
        "model": _redact(model or {}),
        "optimizer": optimizer or {},
        "datasets": datasets or {},
        "plugin_version": __version__,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }


_SECRET_KEYS = {"api_key", "authorization", "token", "secret", "password"}


def _redact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k.lower() not in _SECRET_KEYS}


@dataclass
class GoldenFile:
    path: Path
    data: dict[str, Any]

    @property
    def validation_score(self) -> float | None:
        v = self.data.get("scores", {}).get("validation")
        return float(v["score"]) if v else None

    @property
    def validation_n(self) -> int | None:
        v = self.data.get("scores", {}).get("validation")
        return int(v["n"]) if v else None

    def apply(self, program: Module) -> Module:
        """Load this golden's demos into (a copy of) ``program``; mismatches are clear errors."""
        program = program.deepcopy()
        preds = dict(program.named_predictors())
        saved = self.data["predictors"]
        if set(saved) != set(preds):
            raise GoldenFileError(
                f"{self.path}: golden has predictors {sorted(saved)}, the program has {sorted(preds)}; "
                "re-run pytest --dspex-compile"
            )
        for path, pred in preds.items():
            fields = set(pred.signature.fields)
            demos = []
            for i, entry in enumerate(saved[path].get("demos", [])):
                demo = _demo_from_golden(entry)
                unknown = set(demo) - fields - {"augmented"}
                if unknown:
                    raise GoldenFileError(
                        f"{self.path}: predictor {path!r} demo {i} has field(s) {', '.join(sorted(unknown))} "
                        f"not in the signature ({pred.signature.signature_string()}); re-run pytest --dspex-compile"
                    )
                missing = [n for n in pred.signature.input_fields() if n not in demo]
                if missing:
                    raise GoldenFileError(
                        f"{self.path}: predictor {path!r} demo {i} lacks input field(s) {', '.join(missing)}"
                    )
                demos.append(demo)
            pred.demos = demos
        return program


def _validate(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GoldenFileError(f"{path}: corrupted golden file (expected a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise GoldenFileError(f"{path}: corrupted golden file (no integer schema_version)")
    if version > SCHEMA_VERSION:
        raise GoldenFileError(
            f"{path}: written by a newer pytest-dspex (schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}); upgrade pytest-dspex"
        )
    preds = data.get("predictors")
    if not isinstance(preds, dict) or not all(
        isinstance(p, dict) and isinstance(p.get("demos", []), list) for p in preds.values()
    ):
        raise GoldenFileError(f"{path}: corrupted golden file ('predictors' must map paths to {{'demos': [...]}})")
    for pname, p in preds.items():
        for i, demo in enumerate(p.get("demos", [])):
            if not isinstance(demo, dict) or not isinstance(demo.get("inputs", {}), dict) or not isinstance(demo.get("outputs", {}), dict):
                raise GoldenFileError(f"{path}: corrupted golden file (predictor {pname!r} demo {i} is malformed)")
    scores = data.get("scores", {})
    val = scores.get("validation") if isinstance(scores, dict) else None
    if val is not None and not (isinstance(val, dict) and isinstance(val.get("score"), int | float)):
        raise GoldenFileError(f"{path}: corrupted golden file (scores.validation must hold a number)")
    return data


def _stable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _VOLATILE}


def _lock_path(path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    lock_dir = Path(tempfile.gettempdir()) / "pytest-dspex-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return lock_dir / f"{digest}.lock"


_locks: dict[str, Any] = {}


class GoldenStore:
    """Reads and writes golden files under ``root`` (usually ``<test dir>/__dspex__``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, module: str, program: str) -> Path:
        return self.root / module / f"{program}.json"

    @staticmethod
    def lock(path: Path, timeout: float = 3600) -> Any:
        """A cross-process lock for ``path`` (kept outside the repo, so no stray lock files).

        The same lock object is returned for the same path, so it is re-entrant in a process.
        """
        from filelock import FileLock

        key = str(_lock_path(path))
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
        return GoldenFile(path, _validate(path, data))

    def write(self, path: Path, record: dict[str, Any], *, force: bool = False) -> WriteOutcome:
        """Write ``record`` atomically; keep an existing golden with a higher validation score."""
        _validate(path, record)
        with self.lock(path):
            outcome: WriteOutcome = "created"
            if path.exists():
                outcome = "updated"
                if not force:
                    try:
                        old = self.read(path)
                    except GoldenFileError:
                        old = None  # a damaged file is replaced by a good one
                    new_score = record.get("scores", {}).get("validation", {}).get("score")
                    if old is not None and old.validation_score is not None and new_score is not None and old.validation_score > new_score:
                        return "kept"
                    if old is not None and _stable(old.data) == _stable(record):
                        return "unchanged"  # same demos and scores: leave the file (and its diff) alone
            atomic_write_json(path, record)
            return outcome

    def all_files(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.rglob("*.json") if not p.name.startswith("."))


# -- DSPy interop --------------------------------------------------------------------------------
def to_dspy_state(golden: GoldenFile | dict[str, Any], program: Module) -> dict[str, Any]:
    """The golden's demos in the layout DSPy's ``program.load()`` reads."""
    gf = golden if isinstance(golden, GoldenFile) else GoldenFile(Path("<golden>"), golden)
    loaded = gf.apply(program)
    state = loaded.dump_state()
    from . import __version__

    state["metadata"] = {"dependency_versions": {"pytest_dspex": __version__}}
    return state


def from_dspy_state(state: dict[str, Any], program: Module, *, source: str = "<dspy state>") -> Module:
    """Load demos from a program saved by DSPy (``program.save("x.json")``) into ``program``."""
    from ._exceptions import ConfigError

    program = program.deepcopy()
    try:
        if isinstance(program, Predict):
            program.load_state(state.get("self", state) if "demos" not in state else state)
        else:
            program.load_state({k: v for k, v in state.items() if k != "metadata"})
    except ConfigError as exc:
        raise GoldenFileError(f"{source}: {exc}") from None
    return program
