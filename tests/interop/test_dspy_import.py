"""Real DSPy 3.4.1 saves import whole and go back to DSPy unchanged (issue 25).

The saves are made by DSPy itself against the repo's fake server (``dspy_saves``): BootstrapFewShot at
its defaults (4 bootstrapped + labeled demos carrying the dataset's extra columns), LabeledFewShot,
and a program whose instructions were rewritten the way MIPROv2/COPRO do it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import dspy
except ImportError:
    if os.environ.get("DSPEX_REQUIRE_DSPY"):
        raise
    pytest.skip("DSPy is not installed (tox -e dspy runs the interop tests)", allow_module_level=True)

from pytest_dspex.golden.dspy_state import from_dspy_state, to_dspy_state
from pytest_dspex.golden.record import golden_record
from pytest_dspex.golden.store import GoldenStore

from .dspy_saves import INSTRUCTIONS, OPTIMIZED, dspy_programs, dspy_saves, make_dspex_programs

KINDS = ["predict", "cot", "module"]
SAVES = [f"{how}_{kind}" for how in ("bfs", "lfs", "opt") for kind in KINDS]


@pytest.fixture(scope="module")
def saves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return dspy_saves(tmp_path_factory.mktemp("dspy_saves"))


def _state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _predictors(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"self": state} if "demos" in state else {k: v for k, v in state.items() if k != "metadata"}


def _golden(tmp_path: Path, program: Any, name: str) -> Any:
    store = GoldenStore(tmp_path / "__dspex__")
    path = store.path_for("test_mod", name)
    store.write(path, golden_record(program, name=name, validation=(1.0, 1)))
    return store.read(path)


@pytest.mark.parametrize("save", SAVES)
def test_dspy_to_golden_to_dspy_keeps_demos_instructions_and_field_descriptions(
    saves: dict[str, Path], tmp_path: Path, save: str
) -> None:
    kind = save.split("_", 1)[1]
    original = _state(saves[save])
    imported = from_dspy_state(original, make_dspex_programs()[kind], source=saves[save].name)
    golden = _golden(tmp_path, imported, kind)

    back = tmp_path / "back.json"
    back.write_text(json.dumps(to_dspy_state(golden, make_dspex_programs()[kind])), encoding="utf-8")
    theirs = dspy_programs()[kind]
    theirs.load(str(back))  # DSPy's own loader
    theirs.save(str(tmp_path / "again.json"))
    again = _predictors(_state(tmp_path / "again.json"))

    for path, before in _predictors(original).items():
        after = again[path]
        assert after["demos"] == before["demos"], path
        assert after["signature"]["instructions"] == before["signature"]["instructions"], path
        assert after["signature"]["fields"] == before["signature"]["fields"], path


@pytest.mark.parametrize("kind", KINDS)
def test_labeled_demos_keep_their_extra_columns_as_metadata(saves: dict[str, Path], tmp_path: Path, kind: str) -> None:
    state = _state(saves[f"bfs_{kind}"])
    golden = _golden(tmp_path, from_dspy_state(state, make_dspex_programs()[kind]), kind)
    for path, entry in golden.data["predictors"].items():
        demos = entry["demos"]
        assert len(demos) == 16  # BootstrapFewShot's defaults: 4 bootstrapped + 12 labeled
        assert [d["bootstrapped"] for d in demos] == [True] * 4 + [False] * 12
        labeled = demos[4]
        assert labeled["metadata"] == {"id": labeled["metadata"]["id"], "source": "generated"}
        assert set(labeled["inputs"]) == {"question"}
        assert "metadata" not in demos[0]
        prompt = json.dumps(golden.data["prompts"][path])
        assert labeled["metadata"]["id"] not in prompt and "generated" not in prompt  # never a prompt field


@pytest.mark.parametrize("kind", KINDS)
def test_optimized_instructions_show_in_the_golden_and_the_prompt_command(
    saves: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    golden = _golden(tmp_path, from_dspy_state(_state(saves[f"opt_{kind}"]), make_dspex_programs()[kind]), kind)
    for path, entry in golden.data["predictors"].items():
        assert entry["overrides"]["instructions"] == OPTIMIZED
        last = [f["name"] for f in entry["signature"]["fields"]][-1]
        assert entry["overrides"]["fields"][last] == {"prefix": "Final Answer:"}  # COPRO's new prefix
        assert entry["signature"]["instructions"] == INSTRUCTIONS  # the code's, as fingerprinted
        assert golden.data["signature_fingerprint"][path]["instructions"] == INSTRUCTIONS
        assert OPTIMIZED in golden.data["prompts"][path][0]["content"]
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "prompt", str(golden.path)], capture_output=True, text=True, check=True
    ).stdout
    assert OPTIMIZED in shown and INSTRUCTIONS not in shown and "Final Answer:" in shown


def test_the_imported_program_sends_the_optimized_instructions_and_dspy_field_wording(saves: dict[str, Path]) -> None:
    program = from_dspy_state(_state(saves["opt_cot"]), make_dspex_programs()["cot"])
    predictor = program.predictors()[0]
    assert predictor.signature.instructions == OPTIMIZED
    assert predictor.declared_signature.instructions == INSTRUCTIONS
    assert predictor.signature.fields["reasoning"].desc == ""  # DSPy's "${reasoning}": no description
    assert predictor.signature.fields["answer"].label == "Final Answer"


def test_a_dspy_save_for_another_signature_is_a_clear_error(saves: dict[str, Path]) -> None:
    import pytest_dspex as dspex

    with pytest.raises(dspex.GoldenFileError, match=r"bfs_predict.json: predictor 'self', demo 0 lacks text"):
        from_dspy_state(_state(saves["bfs_predict"]), dspex.Predict("text -> answer"), source="bfs_predict.json")


def test_dspy_is_the_pinned_version() -> None:
    assert dspy.__version__ == "3.4.1"


USER_TEST = '''
import pytest
import pytest_dspex as dspex


class QA(dspex.Signature):
    """Answer the arithmetic question."""

    question: str = dspex.InputField(desc="a sum to work out")
    answer: str = dspex.OutputField(desc="digits only")


qa = dspex.Predict(QA, adapter="chat")


def exact(example, prediction, trace=None):
    return example.answer == prediction.answer


@pytest.mark.dspex_program(qa, name="qa")
@pytest.mark.dspex_metric(exact, threshold=0.5)
def test_qa(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
'''


def test_the_import_command_turns_a_real_dspy_save_into_a_gated_golden_that_goes_back_to_dspy_unchanged(
    saves: dict[str, Path], pytester: pytest.Pytester, tmp_path: Path
) -> None:
    from pytest_dspex.testing.fake_server import FakeLMServer

    from .dspy_saves import sum_responder

    pytester.makepyfile(test_qa=USER_TEST)
    dev = "\n".join(json.dumps({"id": f"d-{i}", "question": f"What is {i} + 7?", "answer": str(i + 7)}) for i in range(12))
    pytester.makefile(".jsonl", **{"data/dev": dev + "\n"})
    original = _state(saves["opt_predict"])
    (pytester.path / "optimized.json").write_text(json.dumps(original), encoding="utf-8")
    with FakeLMServer(sum_responder) as server:
        result = pytester.run(
            sys.executable, "-m", "pytest_dspex", "import", "optimized.json", "--test", "test_qa.py::test_qa", "--",
            f"--dspex-base-url={server.base_url}", "--dspex-model=fake", "--dspex-cache=off", timeout=120,
        )  # fmt: skip
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines(["*baseline on the gate's dataset: 1.000 over 12 examples*"])
        again = pytester.runpytest_subprocess(f"--dspex-base-url={server.base_url}", "--dspex-model=fake", "--dspex-cache=off")
        assert again.ret == 0
    golden = GoldenStore(pytester.path / "__dspex__").read(pytester.path / "__dspex__/test_qa/qa.json")
    assert golden.data["baseline"]["n"] == 12 and golden.data["selection"]["set"] == "imported"
    assert golden.data["predictors"]["self"]["overrides"]["instructions"] == OPTIMIZED

    # and back: the golden, exported, is DSPy's own save again (demos, instructions, field wording)
    back = tmp_path / "back.json"
    back.write_text(json.dumps(to_dspy_state(golden, make_dspex_programs()["predict"])), encoding="utf-8")
    theirs = dspy_programs()["predict"]
    theirs.load(str(back))
    theirs.save(str(tmp_path / "again.json"))
    again_state = _state(tmp_path / "again.json")
    assert again_state["demos"] == original["demos"]
    assert again_state["signature"] == original["signature"]
