"""pytest-dspex's modules are imported plainly, not through pytest's assertion rewriting (which
parses every module of a plugin's package in every process and every xdist worker); users' test
modules and conftests are rewritten as ever."""

from __future__ import annotations

import pytest

PROBE = r'''
import sys

import pytest

import pytest_dspex.evaluation.scoring  # a module the plugin itself imports late, on first use
import pytest_dspex.lm.client

def _rewritten(name):
    loader = getattr(sys.modules[name], "__loader__", None)
    return type(loader).__name__ == "AssertionRewritingHook"

def test_ours_plain_and_the_users_rewritten():
    ours = [m for m in sys.modules if m.startswith("pytest_dspex.") and _rewritten(m)]
    # only what the plugin entry point loads before it can step aside
    assert set(ours) <= {"pytest_dspex._support", "pytest_dspex._support.lazy", "pytest_dspex._support.version",
                         "pytest_dspex.plugin", "pytest_dspex.plugin._plain_imports"}, ours
    assert "pytest_dspex.lm.client" not in ours and "pytest_dspex.evaluation.scoring" not in ours
    assert _rewritten(__name__)
    with pytest.raises(AssertionError, match=r"\[1, 2\] == \[1, 3\]"):  # the user's assert still explains itself
        assert [1, 2] == [1, 3]
'''


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist-2", "no-xdist"])
def test_the_plugins_modules_are_not_rewritten(pytester, mode):
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess(*mode)
    result.assert_outcomes(passed=1)
