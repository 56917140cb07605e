"""A missing dataset, trainset or valset file fails the tests that name it, once; the rest of the run goes on.

A moved test file (marker paths are relative to it) or a typo in a path used to be a collection
error: the whole run stopped (and under xdist every worker printed it).
"""

from __future__ import annotations

import pytest

from .test_plugin import MODES, TEST_FILE, make_responder, rows

OTHER = """
def test_unrelated():
    assert True
"""


@pytest.fixture(params=list(MODES))
def mode(request) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100), "data/dev": rows(10)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_other=OTHER)

    def write(old: str, new: str) -> None:
        source = TEST_FILE.replace("THRESHOLD", "0.5")
        assert old in source
        pytester.makepyfile(test_triage=source.replace(old, new))

    return write


def run(pytester: pytest.Pytester, server, mode: list[str], *args: str) -> pytest.RunResult:
    opts = ["--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, f"--dspex-base-url={server.base_url}", *mode, *args, timeout=120)


@pytest.fixture
def fake(server_factory):
    return server_factory(make_responder(zero_shot_ok=True))


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (
            'trainset="data/train.jsonl"',
            'trainset="data/order_train.jsonl"',
            "dspex_program: trainset='data/order_train.jsonl': file not found (data/order_train.jsonl)",
        ),
        (
            'trainset="data/train.jsonl"',
            'trainset="data/train.jsonl", valset="data/val.jsonl"',
            "dspex_program: valset='data/val.jsonl': file not found (data/val.jsonl)",
        ),
    ],
)
def test_missing_trainset_or_valset_fails_the_tests_naming_it_and_the_run_goes_on(
    pytester, project, fake, mode, old, new, said
):
    project(old, new)
    result = run(pytester, fake, mode, "--dspex-missing-golden=zero-shot")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "Interrupted" not in out and "during collection" not in out
    # both tests of the file name it (the whole-dataset test and the per-example one's single item); the other file runs
    for test in ("test_triage.py::test_triage", "test_triage.py::test_triage_each"):
        assert f"{test}: @pytest.mark.{said}" in out, out
    assert out.count(f"test_triage.py::test_triage: @pytest.mark.{said}") == 1, out
    assert out.count(f"test_triage.py::test_triage_each: @pytest.mark.{said}") == 1, out
    assert "test_triage_each[dataset-error]" in out
    assert str(pytester.path) not in out.split("ERRORS", 1)[1]
    result.assert_outcomes(passed=1, failed=1, errors=1)  # test_unrelated; the test; the item's setup


def test_missing_dataset_is_one_error_item_and_other_files_run(pytester, project, fake, mode):
    project('@pytest.mark.dspex_dataset("data/dev.jsonl")', '@pytest.mark.dspex_dataset("data/dve.jsonl")')
    result = run(pytester, fake, mode, "--dspex-missing-golden=zero-shot")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    said = "test_triage.py::test_triage_each: @pytest.mark.dspex_dataset: path='data/dve.jsonl': file not found (data/dve.jsonl)"
    assert out.count(said) == 1, out
    assert "Interrupted" not in out
    result.assert_outcomes(passed=2, errors=1)  # test_unrelated and the whole-dataset test run


@pytest.mark.parametrize(
    ("new", "said"),
    [
        ('@pytest.mark.dspex_dataset("data/dev.jsonl", limt=5)', "unknown argument(s) limt (known: limit)"),
        ('@pytest.mark.dspex_dataset("data/dev.jsonl", limit=0)', "limit=0 must be a positive integer"),
    ],
    ids=["typo", "bad-limit"],
)
def test_a_bad_dataset_marker_fails_its_own_test_not_the_runs_collection(pytester, project, fake, mode, new, said):
    """trial 4 F5: a typo'd dspex_dataset argument was a collection error stopping the whole run
    ("Interrupted: 1 error during collection"), where dspex_program's and dspex_metric's fail their own test."""
    project('@pytest.mark.dspex_dataset("data/dev.jsonl")', new)
    result = run(pytester, fake, mode, "--dspex-missing-golden=zero-shot")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "Interrupted" not in out and "during collection" not in out
    assert f"test_triage.py::test_triage_each: @pytest.mark.dspex_dataset: {said}" in out, out
    assert "test_triage_each[marker-error]" in out
    result.assert_outcomes(passed=2, errors=1)  # test_unrelated and the whole-dataset test; the item's setup


def test_a_list_of_examples_as_trainset_is_said_in_one_short_line(pytester, project, fake, mode):
    """Trial 9: a DSPy user's ``trainset=train`` (a list of examples) printed the whole list's repr in the
    marker error: 40 examples made a line of thousands of characters."""
    examples = "[dspex.Example(message=f'case {i}: I was charged twice', team='billing').with_inputs('message') for i in range(40)]"
    project('trainset="data/train.jsonl"', f"trainset={examples}")
    result = run(pytester, fake, mode, "--dspex-missing-golden=zero-shot")
    out = result.stdout.str()
    said = "dspex_program: trainset= must be a path to a .jsonl/.json/.csv file, got a list of 40 item(s): a marker reads"
    assert said in out, out
    assert all(len(line) < 400 for line in out.splitlines() if "trainset=" in line), out

