"""Under ``-n``, a worker starts on its tests as soon as its own collection is in (``ChunkScheduling``).

xdist's ``load`` sends nothing until every worker has collected; workers start one after another, so
on a busy machine the first ones sat idle while the last started (``-n 8`` on 2 cores: the first
collected at 1.2 s, the last at 2.3 s; a per-example run of 1,000 examples took 5.5 s, 4.3 s with the
early start). What a user must still see: every test run once, per-example chunks kept whole, and a
worker whose collection differs failing the run as xdist says it.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xdist")

SLOW_WORKER = '''
import json, os, time

def pytest_collection_modifyitems(session, config, items):  # before the worker reports its collection
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker == "gw1":
        time.sleep(2.0)  # the slow worker: its collection is in two seconds after the other's
    with open(f"collected-{worker}.json", "w") as f:
        json.dump({"at": time.monotonic()}, f)

def pytest_runtest_setup(item):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    with open(f"ran-{worker}.jsonl", "a") as f:
        f.write(json.dumps({"test": item.nodeid, "at": time.monotonic()}) + "\\n")
'''

TESTS = '''
import pytest

@pytest.mark.parametrize("i", range(40))
def test_x(i):
    pass
'''


def _ran(pytester: pytest.Pytester, worker: str) -> list[dict]:
    path = pytester.path / f"ran-{worker}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_worker_starts_before_the_slowest_has_collected_and_every_test_runs_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SLOW_WORKER)
    pytester.makepyfile(test_many=TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=40)
    fast, slow = _ran(pytester, "gw0"), _ran(pytester, "gw1")
    slow_collected = json.loads((pytester.path / "collected-gw1.json").read_text())["at"]
    assert fast and min(r["at"] for r in fast) < slow_collected  # gw0 did not wait for gw1
    ran = [r["test"] for r in fast + slow]
    assert sorted(ran) == sorted(f"test_many.py::test_x[{i}]" for i in range(40))  # each once


def test_a_worker_that_collected_other_tests_still_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SLOW_WORKER)
    pytester.makepyfile(
        test_many="""
import os
import pytest

@pytest.mark.parametrize("i", range(41 if os.environ.get("PYTEST_XDIST_WORKER") == "gw1" else 40))
def test_x(i):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*Different tests were collected between gw0 and gw1*"])
    assert not _ran(pytester, "gw1")  # nothing was sent to the worker whose collection differs


def test_a_small_collection_waits_for_every_worker_as_xdist_does(pytester: pytest.Pytester) -> None:
    """Fewer than four tests a worker: scheduled when all are in (xdist's round robin), each run once."""
    pytester.makeconftest(SLOW_WORKER)
    pytester.makepyfile(test_few="import pytest\n\n@pytest.mark.parametrize('i', range(5))\ndef test_y(i):\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    fast = _ran(pytester, "gw0")
    slow_collected = json.loads((pytester.path / "collected-gw1.json").read_text())["at"]
    assert all(r["at"] > slow_collected for r in fast)
