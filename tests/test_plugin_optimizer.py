"""``--dspex-optimizer NAME`` (ini ``dspex_optimizer``, marker ``optimizer=``): which optimizer
``--dspex-compile`` runs, and what its golden records. Each scenario with ``-n 2`` and ``-p no:xdist``.

The user's project chooses on a valset (cases 200-209), so a request that asks about a training
example (cases 100-109) is a teacher run: that is how "no teacher calls" is counted.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pytest_dspex.optimize.registry import OPTIMIZERS

from .test_plugin import MODES, TRIAGE_PROGRAM, make_responder, rows, run

TEST_FILE = (
    TRIAGE_PROGRAM
    + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl", valset="data/val.jsonl"MARKER)
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_triage(dspex_evaluate):
    result = dspex_evaluate("data/dev.jsonl")
    assert result.n == 10

@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl", valset="data/val.jsonl"MARKER)
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    assert dspex_predict(dspex_example).team
'''
)

GOLDEN = "__dspex__/test_triage/triage.json"
#: every scenario with -n 2 and with -p no:xdist
BOTH_MODES = pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
#: the registry's names, as an unknown name's error lists them (bootstrap, labeled, random-search, ...)
KNOWN = "known: " + ", ".join(sorted(OPTIMIZERS))


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-CANARY-optimizer")
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100), "data/val": rows(10, 200), "data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def write(marker: str = "", source: str = TEST_FILE) -> None:
        pytester.makepyfile(test_triage=source.replace("MARKER", marker))

    write()
    return write


class Asked:
    """A triage server that needs demos, and the case numbers it was asked about (demos aside)."""

    def __init__(self) -> None:
        self.cases: list[int] = []
        self._respond = make_responder()

    def __call__(self, body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        found = re.search(r"case (\d+)", last)
        if found is not None:
            self.cases.append(int(found.group(1)))
        return self._respond(body)

    @property
    def teacher_runs(self) -> int:
        return sum(1 for c in self.cases if 100 <= c < 200)


@pytest.fixture
def asked(server_factory):
    responder = Asked()
    return responder, server_factory(responder)


def golden(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / GOLDEN).read_text())


def demos(record: dict[str, Any]) -> list[dict[str, Any]]:
    return record["predictors"]["self"]["demos"]


@BOTH_MODES
class TestChoosingTheOptimizer:
    def test_labeled_compiles_with_no_teacher_call_and_the_golden_says_so(self, pytester, project, asked, mode):
        responder, server = asked
        result = run(pytester, server, mode, "--dspex-compile", "--dspex-optimizer=labeled", "--dspex-labeled-demos=4")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines([f"*golden created: {GOLDEN} (selection 1.000, n=10*"])
        assert responder.teacher_runs == 0 and responder.cases  # the selection and the baseline asked
        record = golden(pytester)
        assert record["optimizer"]["name"] == "LabeledFewShot" and record["optimizer"]["k"] == 4
        assert [c["name"] for c in record["optimizer"]["candidates"]] == ["labeled"]
        assert record["selection"]["chosen"] == "labeled" and record["selection"]["set"] == "valset"
        assert len(demos(record)) == 4 and not any(d["bootstrapped"] for d in demos(record))
        again = run(pytester, server, mode)  # the golden loads and gates as any other
        assert again.ret == 0, again.stdout.str()
        again.assert_outcomes(passed=11)

    def test_bootstrap_runs_the_teacher_and_keeps_its_passing_runs(self, pytester, project, asked, mode):
        responder, server = asked
        result = run(pytester, server, mode, "--dspex-compile", "--dspex-optimizer=bootstrap", "--dspex-demos=2")
        assert result.ret == 0, result.stdout.str()
        record = golden(pytester)
        assert record["optimizer"]["name"] == "BootstrapFewShot" and record["optimizer"]["max_bootstrapped_demos"] == 2
        assert [c["name"] for c in record["optimizer"]["candidates"]] == ["bootstrap"]
        # DSPy's walk: training examples in order until 2 pass (the first two do), one teacher call each
        assert responder.teacher_runs == 2
        assert sum(1 for d in demos(record) if d["bootstrapped"]) == 2

    def test_the_default_is_the_candidate_search(self, pytester, project, asked, mode):
        _responder, server = asked
        result = run(pytester, server, mode, "--dspex-compile", "-k", "not each")
        assert result.ret == 0, result.stdout.str()
        optimizer = golden(pytester)["optimizer"]
        assert optimizer["name"] == "BootstrapFewShotWithRandomSearch"
        assert [c["name"] for c in optimizer["candidates"]][:3] == ["zero-shot", "labeled", "bootstrap"]

    def test_the_ini_names_it_and_the_marker_wins(self, pytester, project, asked, mode):
        responder, server = asked
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_optimizer = bootstrap\n")
        project(marker=', optimizer="labeled"')
        result = run(pytester, server, mode, "--dspex-compile", "-k", "not each")
        assert result.ret == 0, result.stdout.str()
        assert golden(pytester)["optimizer"]["name"] == "LabeledFewShot" and responder.teacher_runs == 0
        project()  # no marker: the ini's bootstrap
        result = run(pytester, server, mode, "--dspex-compile", "--dspex-force", "-k", "not each")
        assert result.ret == 0, result.stdout.str()
        assert golden(pytester)["optimizer"]["name"] == "BootstrapFewShot" and responder.teacher_runs > 0


@BOTH_MODES
class TestUnknownOptimizer:
    def test_on_the_command_line_a_usage_error_lists_the_known_ones(self, pytester, project, asked, mode):
        responder, server = asked
        result = run(pytester, server, mode, "--dspex-compile", "--dspex-optimizer=mipro")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--dspex-optimizer / dspex_optimizer: unknown optimizer 'mipro'; {KNOWN}"])
        assert responder.cases == [] and not (pytester.path / GOLDEN).exists()

    def test_in_the_ini_file_too(self, pytester, project, asked, mode):
        _responder, server = asked
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_optimizer = Bootstrap\n")
        result = run(pytester, server, mode, "--dspex-compile")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*unknown optimizer 'Bootstrap'; {KNOWN}"])

    def test_in_a_marker_only_that_test_fails_naming_it_and_the_known_ones(self, pytester, project, asked, mode):
        responder, server = asked
        project(marker=', optimizer="mipro"')
        pytester.makepyfile(test_other="def test_other():\n    pass\n")
        result = run(pytester, server, mode, "--dspex-compile")
        assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
        result.stdout.fnmatch_lines([f"*test_triage.py::test_triage: @pytest.mark.dspex_program: optimizer='mipro': unknown optimizer 'mipro'; {KNOWN}"])
        assert "Interrupted" not in result.stdout.str() and "error during collection" not in result.stdout.str()
        assert result.parseoutcomes()["passed"] >= 1  # the other file ran
        assert responder.cases == [] and not (pytester.path / GOLDEN).exists()


HANGING_METRIC = '''
import asyncio

async def team_matches(example, prediction, trace=None):
    if trace is not None:  # bootstrapping: this metric never answers
        await asyncio.sleep(3600)
    return example.team == prediction.team
'''


@BOTH_MODES
def test_a_metric_that_hangs_while_bootstrapping_is_cut_by_the_example_timeout(pytester, project, asked, mode):
    responder, server = asked
    project(source=TEST_FILE.replace("\ndef team_matches", HANGING_METRIC + "\ndef _unused", 1))
    result = run(pytester, server, mode, "--dspex-compile", "--dspex-optimizer=bootstrap", "--dspex-example-timeout=0.5",
                 "--dspex-demos=2", "-k", "not each")  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    record = golden(pytester)
    # every teacher run timed out: no run passed, so no bootstrapped demo; the labeled ones remain
    assert responder.teacher_runs == 10
    assert demos(record) and not any(d["bootstrapped"] for d in demos(record))
    assert record["optimizer"]["candidates"][0]["bootstrapped"] == 0
