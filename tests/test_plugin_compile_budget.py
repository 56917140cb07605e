"""A compile stopped by --dspex-max-calls says the budget was spent (TRIAL finding 6), not "Fix the LM
endpoint": the figure, the option to raise, and the golden left as it was."""

from __future__ import annotations

import pytest

from .test_plugin_baseline import COMPILE, GOLDEN, mode, model, project, run, server  # noqa: F401


@pytest.mark.parametrize("stage", ["selection", "baseline"])
def test_a_compile_stopped_by_the_call_budget_says_the_budget_was_spent(pytester, server, mode, stage):  # noqa: F811
    project(pytester, 40)
    before_requests = server.requests
    assert run(pytester, server, mode, *COMPILE, "-k", "not each").ret == 0
    whole = server.requests - before_requests  # a whole compile, and the gate's pass of 40
    golden = (pytester.path / GOLDEN).read_bytes()
    # a budget spent choosing among candidates, or half-way through the baseline's 2 passes of 40
    budget = 3 if stage == "selection" else whole - 40 - 60
    before_requests = server.requests
    out = run(pytester, server, mode, *COMPILE, "--dspex-force", f"--dspex-max-calls={budget}", "-k", "not each")
    assert out.ret == pytest.ExitCode.TESTS_FAILED
    what = "validation answers" if stage == "selection" else "gate answers"
    out.stdout.fnmatch_lines([
        f"*stopped by the run's LM budget: *budget*spent*{budget}*calls* — * of * {what} were not asked; golden not "
        "written (an existing one is kept). Raise --dspex-max-calls (or leave it unset) and re-run*"
    ])  # fmt: skip
    assert "Fix the LM endpoint" not in out.stdout.str()
    assert server.requests - before_requests <= budget
    assert (pytester.path / GOLDEN).read_bytes() == golden
