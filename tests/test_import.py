"""``python -m pytest_dspex import SAVED --test NODE``: a DSPy save to a gated golden in one step (issue 25).

The save is DSPy 3.4.1's ``program.save()`` layout as DSPy writes it (tests/interop makes real ones
with DSPy itself); here it is written by hand so the main test run needs no DSPy.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from .test_plugin import TRIAGE_PROGRAM, make_responder, rows

OPTIMIZED = "OPTIMIZED: answer with the team's name only."

TEST_FILE = (
    TRIAGE_PROGRAM
    + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
def test_triage(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

def test_other():
    pass
'''
)


def dspy_save(*, field: str = "message") -> dict[str, Any]:
    """A flat Predict as DSPy saves it after BootstrapFewShot and an instruction optimizer."""
    return {
        "traces": [], "train": [], "lm": None,
        "demos": [
            {"augmented": True, field: "I was charged twice, case 101", "team": "billing"},
            {"augmented": True, field: "the app crashes, case 102", "team": "technical"},
            {"id": "ex-103", "source": "tickets-2025", field: "refund my invoice, case 103", "team": "billing"},
            {"id": "ex-104", "source": "tickets-2025", field: "the app crashes, case 104", "team": "technical"},
        ],
        "signature": {
            "instructions": OPTIMIZED,
            "fields": [{"prefix": "Message:", "description": "${message}"}, {"prefix": "Team:", "description": "${team}"}],
        },
        "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}},
    }  # fmt: skip


@pytest.fixture
def user_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-CANARY-import")
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100, ids=True), "data/dev": rows(10, ids=True)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_triage=TEST_FILE)
    (pytester.path / "optimized.json").write_text(json.dumps(dspy_save()), encoding="utf-8")
    return pytester


def lm_args(server: Any) -> list[str]:
    return [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0"]


def run_import(pytester: pytest.Pytester, server: Any, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_dspex", "import", *args, "--", *lm_args(server), timeout=120)


def golden(pytester: pytest.Pytester) -> dict[str, Any]:
    return dict(json.loads((pytester.path / "__dspex__/test_triage/triage.json").read_text(encoding="utf-8")))


def test_a_dspy_save_becomes_a_gated_golden_in_one_step(user_project, server_factory):
    server = server_factory(make_responder(wrong={3}))  # needs demos; case 3 of the gate set is always wrong
    result = run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([
        "*imported optimized.json as *__dspex__/test_triage/triage.json (program 'triage'; demos self: 4)*",
        f"*self: instructions from the save: {OPTIMIZED!r}*",
        "*baseline on the gate's dataset: 0.900 over 10 examples x 2 draws; later runs are paired with it*",
    ])  # fmt: skip
    data = golden(user_project)
    entry = data["predictors"]["self"]
    assert [d["bootstrapped"] for d in entry["demos"]] == [True, True, False, False]
    assert entry["demos"][2]["metadata"] == {"id": "ex-103", "source": "tickets-2025"}
    assert entry["overrides"] == {"instructions": OPTIMIZED}
    assert entry["signature"]["instructions"] == "Route a customer message to the team that should handle it."
    assert OPTIMIZED in data["prompts"]["self"][0]["content"]
    assert data["optimizer"] == {"name": "dspy-import", "source": "optimized.json", "dspy": "3.4.1"}
    assert data["selection"]["set"] == "imported"
    baseline = data["baseline"]
    assert (baseline["n"], baseline["score"], baseline["how"]) == (10, 0.9, "rebaseline")
    assert baseline["examples"]["ex-3"] == [0.0, 0.0] and baseline["examples"]["ex-1"] == [1.0, 1.0]
    assert "sk-CANARY" not in json.dumps(data)

    # a later run is gated on the imported program and paired with that baseline; so is a per-example one
    for mode in (["-p", "no:xdist"], ["-n", "2"]):
        again = user_project.runpytest_subprocess(*lm_args(server), *mode, "-p", "no:cacheprovider")
        assert again.ret == 0, again.stdout.str()
        again.stdout.fnmatch_lines(["*triage*vs golden*10 shared examples*"])
        assert "no golden" not in again.stdout.str()


def test_pytest_arguments_that_turn_xdist_off_are_taken_as_they_are(user_project, server_factory):
    """Trial 9 (T9-5): ``-- -p no:xdist`` met the ``-n 0`` import adds: "unrecognized arguments: -n 0",
    said as "pytest could not collect it"."""
    server = server_factory(make_responder())
    result = user_project.run(sys.executable, "-m", "pytest_dspex", "import", "optimized.json", "--test",
                              "test_triage.py::test_triage", "--", *lm_args(server), "-p", "no:xdist", timeout=120)  # fmt: skip
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*imported optimized.json as *__dspex__/test_triage/triage.json*"])


def test_an_existing_golden_is_replaced_only_with_force(user_project, server_factory):
    server = server_factory(make_responder())
    assert run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage").ret == 0
    before = golden(user_project)
    second = run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage")
    assert second.ret == 2
    second.stderr.fnmatch_lines(["*'triage' already has a golden file; --force replaces it*"])
    # the golden's path relative to the rootdir, as every path pytest-dspex shows (trial finding 9)
    assert "__dspex__/test_triage/triage.json: 'triage' already has a golden file" in second.stderr.str()
    assert str(user_project.path) not in second.stderr.str()
    assert golden(user_project) == before
    assert run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage", "--force").ret == 0


def test_a_test_that_does_not_exist_is_said_without_pytests_unrelated_warnings(user_project, server_factory):
    # trial finding 7: the error was followed by a warnings summary ("Module already imported so cannot
    # be rewritten") about this process, nothing to do with the user's mistake
    result = run_import(user_project, server_factory(make_responder()), "optimized.json", "--test", "test_triage.py::test_nope")
    assert result.ret == 2
    out = result.stdout.str() + result.stderr.str()
    assert "--test test_triage.py::test_nope: pytest could not collect it (exit code 4)" in out
    assert "warnings summary" not in out and "PytestAssertRewriteWarning" not in out
    assert not (user_project.path / "__dspex__").exists()


def test_a_save_for_another_signature_writes_nothing(user_project, server_factory):
    (user_project.path / "other.json").write_text(json.dumps(dspy_save(field="text")), encoding="utf-8")
    result = run_import(user_project, server_factory(make_responder()), "other.json", "--test", "test_triage.py::test_triage")
    assert result.ret == 2
    result.stderr.fnmatch_lines(["*other.json: predictor 'self', demo 0 lacks message: it has augmented, team, text*"])
    assert not (user_project.path / "__dspex__").exists()


def test_a_baseline_lost_to_lm_errors_leaves_the_previous_golden(user_project, server_factory):
    server = server_factory(make_responder())
    assert run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage").ret == 0
    before = golden(user_project)
    server.responder = lambda body: (_ for _ in ()).throw(RuntimeError("down"))  # every request a 500
    result = run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage", "--force")
    assert result.ret == 2
    result.stdout.fnmatch_lines([  # the LM errors by kind (trial8 T8-6), not only their share
        "*re-baseline stopped at its error budget: LM errors: 10 of 10 gate answers could not be answered (lm_http: 10)*"
        "HTTP 500 Internal Server Error*the golden is unchanged*"
    ])  # fmt: skip
    result.stderr.fnmatch_lines(["*no baseline was measured for 'triage'*the previous golden is kept*"])
    assert golden(user_project) == before


def test_a_test_without_a_program_is_a_clear_error(user_project, server_factory):
    result = run_import(user_project, server_factory(make_responder()), "optimized.json", "--test", "test_triage.py::test_other")
    assert result.ret == 2
    result.stderr.fnmatch_lines(["*--test test_triage.py::test_other: no collected test has @pytest.mark.dspex_program*"])


def test_a_later_compile_must_beat_the_imported_program_on_the_same_gate_set(user_project, server_factory):
    # the model answers case 3 right only under the imported (optimized) instructions
    better, worse = make_responder(), make_responder(wrong={3})
    server = server_factory(lambda body: (better if OPTIMIZED in body["messages"][0]["content"] else worse)(body))
    assert run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage").ret == 0
    assert golden(user_project)["baseline"]["score"] == 1.0
    compiled = user_project.runpytest_subprocess(*lm_args(server), "-p", "no:xdist", "-p", "no:cacheprovider", "--dspex-compile")
    assert compiled.ret == 0, compiled.stdout.str()
    compiled.stdout.fnmatch_lines(["*kept: the golden's baseline 1.000 is higher than this run's 0.900 on the same signature and gate set*"])
    assert golden(user_project)["predictors"]["self"]["overrides"] == {"instructions": OPTIMIZED}


def test_the_import_says_what_it_baselined_and_a_later_edit_diffs_against_what_the_golden_sent(user_project, server_factory):
    # trial F9: the import's baseline run said "re-baselined (same instructions; demos kept)" while the
    # golden now runs the save's instructions and demos; a docstring edit afterwards was diffed against the
    # code's old docstring, not against the instructions the golden actually sent (the save's)
    server = server_factory(make_responder())
    result = run_import(user_project, server, "optimized.json", "--test", "test_triage.py::test_triage", "--force")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    out = result.stdout.str()
    assert "same instructions" not in out and "demos kept" not in out
    result.stdout.fnmatch_lines(["*baseline measured for the program imported from optimized.json (its instructions and 4 demos)*"])
    test_file = user_project.path / "test_triage.py"
    edited = "Route the customer message to one team."
    test_file.write_text(test_file.read_text().replace("Route a customer message to the team that should handle it.", edited))
    for mode in (["-p", "no:xdist"], ["-n", "2"]):
        again = user_project.runpytest_subprocess(*lm_args(server), *mode, "-p", "no:cacheprovider")
        diff = again.stdout.str()
        assert f"-{OPTIMIZED}" in diff and f"+{edited}" in diff, diff
        assert "-Route a customer message to the team that should handle it." not in diff
