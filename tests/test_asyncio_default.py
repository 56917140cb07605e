"""pytest-asyncio's "loop scope unset" deprecation warning does not reach projects that never set asyncio up."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SIMPLE = """
def test_ok():
    assert True
"""

ASYNC = """
import pytest, pytest_asyncio

@pytest_asyncio.fixture
async def value():
    return 3

@pytest.mark.asyncio
async def test_async(value):
    assert value == 3
"""


@pytest.mark.parametrize("xdist", ["-p no:xdist", "-n 2"])
def test_a_project_without_asyncio_settings_sees_no_deprecation_warning(pytester: pytest.Pytester, xdist: str) -> None:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(test_simple=SIMPLE, test_async=ASYNC)
    result = pytester.runpytest_subprocess(*xdist.split(), "-W", "error::pytest.PytestDeprecationWarning")
    result.assert_outcomes(passed=2)
    assert "is unset" not in result.stdout.str() + result.stderr.str()


def test_a_project_that_sets_the_scope_keeps_its_value(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = module\n")
    pytester.makepyfile(test_async=ASYNC)
    result = pytester.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*asyncio_default_fixture_loop_scope=module*"])
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-o", "asyncio_default_fixture_loop_scope=class")
    result.stdout.fnmatch_lines(["*asyncio_default_fixture_loop_scope=class*"])


def test_without_pytest_dspex_the_warning_is_pytest_asyncios(pytester: pytest.Pytester) -> None:
    """The check above is meaningful: pytest-asyncio alone does warn."""
    pytester.makepyfile(test_simple=SIMPLE)
    result = pytester.runpytest_subprocess("-p", "no:dspex", "-p", "no:xdist")
    assert "is unset" in result.stdout.str() + result.stderr.str()
