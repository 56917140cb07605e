from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import pytest_dspex as dspex
from pytest_dspex.errors import GoldenStaleError
from pytest_dspex.golden.dspy_state import from_dspy_state, to_dspy_state
from pytest_dspex.golden.record import golden_record
from pytest_dspex.golden.schema import SCHEMA_VERSION
from pytest_dspex.golden.store import GoldenStore

from .conftest import Triage


def compiled_program() -> dspex.Predict:
    p = dspex.Predict(Triage)
    p.demos = [
        {"message": "refund", "team": "billing", "augmented": True},
        {"message": "crash", "team": "technical"},
    ]
    return p


def cot_program() -> dspex.ChainOfThought:
    p = dspex.ChainOfThought("question -> answer")
    p.predict.demos = [{"question": "2+2?", "reasoning": "two and two", "answer": "4", "augmented": True}]
    return p


def test_round_trip_is_stable_sorted_and_ends_with_a_newline(tmp_path):
    store = GoldenStore(tmp_path / "__dspex__")
    path = store.path_for("test_triage", "triage")
    rec = golden_record(compiled_program(), name="triage", metric="team_matches", validation=(0.8, 40), train=(0.9, 30),
                        model={"name": "m", "api_key": "sk-secret"})
    assert store.write(path, rec) == "created"
    text = path.read_text()
    assert text.endswith("}\n") and "sk-secret" not in text
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["predictors"]["self"]["demos"][0] == {"inputs": {"message": "refund"}, "outputs": {"team": "billing"}, "bootstrapped": True}
    loaded = store.read(path).apply(dspex.Predict(Triage))
    assert loaded.demos == compiled_program().demos


def test_reasoning_is_kept_separately_for_chain_of_thought(tmp_path):
    store = GoldenStore(tmp_path)
    path = tmp_path / "qa.json"
    store.write(path, golden_record(cot_program(), name="qa"))
    demo = json.loads(path.read_text())["predictors"]["predict"]["demos"][0]
    assert demo["reasoning"] == "two and two" and demo["outputs"] == {"answer": "4"}
    assert store.read(path).apply(dspex.ChainOfThought("question -> answer")).predict.demos == cot_program().predict.demos


def test_keep_better_unless_forced(tmp_path):
    store = GoldenStore(tmp_path)
    path = tmp_path / "p.json"
    store.write(path, golden_record(compiled_program(), name="p", validation=(0.9, 10)))
    assert store.write(path, golden_record(dspex.Predict(Triage), name="p", validation=(0.5, 10))) == "kept"
    assert store.read(path).validation_score == 0.9
    assert store.write(path, golden_record(dspex.Predict(Triage), name="p", validation=(0.5, 10)), force=True) == "updated"
    assert store.read(path).validation_score == 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"corrupted golden file \(not valid JSON"),
        ("[]", r"corrupted golden file \(expected a JSON object"),
        ('{"schema_version": 99, "predictors": {}}', r"newer pytest-dspex \(schema 99"),
        ('{"predictors": {}}', r"no integer schema_version"),
        ('{"schema_version": 1, "predictors": []}', r"\(predictors: Input should be a valid dictionary"),
        ('{"schema_version": 1, "predictors": {"self": {"demos": ["x"]}}}', r"\(predictors.self.demos.0: Input should be"),
        ('{"schema_version": 1, "predictors": {"self": {"demos": []}}, "scores": {"validation": {"score": "high"}}}',
         r"scores.validation.score: Input should be a valid number"),
        ('{"schema_version": 2, "predictors": {}, "scores": {"validation": {"score": 1, "examples": {"a": "x"}}}}',
         r"scores.validation.examples.a: Input should be a valid number"),
    ],
)
def test_bad_goldens_are_clear_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(dspex.GoldenFileError, match=message) as info:
        GoldenStore(tmp_path).read(path)
    assert str(path) in str(info.value)
    assert path.read_text() == content  # never silently regenerated


def test_demo_fields_that_do_not_match_the_signature(tmp_path):
    path = tmp_path / "p.json"
    GoldenStore(tmp_path).write(path, golden_record(compiled_program(), name="p"))
    with pytest.raises(GoldenStaleError, match=r"p.json: golden is stale.*input field 'message' renamed to 'question'"):
        GoldenStore(tmp_path).read(path).apply(dspex.Predict("question -> answer"))
    with pytest.raises(GoldenStaleError, match="golden has predictors"):
        GoldenStore(tmp_path).read(path).apply(cot_program())


