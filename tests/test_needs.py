"""Tests that need the machine (redis-server, chromium, network namespaces) skip outside CI, saying
why in one line at the end of the run, and fail under ``CI`` naming what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFTEST = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.needs import need, say_skips

def pytest_terminal_summary(terminalreporter):
    say_skips(terminalreporter)
"""

TESTS = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import pytest
from tests.needs import REDIS_INSTALL, need

def test_cache_on_redis():
    need("redis-server", "not installed", REDIS_INSTALL)

def test_browser():
    need("chromium", "no chromium executable", "apt-get install chromium")

def test_second_browser():
    need("chromium", "no chromium executable", "apt-get install chromium")

def test_extra():
    pytest.importorskip("no_such_extra_module", reason="the [nope] extra")

def test_plain():
    need("chromium", None, "apt-get install chromium")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_machine=TESTS)
    return pytester


def test_outside_ci_the_run_ends_with_one_line_naming_each_skip_and_why(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=1, skipped=4)
    lines = [line for line in result.outlines if line.startswith("skipped 4:")]
    assert lines == [
        "skipped 4: 2 × needs chromium: no chromium executable (apt-get install chromium); "
        "1 × needs redis-server: not installed (apt-get install redis-server, or set DSPEX_REDIS_SERVER); "
        "1 × the [nope] extra"
    ], result.outlines


def test_under_ci_a_missing_machine_need_fails_saying_which(suite, monkeypatch):
    monkeypatch.setenv("CI", "1")
    result = suite.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=1, failed=3, skipped=1)  # an optional extra still skips, and is said
    result.stdout.fnmatch_lines(
        [
            "*CI needs redis-server: not installed*",
            "*CI needs chromium: no chromium executable*",
            "skipped 1: 1 × the [nope] extra",
        ],
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_run_without_skips_adds_no_line(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if line.startswith("skipped")]
