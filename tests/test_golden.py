from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import pytest_dspex as dspex
from pytest_dspex.golden import GoldenStore, from_dspy_state, golden_record, to_dspy_state

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
        ('{"schema_version": 1, "predictors": []}', r"'predictors' must map"),
        ('{"schema_version": 1, "predictors": {"self": {"demos": ["x"]}}}', r"demo 0 is malformed"),
        ('{"schema_version": 1, "predictors": {"self": {"demos": []}}, "scores": {"validation": {"score": "high"}}}', r"must hold a number"),
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
    with pytest.raises(dspex.GoldenFileError, match=r"p.json: predictor 'self' demo 0 has field\(s\) message, team not in the signature"):
        GoldenStore(tmp_path).read(path).apply(dspex.Predict("question -> answer"))
    with pytest.raises(dspex.GoldenFileError, match="golden has predictors"):
        GoldenStore(tmp_path).read(path).apply(cot_program())


def test_interrupted_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "p.json"
    GoldenStore(tmp_path).write(path, golden_record(compiled_program(), name="p", validation=(0.5, 2)))
    before = path.read_text()
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import pytest_dspex._atomic as a
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
        from pytest_dspex.golden import GoldenStore, golden_record
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