def test_interrupted_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "p.json"
    GoldenStore(tmp_path).write(path, golden_record(compiled_program(), name="p", validation=(0.5, 2)))
    before = path.read_text()
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import pytest_dspex._support.atomic as a
        real_fsync = os.fsync
        def slow_fsync(fd):
            print("writing", flush=True)
            time.sleep(30)
        os.fsync = slow_fsync
        a.atomic_write_json(__import__("pathlib").Path({str(path)!r}), {{"schema_version": 1, "huge": "x" * 100000}})
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert path.read_text() == before
    GoldenStore(tmp_path).read(path)  # still valid


def test_dspy_layout_round_trip(tmp_path):
    program = cot_program()
    gf = GoldenStore(tmp_path)
    path = tmp_path / "qa.json"
    gf.write(path, golden_record(program, name="qa"))
    state = to_dspy_state(gf.read(path), dspex.ChainOfThought("question -> answer"))
    assert set(state) == {"predict", "metadata"}
    demo = state["predict"]["demos"][0]
    assert demo == {"question": "2+2?", "reasoning": "two and two", "answer": "4", "augmented": True}
    assert state["predict"]["signature"]["fields"][1]["prefix"] == "Reasoning:"
    # a file as DSPy writes it: bare Predict is flat; labeled demos carry no 'augmented'
    dspy_saved = {
        "demos": [{"augmented": True, "message": "refund", "team": "billing"}, {"message": "crash", "team": "technical"}],
        "signature": {"instructions": "x", "fields": [{"prefix": "Message:", "description": "${message}"}]},
        "lm": None, "traces": [], "train": [],
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}},
    }
    loaded = from_dspy_state(dspy_saved, dspex.Predict(Triage))
    assert loaded.demos == compiled_program().demos


