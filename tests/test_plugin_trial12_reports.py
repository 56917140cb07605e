"""Trial 12: a program whose dspex tests failed before a verdict (a stale or missing golden, a marker path
naming no file) is no pass in any report, whatever the other programs say.

Every scenario runs with ``-n 2`` and with ``-p no:xdist`` (the ``mode`` fixture)."""

from __future__ import annotations

import json
import sys

from .test_plugin import fake, mode, project, run  # noqa: F401
from .test_plugin_trial10 import two_programs


def test_a_program_whose_tests_failed_before_a_verdict_fails_the_reports(pytester, project, fake, mode):  # noqa: F811
    """T12-3 (found on the example project, take_order's output field renamed: its two tests failed, while
    the JSON said ``"passed": true``, the markdown "✅ 3 programs passed (5 tests)" and the HTML "passed",
    none naming take_order): a red run's PR comment read green. Here router's golden goes stale."""
    two_programs(project)
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    two_programs(project, router_field="department")
    result = run(pytester, fake, mode, "--dspex-report=r.json", "--dspex-markdown=r.md", "--dspex-html=r.html")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*router.json: golden is stale*"])
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["passed"] is False
    assert report["failed_before_verdict"] == {"router": ["test_triage.py::test_router"]}
    assert [p["program"] for p in report["programs"]] == ["triage"]
    md = (pytester.path / "r.md").read_text().splitlines()[0]
    assert md.startswith("### ❌ pytest-dspex:") and "failed before a verdict: router (see the test log); the others: 1 program passed" in md, md
    html = (pytester.path / "r.html").read_text()
    assert "<title>pytest-dspex report: passed" not in html
    assert "failed before a verdict: router" in html
    result.stdout.fnmatch_lines(["*router: no verdict: test_triage.py::test_router failed before its gate (see FAILURES)*"])
    # re-rendered from the JSON, the same
    assert pytester.run(sys.executable, "-m", "pytest_dspex", "report", "r.json", "--markdown", "r2.md").ret == 0
    assert (pytester.path / "r2.md").read_text().splitlines()[0] == md


def test_a_skipped_dspex_test_is_not_a_failure_of_the_reports(pytester, project, fake, mode):  # noqa: F811
    two_programs(project)
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    source = (pytester.path / "test_triage.py").read_text()
    project(source=source.replace("def test_router(", "@pytest.mark.skip(reason='later')\ndef test_router(", 1))
    result = run(pytester, fake, mode, "--dspex-report=r.json")
    assert result.ret == 0, result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["passed"] is True and "failed_before_verdict" not in report
