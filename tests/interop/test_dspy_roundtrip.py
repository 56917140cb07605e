"""Golden files and saved programs load into real DSPy (3.4.1), and DSPy-saved programs load here.

These run in ``tox -e dspy``, which installs DSPy and sets ``DSPEX_REQUIRE_DSPY=1`` so that a missing
DSPy fails instead of skipping; the main test run, without DSPy, skips them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import pytest

try:
    import dspy
except ImportError:
    if os.environ.get("DSPEX_REQUIRE_DSPY"):
        raise
    pytest.skip("DSPy is not installed (tox -e dspy runs the interop tests)", allow_module_level=True)

import pytest_dspex as dspex
from pytest_dspex.golden.dspy_state import from_dspy_state, to_dspy_state
from pytest_dspex.golden.record import golden_record
from pytest_dspex.golden.store import GoldenStore


class Triage(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField(desc="the customer's words")
    team: Literal["billing", "technical"] = dspex.OutputField(desc="the team that answers")


TRIAGE_DEMOS = [
    {"message": "I was charged twice", "team": "billing", "augmented": True},
    {"message": "The app crashes on start", "team": "technical"},
]
COT_DEMOS = [
    {"question": "What is 2 + 2?", "reasoning": "Two plus two is four.", "answer": "4", "augmented": True},
    {"question": "What is 3 + 1?", "answer": "4"},
]


def _golden(tmp_path: Path, program: dspex.Module, name: str) -> Any:
    path = tmp_path / "__dspex__" / "test_mod" / f"{name}.json"
    store = GoldenStore(tmp_path / "__dspex__")
    store.write(path, golden_record(program, name=name, metric="m", validation=(0.9, 10)))
    return store.read(path)


def _save_json(tmp_path: Path, state: dict[str, Any], name: str = "program.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(state), encoding="utf-8")
    return path


def test_dspy_version() -> None:
    assert dspy.__version__ == "3.4.1"


def test_a_golden_loads_into_dspy_predict(tmp_path: Path) -> None:
    program = dspex.Predict(Triage)
    program.demos = [dict(d) for d in TRIAGE_DEMOS]
    golden = _golden(tmp_path, program, "triage")
    saved = _save_json(tmp_path, to_dspy_state(golden, dspex.Predict(Triage)))

    theirs = dspy.Predict("message -> team")
    theirs.load(str(saved))  # DSPy's own loader: metadata check, signature, demos

    assert [dict(d) for d in theirs.demos] == TRIAGE_DEMOS
    assert theirs.signature.instructions == Triage.instructions
    assert theirs.signature.fields["team"].json_schema_extra["desc"] == "the team that answers"
    assert theirs.signature.fields["message"].json_schema_extra["prefix"] == "Message:"


def test_a_chain_of_thought_golden_loads_into_dspy(tmp_path: Path) -> None:
    program = dspex.ChainOfThought("question -> answer")
    program.predict.demos = [dict(d) for d in COT_DEMOS]
    golden = _golden(tmp_path, program, "math")
    saved = _save_json(tmp_path, to_dspy_state(golden, dspex.ChainOfThought("question -> answer")))

    theirs = dspy.ChainOfThought("question -> answer")
    theirs.load(str(saved))

    assert [dict(d) for d in theirs.predict.demos] == COT_DEMOS
    assert list(theirs.predict.signature.fields) == ["question", "reasoning", "answer"]


def test_a_program_saved_here_loads_into_dspy(tmp_path: Path) -> None:
    program = dspex.Predict(Triage)
    program.demos = [dict(d) for d in TRIAGE_DEMOS]
    program.save(tmp_path / "saved.json")

    theirs = dspy.Predict("message -> team")
    theirs.load(str(tmp_path / "saved.json"))
    assert [dict(d) for d in theirs.demos] == TRIAGE_DEMOS


def test_a_program_saved_by_dspy_loads_here(tmp_path: Path) -> None:
    theirs = dspy.Predict("message -> team")
    theirs.demos = [dspy.Example(**d) for d in TRIAGE_DEMOS]
    theirs.save(str(tmp_path / "dspy.json"))
    state = json.loads((tmp_path / "dspy.json").read_text(encoding="utf-8"))
    assert "dspy" in state["metadata"]["dependency_versions"]

    ours = from_dspy_state(state, dspex.Predict(Triage), source="dspy.json")
    assert ours.demos == TRIAGE_DEMOS  # type: ignore[attr-defined]

    cot = dspy.ChainOfThought("question -> answer")
    cot.predict.demos = [dspy.Example(**d) for d in COT_DEMOS]
    cot.save(str(tmp_path / "cot.json"))
    loaded = from_dspy_state(json.loads((tmp_path / "cot.json").read_text(encoding="utf-8")), dspex.ChainOfThought("question -> answer"))
    assert loaded.predict.demos == COT_DEMOS  # type: ignore[attr-defined]


def test_round_trip_golden_to_dspy_and_back(tmp_path: Path) -> None:
    program = dspex.Predict(Triage)
    program.demos = [dict(d) for d in TRIAGE_DEMOS]
    golden = _golden(tmp_path, program, "triage")
    theirs = dspy.Predict("message -> team")
    theirs.load(str(_save_json(tmp_path, to_dspy_state(golden, dspex.Predict(Triage)))))
    theirs.save(str(tmp_path / "again.json"))

    back = from_dspy_state(json.loads((tmp_path / "again.json").read_text(encoding="utf-8")), dspex.Predict(Triage))
    assert back.demos == TRIAGE_DEMOS  # type: ignore[attr-defined]
    assert golden_record(back, name="triage")["predictors"] == golden.data["predictors"]