def test_concurrent_writers_leave_one_valid_file(tmp_path):
    path = tmp_path / "p.json"
    script = textwrap.dedent(
        f"""
        import sys
        import pytest_dspex as d
        from pytest_dspex.golden.record import golden_record
        from pytest_dspex.golden.store import GoldenStore
        p = d.Predict("message -> team")
        p.demos = [{{"message": "m" * 5000, "team": sys.argv[1]}}]
        for _ in range(20):
            GoldenStore({str(tmp_path)!r}).write(__import__("pathlib").Path({str(path)!r}), golden_record(p, name="p", validation=(0.5, 1)), force=True)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)]) for i in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    GoldenStore(tmp_path).read(path)
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


# -- schema 2 -------------------------------------------------------------------------------------
def _records(n: int, right: int) -> list[dict]:
    return [{"key": f"ex-{i}", "score": 1.0 if i < right else 0.0} for i in range(n)]


def test_v2_records_fingerprint_prompts_and_per_example_outcomes(tmp_path):
    store = GoldenStore(tmp_path)
    path = tmp_path / "triage.json"
    rec = golden_record(compiled_program(), name="triage", metric="team_matches", records=_records(10, 8),
                        datasets={"validation": "sha256:v"}, adapter="compact")
    store.write(path, rec)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["scores"]["validation"] == {"score": 0.8, "n": 10, "examples": {f"ex-{i}": (1.0 if i < 8 else 0.0) for i in range(10)}}
    fp = data["signature_fingerprint"]["self"]
    assert fp["hash"].startswith("sha256:") and fp["instructions"] == Triage.instructions
    assert fp["fields"] == [{"name": "message", "role": "input", "type": "str"}, {"name": "team", "role": "output", "type": "str"}]
    prompt = data["prompts"]["self"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    # the demos and the input as a placeholder, as the compact adapter sends them
    assert prompt[1]["content"].endswith("Message: {message}\nTeam:")
    assert "Message: refund\nTeam: billing" in prompt[1]["content"]
    golden = store.read(path)
    assert golden.validation_examples == {f"ex-{i}": (1.0 if i < 8 else 0.0) for i in range(10)}
    assert golden.apply(dspex.Predict(Triage)).demos == compiled_program().demos
    # the chat adapter renders its own layout with the same placeholder
    chat = golden_record(compiled_program(), name="triage", adapter="chat")["prompts"]["self"]
    assert "[[ ## message ## ]]\n{message}" in chat[-1]["content"]


def test_the_paired_gate_compares_a_run_with_the_golden_outcomes(tmp_path):
    store = GoldenStore(tmp_path)
    path = tmp_path / "p.json"
    store.write(path, golden_record(compiled_program(), name="p", records=_records(300, 240)))
    golden = store.read(path)
    run = {r["key"]: r["score"] for r in _records(300, 240)}
    for i in range(9):
        run[f"ex-{i}"] = 0.0
    result = golden.compare(run)
    assert result is not None and result.verdict == "regressed" and len(result.regressions) == 9
    assert golden.compare(_records(300, 240)).verdict == "no change"  # records work as well as a mapping


V1_FILE = {
    "schema_version": 1,
    "program": "triage",
    "predictors": {"self": {
        "signature": {"instructions": Triage.instructions, "fields": [
            {"name": "message", "role": "input", "type": "str", "desc": "", "prefix": "Message:"},
            {"name": "team", "role": "output", "type": "str", "desc": "", "prefix": "Team:"}]},
        "demos": [{"inputs": {"message": "refund"}, "outputs": {"team": "billing"}, "bootstrapped": True}]}},
    "scores": {"validation": {"score": 0.8, "n": 40}},
    "metric": "team_matches", "model": {}, "optimizer": {}, "datasets": {},
    "plugin_version": "0.1.0", "created_at": "2026-01-01T00:00:00+00:00",
}


def test_v1_files_still_load_and_have_no_paired_outcomes(tmp_path):
    path = tmp_path / "triage.json"
    path.write_text(json.dumps(V1_FILE))
    golden = GoldenStore(tmp_path).read(path)
    assert golden.schema_version == 1 and golden.validation_score == 0.8
    assert golden.apply(dspex.Predict(Triage)).demos == [{"message": "refund", "team": "billing", "augmented": True}]
    assert golden.validation_examples is None and golden.compare({"a": 1.0}) is None  # tolerance gate instead


class Renamed(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    result: str = dspex.OutputField()


class Retyped(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    team: int = dspex.OutputField()


class Reworded(dspex.Signature):
    """Pick the team for this message."""

    message: str = dspex.InputField()
    team: str = dspex.OutputField()


class Extended(dspex.Signature):
    """Route a customer message to the team that should handle it."""

    message: str = dspex.InputField()
    channel: str = dspex.InputField()
    team: str = dspex.OutputField()


@pytest.mark.parametrize("schema", [1, 2])
@pytest.mark.parametrize(
    ("signature", "change"),
    [
        (Renamed, "output field 'team' renamed to 'result'"),
        (Retyped, "output field 'team' type changed from str to int"),
        (Reworded, "instructions changed"),
        (Extended, "input field 'channel' (str) added"),
    ],
)
def test_a_stale_golden_is_an_error_saying_what_changed(tmp_path, schema, signature, change):
    path = tmp_path / "triage.json"
    if schema == 1:
        path.write_text(json.dumps(V1_FILE))
    else:
        GoldenStore(tmp_path).write(path, golden_record(compiled_program(), name="triage"))
    with pytest.raises(GoldenStaleError) as info:
        GoldenStore(tmp_path).read(path).apply(dspex.Predict(signature))
    message = str(info.value)
    assert str(path) in message and "golden is stale" in message
    assert change in message and info.value.changes == [change]
    assert "run pytest --dspex-compile=triage to recompile" in message
    assert isinstance(info.value, dspex.GoldenFileError)


def test_a_v1_file_without_a_recorded_signature_is_checked_by_its_demo_fields(tmp_path):
    path = tmp_path / "p.json"
    data = {**V1_FILE, "predictors": {"self": {"demos": V1_FILE["predictors"]["self"]["demos"]}}}
    path.write_text(json.dumps(data))
    golden = GoldenStore(tmp_path).read(path)
    assert golden.apply(dspex.Predict(Triage)).demos[0]["team"] == "billing"
    with pytest.raises(GoldenStaleError, match=r"demo 0 has field\(s\) team not in the signature \(message -> result\)"):
        golden.apply(dspex.Predict(Renamed))


def test_files_are_written_0644(tmp_path):
    path = tmp_path / "sub" / "p.json"
    GoldenStore(tmp_path).write(path, golden_record(compiled_program(), name="p"))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"corrupted golden file \(not valid JSON.* not replaced.*--dspex-force"),
        ('{"schema_version": 4, "predictors": {}}', r"newer pytest-dspex \(schema 4.* not replaced"),
    ],
)
def test_compile_never_replaces_a_corrupted_or_newer_golden_unless_forced(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    store = GoldenStore(tmp_path)
    with pytest.raises(dspex.GoldenFileError, match=message) as info:
        store.write(path, golden_record(compiled_program(), name="p", validation=(0.9, 10)))
    assert str(path) in str(info.value)
    assert path.read_text() == content
    result = store.write(path, golden_record(compiled_program(), name="p", validation=(0.9, 10)), force=True)
    assert result == "updated" and "forced" in result.reason
    assert store.read(path).validation_score == 0.9


def test_compile_refuses_to_write_a_run_over_the_error_budget(tmp_path):
    path = tmp_path / "p.json"
    store = GoldenStore(tmp_path)
    rec = golden_record(compiled_program(), name="p", validation=(0.0, 40))
    with pytest.raises(dspex.GoldenFileError, match=r"not written: .*over its error budget \(100% of the validation "
                       r"examples failed with LM errors, the budget is 5%"):
        store.write(path, rec, error_rate=1.0, max_error_rate=0.05, force=True)
    with pytest.raises(dspex.GoldenFileError, match="over its error budget"):
        store.write(path, rec, over_error_budget=True)
    assert not path.exists()
    assert store.write(path, rec, error_rate=0.02, max_error_rate=0.05) == "created"


def test_keep_better_compares_like_with_like_and_says_why(tmp_path):
    store = GoldenStore(tmp_path)
    path = tmp_path / "p.json"
    good = golden_record(compiled_program(), name="p", validation=(0.9, 10), datasets={"validation": "sha256:a"})
    first = store.write(path, good)
    assert first == "created" and first.reason
    assert store.write(path, good) == "unchanged"
    worse = golden_record(dspex.Predict(Triage), name="p", validation=(0.5, 10), datasets={"validation": "sha256:a"})
    kept = store.write(path, worse)
    assert kept == "kept" and kept.outcome == "kept"
    assert "0.900 is higher than this run's 0.500" in kept.reason and "--dspex-force" in kept.reason
    # another validation set: the scores say nothing about each other, the new run replaces the golden
    other_set = golden_record(dspex.Predict(Triage), name="p", validation=(0.5, 10), datasets={"validation": "sha256:b"})
    replaced = store.write(path, other_set)
    assert replaced == "updated" and "validation set changed" in replaced.reason
    assert store.read(path).validation_score == 0.5
    # another signature: same
    renamed = dspex.Predict(Renamed)
    store.write(path, good)  # back to 0.9 (0.9 >= 0.5)
    changed = store.write(path, golden_record(renamed, name="p", validation=(0.1, 10), datasets={"validation": "sha256:a"}))
    assert changed == "updated" and "signature changed" in changed.reason
    better = store.write(path, golden_record(renamed, name="p", validation=(0.3, 10), datasets={"validation": "sha256:a"}))
    assert better == "updated" and "0.300 is higher than the golden's 0.100" in better.reason


def test_dspy_metadata_holds_only_keys_dspy_load_knows(tmp_path):
    # DSPy 3.4.1 BaseModule.load: for key in metadata["dependency_versions"]: get_dependency_versions()[key]
    # -> only "python", "dspy", "cloudpickle" may appear there; anything else is a KeyError in DSPy.
    path = tmp_path / "qa.json"
    GoldenStore(tmp_path).write(path, golden_record(cot_program(), name="qa"))
    state = to_dspy_state(GoldenStore(tmp_path).read(path), dspex.ChainOfThought("question -> answer"))
    assert set(state["metadata"]["dependency_versions"]) <= {"python", "dspy", "cloudpickle"}
    assert state["metadata"]["pytest_dspex"]["version"] == dspex.__version__


def test_a_rerun_that_differs_only_in_the_candidates_race_scores_leaves_the_golden_alone(tmp_path):
    """llama.cpp's numerics move a raced candidate's score by an example between runs: no diff for that."""
    store = GoldenStore(tmp_path)
    path = tmp_path / "p.json"

    def record(labeled_score: float, chosen: str = "shuffled-1") -> dict:
        rec = golden_record(compiled_program(), name="p", validation=(0.9, 10), datasets={"validation": "sha256:a"})
        rec["optimizer"] = {"name": "BootstrapFewShotWithRandomSearch", "chosen": chosen, "candidates": [
            {"name": "labeled", "score": labeled_score, "n": 10, "dropped_at": 10}, {"name": chosen, "score": 0.9, "n": 10}]}
        return rec

    assert store.write(path, record(0.8)) == "created"
    before = path.read_bytes()
    assert store.write(path, record(0.85)) == "unchanged"
    assert path.read_bytes() == before
    # another choice at the same score: a tie keeps the committed file (trial2 F2), a better score replaces it
    tie = store.write(path, record(0.85, chosen="bootstrap"))
    assert tie == "kept" and "does not improve on the golden's 0.900" in tie.reason and path.read_bytes() == before


def test_a_recompile_that_chose_the_same_program_leaves_the_golden_alone(tmp_path):
    """Trial: every `tox -e example` rewrote the goldens for timestamps and calibration offsets that
    llama.cpp moves in the 3rd decimal; the same demos, instructions and score are no change."""
    store = GoldenStore(tmp_path)
    path = tmp_path / "p.json"

    def record(offset: float, score: float = 0.9) -> dict:
        rec = golden_record(compiled_program(), name="p", validation=(score, 10), datasets={"validation": "sha256:a"})
        rec["created_at"] = f"2026-01-0{1 + int(offset * 1000) % 8}T00:00:00Z"
        for predictor in rec["predictors"].values():
            predictor["calibration"] = {"billing": -0.398 + offset, "technical": 0.487 - offset}
        return rec

    assert store.write(path, record(0.0)) == "created"
    before = path.read_bytes()
    same = store.write(path, record(0.002))
    assert same == "unchanged" and "same demos and instructions" in same.reason
    assert path.read_bytes() == before
    assert store.write(path, record(0.05)) == "kept"  # calibration that moved: another program, but only a tie (F2)
    assert path.read_bytes() == before
    assert store.write(path, record(0.05, score=0.95)) == "updated"  # a better score replaces as before


def test_reworded_instructions_and_demo_metadata_survive_the_golden_and_show_in_its_prompt(tmp_path):
    # issue 25: what a DSPy optimizer leaves in a save (rewritten instructions, a new output prefix,
    # labeled demos with the dataset's other columns) is kept, shown, and applied
    program = dspex.Predict(Triage)
    program.demos = [{"id": "t-7", "source": "tickets", "message": "refund", "team": "billing"}]
    program.set_wording("Reply with the team only.", {"team": {"prefix": "Final Team:"}})
    store = GoldenStore(tmp_path / "__dspex__")
    path = store.path_for("test_triage", "triage")
    store.write(path, golden_record(program, name="triage", validation=(1.0, 1)))
    data = json.loads(path.read_text())
    entry = data["predictors"]["self"]
    assert entry["overrides"] == {"instructions": "Reply with the team only.", "fields": {"team": {"prefix": "Final Team:"}}}
    assert entry["signature"]["instructions"] == Triage.instructions == data["signature_fingerprint"]["self"]["instructions"]
    assert entry["demos"][0]["metadata"] == {"id": "t-7", "source": "tickets"}
    assert "Reply with the team only." in data["prompts"]["self"][0]["content"]
    assert "t-7" not in json.dumps(data["prompts"])

    loaded = store.read(path).apply(dspex.Predict(Triage))
    assert loaded.signature.instructions == "Reply with the team only." and loaded.signature.fields["team"].label == "Final Team"
    assert loaded.declared_signature is Triage and loaded.demos == program.demos
    assert golden_record(loaded, name="triage")["predictors"] == data["predictors"]
    shown = subprocess.run(
        [sys.executable, "-m", "pytest_dspex", "prompt", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Reply with the team only." in shown and Triage.instructions not in shown and "Final Team:" in shown

    # without overrides a golden leaves the code's wording: applying it resets a reworded program
    plain = golden_record(dspex.Predict(Triage), name="triage")
    store.write(path, plain, force=True)
    assert store.read(path).apply(loaded).signature is Triage


def test_set_wording_back_to_the_code_leaves_no_override():
    program = dspex.Predict(Triage)
    program.set_wording(Triage.instructions, {"message": {"prefix": "Message:"}})
    assert program.wording_overrides() == {} and program.signature is Triage
    with pytest.raises(dspex.SignatureError, match="has no field 'colour' to reword"):
        program.set_wording(fields={"colour": {"desc": "x"}})
