"""Verdicts that never lie (issue 19, part A), through pytest.

A loopback endpoint answers every even-numbered case right and every odd one wrong (score 0.5); a
threshold of 0.4 passes, 0.7 fails. Each scenario runs with ``-n 2`` and with ``-p no:xdist``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer, triage_responder

from .test_plugin import MODES, TRIAGE_PROGRAM

N = 40

EACH_TEST = (
    TRIAGE_PROGRAM
    + """
@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_solve_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)

def test_other():
    pass
"""
)

DATASET_TEST = (
    TRIAGE_PROGRAM
    + """
@pytest.mark.dspex_program(triage, name="triage")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
def test_solve(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
"""
)


def dev_rows(n: int = N) -> str:
    out = []
    for i in range(n):
        billing = bool(i % 2)
        message = f"I was charged twice, case {i}" if billing else f"the app crashes, case {i}"
        out.append({"id": f"dev-{i:04d}", "message": message, "team": "billing" if billing else "technical"})
    return "\n".join(json.dumps(r) for r in out) + "\n"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def server(server_factory: Any) -> FakeLMServer:
    s: FakeLMServer = server_factory(lambda body: triage_responder(body, pass_every=2))
    s.keep_bodies = False
    return s


def project(pytester: pytest.Pytester, *, threshold: float = 0.4, source: str = EACH_TEST, n: int = N) -> None:
    pytester.makefile(".jsonl", **{"data/dev": dev_rows(n)})
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\ndspex_missing_golden = zero-shot\n"
    )
    pytester.makepyfile(test_triage=source.replace("THRESHOLD", str(threshold)))


def run(pytester: pytest.Pytester, server: FakeLMServer, *args: str, cache: str = "off") -> pytest.RunResult:
    opts = [f"--dspex-base-url={server.base_url}", "--dspex-model=fake-model", f"--dspex-cache={cache}"]
    opts += ["--dspex-retries=0"]
    return pytester.runpytest_subprocess(*opts, *args, timeout=300)


def report(pytester: pytest.Pytester, name: str = "r.json") -> dict[str, Any]:
    return json.loads((pytester.path / name).read_text())  # type: ignore[no-any-return]


class TestBudgetAndCache:
    def test_max_cost_without_a_price_is_a_usage_error_naming_the_price_option(self, pytester, server, mode):
        """Issue 19: --dspex-max-cost=0.001 on a model with no known price passed with ``cost $0.0000``."""
        project(pytester)
        result = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-max-cost=0.001")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([
            "*--dspex-max-cost=0.001: no price is known for model 'fake-model'*--dspex-price=INPUT,OUTPUT*"
            "price_per_1m_input=*--dspex-max-calls*"
        ])  # fmt: skip
        assert server.requests == 0
        bad = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-price=cheap")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--dspex-price*'cheap' is not a price; write INPUT,OUTPUT*"])
        # with a price the budget stops the run: past it no new calls, and the verdict says "budget"
        priced = run(
            pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-report=r.json",
            "--dspex-max-cost=0.0000001", "--dspex-price=0.15,0.60", "--dspex-concurrency=1",
        )  # fmt: skip
        assert priced.ret == pytest.ExitCode.TESTS_FAILED
        row = report(pytester)["programs"][0]
        assert row["errors_by_kind"].get("budget", 0) > 0 and row["verdict"]["kind"] == "lm_errors"
        assert row["usage"]["cost"] > 0
        assert server.requests < N
        # trial5 T5-6: a budget below a cent is said to two digits, and the overshoot of the calls in flight
        # ("$0.0000 of $0.0000" said nothing; a 26% overshoot read "$0.0001 of $0.0001")
        priced.stdout.fnmatch_lines(["*cost budget*spent ($0.00000* of $0.00000010, *% over: the calls in flight when it was reached)*"])

    def test_the_lm_refuses_a_cost_budget_it_cannot_count(self):
        import pytest_dspex as dspex

        with pytest.raises(dspex.ConfigError, match="price_per_1m_input= and price_per_1m_output="):
            dspex.LM("m", base_url="http://127.0.0.1:9/v1", api_key="k", budget=dspex.Budget(max_cost=1.0))
        lm = dspex.LM(
            "m", base_url="http://127.0.0.1:9/v1", api_key="k", budget=dspex.Budget(max_cost=1.0), price_per_1m_input=1.0
        )
        lm.close()

    def test_a_run_answered_entirely_from_the_cache_says_so(self, pytester, server, mode):
        """Issue 19: a run whose every answer came from the cache (0 requests) passed without a word."""
        project(pytester)
        first = run(pytester, server, *mode, "-p", "no:cacheprovider", cache="on")
        assert first.ret == 0, first.stdout.str()
        assert "every answer came from the LM cache" not in first.stdout.str()
        sent = server.requests
        second = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-report=r.json", cache="on")
        assert second.ret == 0 and server.requests == sent
        second.stdout.fnmatch_lines([
            f"triage [[]per-example]: every answer came from the LM cache ({N} cached, 0 requests): "
            "the endpoint was not asked; --dspex-cache=off measures it as it answers now"
        ])  # fmt: skip
        assert report(pytester)["programs"][0]["cache_only"] is True
        # trial2 F-j: a replay with a miss said "every answer came from the LM cache" beside the miss
        project(pytester, n=N + 1)
        third = run(pytester, server, *mode, "-p", "no:cacheprovider", cache="replay")
        assert server.requests == sent and third.parseoutcomes().get("lm_error") == 1, third.stdout.str()
        assert "every answer came from the LM cache" not in third.stdout.str()


def junit_cases(pytester: pytest.Pytester, name: str = "junit.xml") -> tuple[Any, dict[str, Any]]:
    import xml.etree.ElementTree as ET

    root = ET.parse(pytester.path / name).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return suite, {case.get("name"): case for case in suite.iter("testcase")}


class TestFailingAggregateIsAFailedTest:
    def test_terminal_counts_lastfailed_and_junit_agree(self, pytester, server, mode):
        """Issue 19: a failing aggregate said ``166 passed, 44 missed`` (exit 1), was not in the last-failed
        cache, and JUnit put its failure on an example that passed, counting 2 failures for the terminal's 1."""
        project(pytester, threshold=0.7)
        result = run(pytester, server, *mode, "--junitxml=junit.xml")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        outcomes = result.parseoutcomes()
        assert (outcomes["failed"], outcomes["passed"], outcomes["missed"]) == (1, N // 2 + 1, N // 2)
        result.stdout.fnmatch_lines([
            "*_ test_solve_each (dspex gate) _*",
            "FAILED test_triage.py::test_solve_each - dspex gate FAILED*",
        ])  # fmt: skip
        assert "%]" not in result.stdout.str().replace("[100%]", "")  # no progress past the end
        suite, cases = junit_cases(pytester)
        failures = {name for name, case in cases.items() if case.find("failure") is not None}
        assert failures == {"test_solve_each"}  # its own test case, not an example whose outcome is pass
        assert int(suite.get("failures")) == outcomes["failed"] == 1
        assert int(suite.get("tests")) == len(cases) == N + 2
        props = {p.get("name"): p.get("value") for p in cases["test_solve_each"].iter("property")}
        assert props["dspex_aggregate_score"] == "0.5" and props["dspex_aggregate_verdict"] == "below_threshold"
        message = cases["test_solve_each"].find("failure").get("message")
        assert message.startswith("dspex gate FAILED for 'triage on data/dev.jsonl': score 0.500")
        # --lf runs the whole test again (a part would be "incomplete"), not test_other
        again = run(pytester, server, *mode, "--lf")
        outcomes = again.parseoutcomes()
        assert (outcomes["failed"], outcomes["passed"], outcomes["missed"]) == (1, N // 2, N // 2)
        project(pytester, threshold=0.4)  # the gate passes now: nothing is left to rerun
        assert run(pytester, server, *mode, "--lf").ret == 0
        lastfailed = pytester.path / ".pytest_cache/v/cache/lastfailed"
        assert not lastfailed.exists() or json.loads(lastfailed.read_text()) == {}

    def test_lf_after_a_focused_run_reruns_the_whole_test(self, pytester, server, mode):
        """Trial2 F3: after a failed gate, a focused ``-k`` run dropped its passing item from lastfailed, and
        ``--lf`` then ran the 39 others ("incomplete: 39 of 40", no verdict); with only the aggregate id
        left in lastfailed (its items skipped) ``--lf`` ran none of them."""
        project(pytester, threshold=0.7)
        assert run(pytester, server, *mode).ret == pytest.ExitCode.TESTS_FAILED
        focused = run(pytester, server, *mode, "-k", "dev-0000")  # an example answered right: it passes
        assert focused.ret == 0 and focused.parseoutcomes()["passed"] == 1, focused.stdout.str()
        lastfailed = pytester.path / ".pytest_cache/v/cache/lastfailed"
        assert "test_triage.py::test_solve_each[dev-0000]" not in json.loads(lastfailed.read_text())
        again = run(pytester, server, *mode, "--lf")
        outcomes = again.parseoutcomes()
        assert (outcomes["failed"], outcomes["passed"], outcomes["missed"]) == (1, N // 2, N // 2), again.stdout.str()
        again.stdout.fnmatch_lines(["FAILED test_triage.py::test_solve_each - dspex gate FAILED*"])
        assert "incomplete" not in again.stdout.str()
        # only the aggregate id, without parameters (its items were skipped, so pytest dropped them)
        lastfailed.write_text(json.dumps({"test_triage.py::test_solve_each": True}))
        alone = run(pytester, server, *mode, "--lf")
        outcomes = alone.parseoutcomes()
        assert (outcomes["failed"], outcomes["passed"], outcomes["missed"]) == (1, N // 2, N // 2), alone.stdout.str()
        assert "test_other" not in alone.stdout.str() and "incomplete" not in alone.stdout.str()

    def test_a_passing_aggregate_adds_no_test(self, pytester, server, mode):
        project(pytester, threshold=0.4)
        result = run(pytester, server, *mode, "--junitxml=junit.xml", "-p", "no:cacheprovider")
        assert result.ret == 0
        assert "failed" not in result.parseoutcomes()
        suite, cases = junit_cases(pytester)
        assert int(suite.get("failures")) == 0 and "test_solve_each" not in cases
        last = next(case for name, case in cases.items() if name == f"test_solve_each[dev-{N - 1:04d}]")
        props = {p.get("name"): p.get("value") for p in last.iter("property")}
        assert props["dspex_aggregate_verdict"] == "pass"


class TestIncompleteRuns:
    def test_a_k_selection_is_incomplete_not_a_threshold_verdict(self, pytester, server, mode):
        """Issue 19: ``-k "dev-0012 or dev-0013 or dev-0014"`` gave ``FAIL: below threshold (0.333 < 0.700)``,
        exit 1. A selection is the user's focused run: exit 0 from its items, the gate says incomplete."""
        project(pytester, threshold=0.7)
        result = run(
            pytester, server, *mode, "-p", "no:cacheprovider", "-k", "dev-0012 or dev-0013 or dev-0014",
            "--dspex-report=r.json", "--dspex-markdown=r.md", "--junitxml=junit.xml",
        )  # fmt: skip
        assert result.ret == 0, result.stdout.str()
        outcomes = result.parseoutcomes()
        assert (outcomes["passed"], outcomes["missed"]) == (2, 1) and "failed" not in outcomes
        result.stdout.fnmatch_lines([
            "triage*per-example*0.667*0.70*3*incomplete",
            "dspex gate INCOMPLETE for 'triage on data/dev.jsonl': incomplete: 3 of 40 examples ran "
            "(3 selected with -k, --lf or node ids; run them all for a verdict); no gate verdict*",
        ])  # fmt: skip
        assert "below threshold" not in result.stdout.str()
        data = report(pytester)
        assert data["passed"] is False and data["complete"] is False
        assert data["programs"][0]["verdict"]["kind"] == "incomplete"
        assert data["programs"][0]["comparison"] is None
        md = (pytester.path / "r.md").read_text(encoding="utf-8")
        assert md.startswith("### ⚠️ pytest-dspex: 1 of 1 program incomplete") and "✅" not in md
        suite, cases = junit_cases(pytester)
        assert int(suite.get("failures")) == 0
        props = {p.get("name"): p.get("value") for case in cases.values() for p in case.iter("property")}
        assert props["dspex_aggregate_verdict"] == "incomplete"

    def test_x_stopping_early_is_incomplete_never_a_pass(self, pytester, server):
        """Issue 19: ``-x`` stopping after 4 of 40 examples showed ``pass`` with n 4."""
        project(pytester, threshold=0.4, source=EACH_TEST.replace(
            "    dspex_predict(dspex_example)", "    dspex_predict(dspex_example)\n    assert dspex_example.id != 'dev-0003'"
        ))  # fmt: skip
        result = run(pytester, server, "-p", "no:xdist", "-p", "no:cacheprovider", "-x", "--dspex-report=r.json")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*incomplete: 4 of 40 examples ran (the run stopped early: stopping after 1 failures)*"])
        data = report(pytester)
        assert data["passed"] is False and data["programs"][0]["n"] == 4
        assert data["programs"][0]["verdict"]["kind"] == "incomplete"
        # trial2 F-j: the terminal said only "dspex json report: r.json" of a report saying complete: false
        lines = [ln for ln in result.stdout.lines if "dspex json report" in ln]
        assert len(lines) == 1 and lines[0].startswith(
            "dspex json report: the run stopped early: stopping after 1 failures, so "
        ) and lines[0].endswith("r.json holds an incomplete report (complete: false, passed: false)"), lines

    def test_x_under_xdist_says_the_run_stopped_early_not_interrupted(self, pytester, server):
        """Trial: ``-x`` said ``(the run stopped early: stopping after 1 failures)`` without xdist but
        ``(the run was interrupted)`` with ``-n 2`` (xdist ends such a run as interrupted)."""
        project(pytester, threshold=0.4, source=EACH_TEST.replace(
            "    dspex_predict(dspex_example)", "    dspex_predict(dspex_example)\n    assert dspex_example.id != 'dev-0003'"
        ))  # fmt: skip
        result = run(pytester, server, "-n", "2", "-p", "no:cacheprovider", "-x", "--dspex-report=r.json")
        out = result.stdout.str()
        assert "the run was interrupted" not in out, out
        result.stdout.fnmatch_lines(["*incomplete: * of 40 examples ran (the run stopped early: stopping after 1 failures)*"])
        data = report(pytester)
        assert data["passed"] is False and data["stopped"] == "the run stopped early: stopping after 1 failures"
        lines = [ln for ln in result.stdout.lines if "dspex json report" in ln]
        assert len(lines) == 1 and "stopping after 1 failures, so " in lines[0] and "incomplete report" in lines[0], lines

    def test_a_crashed_worker_is_incomplete(self, pytester, server):
        """Issue 19: a per-example run whose xdist worker crashed showed ``pass`` on n=399 of 400."""
        project(pytester, threshold=0.4, source=EACH_TEST.replace(
            "    dspex_predict(dspex_example)",
            "    dspex_predict(dspex_example)\n    if dspex_example.id == 'dev-0005':\n        import os; os._exit(1)",
        ))  # fmt: skip
        result = run(pytester, server, "-n", "2", "-p", "no:cacheprovider", "--dspex-report=r.json")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*crashed*", "*incomplete: 39 of 40 examples ran*"])
        data = report(pytester)
        assert data["passed"] is False and data["programs"][0]["verdict"]["kind"] == "incomplete"

    def test_a_crash_while_a_chunk_is_evaluated_names_its_examples_and_is_incomplete(self, pytester, server):
        """Trial 6 #12: a metric that kills the worker on one example blamed the chunk's first item, then the
        next on each replacement worker (9 innocent examples), until xdist gave up: no table, no "incomplete"
        line, and the JSON report said ``"complete": true, "programs": []``."""
        crashing = TRIAGE_PROGRAM.replace(
            "def team_matches(example, prediction, trace=None):\n",
            "def team_matches(example, prediction, trace=None):\n    if example.id == 'dev-0013':\n        import os; os._exit(1)\n",
        ) + EACH_TEST[len(TRIAGE_PROGRAM):]  # fmt: skip
        project(pytester, threshold=0.4, source=crashing)
        # chunks of 8 examples (concurrency 2): dev-0013 is in the second, dev-0008..dev-0015
        result = run(pytester, server, "-n", "2", "-p", "no:cacheprovider", "--dspex-concurrency=2", "--dspex-report=r.json")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        out = result.stdout.str()
        assert out.count("replacing crashed worker") == 1 and "maximum crashed workers" not in out  # no cascade
        result.stdout.fnmatch_lines([
            "worker 'gw*' crashed while evaluating one of dev-0008–dev-0015 (8 examples evaluated together; not run again)",
            "triage*per-example*incomplete*",
            "*incomplete: 32 of 40 examples ran (worker 'gw*' crashed while evaluating one of dev-0008–dev-0015*",
        ])  # fmt: skip
        outcomes = result.parseoutcomes()
        assert outcomes["failed"] == 1 and outcomes["passed"] + outcomes["missed"] == 33  # 32 examples and test_other
        data = report(pytester)
        assert data["passed"] is False and data["complete"] is False
        assert "dev-0008–dev-0015" in data["stopped"]
        assert data["programs"][0]["verdict"]["kind"] == "incomplete" and data["programs"][0]["n"] == 32
        # the whole dataset in one chunk: not one record, still said, and the report is not complete
        result = run(pytester, server, "-n", "2", "-p", "no:cacheprovider", "--dspex-report=r.json")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines([
            "dspex gate INCOMPLETE for test_triage.py::test_solve_each: incomplete: 0 of 40 examples ran "
            "(worker 'gw*' crashed while evaluating one of dev-0000–dev-0039 (40 examples*); no gate verdict",
        ])  # fmt: skip
        data = report(pytester)
        assert data["passed"] is False and data["complete"] is False and data["programs"] == []

    @pytest.mark.parametrize("mode", list(MODES))
    def test_a_collection_error_is_never_a_complete_report(self, pytester, server, mode):
        """Trial 6 #12: a run stopped by a collection error wrote ``"complete": true``."""
        project(pytester, threshold=0.4)
        pytester.makepyfile(test_broken="undefined_name\n")
        result = run(pytester, server, *MODES[mode], "-p", "no:cacheprovider", "--dspex-report=r.json")
        # pytest stops at a collection error; xdist runs the other tests (and may pass them)
        assert result.ret == (pytest.ExitCode.INTERRUPTED if mode == "no-xdist" else pytest.ExitCode.TESTS_FAILED)
        data = report(pytester)
        assert data["complete"] is False and data["passed"] is False
        assert data["stopped"] == "a collection error in test_broken.py: not every test ran"
        # trial2 F-e: one line, not "report: r.json" then "the run was interrupted, so r.json holds an incomplete ..."
        (pytester.path / "r.json").write_text("{}")
        result = run(pytester, server, *MODES[mode], "-p", "no:cacheprovider", "--dspex-report=r.json")
        lines = [ln for ln in result.stdout.lines if "dspex json report" in ln]
        assert len(lines) == 1, lines
        assert lines[0].startswith("dspex json report: a collection error in test_broken.py: not every test ran, so ")
        assert lines[0].endswith("holds an incomplete report (complete: false, passed: false); "
                                 f"the previous report is kept as {pytester.path / 'r.json.prev'}")  # fmt: skip

    def test_an_interrupted_run_writes_an_incomplete_report_and_keeps_the_previous(self, pytester, server):
        """Issue 19: Ctrl-C overwrote an existing report with ``"passed": true, "programs": []``. Trial F4:
        keeping the previous (passing) report as the newest file left a green verdict beside a red job.
        Now the interrupted run's report says complete: false, passed: false; the previous is ``.prev``."""
        interrupt_first = "def test_0_interrupt():\n    raise KeyboardInterrupt\n\n" + EACH_TEST
        project(pytester, threshold=0.4, source=interrupt_first)
        previous = '{"passed": true, "programs": [], "kept": true}\n'
        (pytester.path / "r.json").write_text(previous)
        (pytester.path / "ci.md").write_text("### ✅ pytest-dspex: 1 program passed\n")
        result = run(
            pytester, server, "-p", "no:xdist", "-p", "no:cacheprovider", "--dspex-report=r.json", "--dspex-markdown=ci.md"
        )
        assert result.ret == pytest.ExitCode.INTERRUPTED
        assert (pytester.path / "r.json.prev").read_text() == previous
        now = report(pytester, "r.json")
        assert now["complete"] is False and now["passed"] is False and "kept" not in now
        assert (pytester.path / "ci.md.prev").read_text() == "### ✅ pytest-dspex: 1 program passed\n"
        assert "✅" not in (pytester.path / "ci.md").read_text()
        result.stdout.fnmatch_lines([
            "*dspex json report: the run was interrupted, so *r.json holds an incomplete report (complete: false, "
            "passed: false); the previous report is kept as *r.json.prev",
        ])  # fmt: skip
        assert not list(pytester.path.glob(".*.tmp"))
        # interrupted half-way through the examples: incomplete, and a new report says so
        project(pytester, threshold=0.4, source=EACH_TEST.replace(
            "    dspex_predict(dspex_example)",
            "    dspex_predict(dspex_example)\n    if dspex_example.id == 'dev-0009':\n        raise KeyboardInterrupt",
        ))  # fmt: skip
        result = run(pytester, server, "-p", "no:xdist", "-p", "no:cacheprovider", "--dspex-report=new.json")
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.stdout.fnmatch_lines(["*incomplete: 9 of 40 examples ran (the run was interrupted)*"])
        data = report(pytester, "new.json")
        assert data["passed"] is False and data["programs"][0]["verdict"]["kind"] == "incomplete"
        # neither report passes anywhere else
        from pytest_dspex.reports import render_markdown
        from pytest_dspex.reports.combine import CombineError, combine_files

        with pytest.raises(CombineError, match="incomplete: 9 of 40 examples ran"):
            combine_files([str(pytester.path / "new.json")])
        with pytest.raises(CombineError, match="no program was evaluated"):
            combine_files([str(pytester.path / "r.json.prev")])
        assert render_markdown({"passed": True, "programs": []}).startswith("### ⚠️ pytest-dspex: no LM program")


class TestWritersNeverCrash:
    @pytest.mark.parametrize("case", ["surrogate", "under-a-file", "unwritable", "step-summary"])
    def test_a_report_that_cannot_be_written_is_one_line(self, pytester, server, mode, case, monkeypatch):
        """Issue 19: the writers raised from pytest_sessionfinish (UnicodeEncodeError, FileExistsError,
        PermissionError, FileNotFoundError) and the table, FAILURES and short summary were lost."""
        project(pytester, threshold=0.7)
        dev = pytester.path / "data/dev.jsonl"
        dev.write_text(dev.read_text().rstrip("\n") + '\n{"id": "dev-odd", "message": "the app crashes \\ud800, case 40", "team": "technical"}\n')
        (pytester.path / "afile").write_text("")
        args = {
            "surrogate": ["--dspex-report=r.json", "--dspex-html=r.html", "--dspex-markdown=r.md"],
            "under-a-file": ["--dspex-report=afile/r.json"],
            "unwritable": ["--dspex-html=/proc/dspex/r.html"],
            "step-summary": [],
        }[case]
        if case == "step-summary":
            monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "missing" / "summary.md"))
        result = run(pytester, server, *mode, "-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.TESTS_FAILED  # the gate's own verdict, not a crash
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines([
            "*= FAILURES =*", "*_ test_solve_each (dspex gate) _*", "*= dspex =*", "triage*per-example*FAIL*",
            "FAILED test_triage.py::test_solve_each - dspex gate FAILED*",
        ])  # fmt: skip
        if case == "surrogate":
            data = report(pytester)
            odd = next(r for r in data["programs"][0]["records"] if r["key"] == "dev-odd")
            assert odd["inputs"]["message"] == "the app crashes \ud800, case 40" and odd["error_kind"] is None
            assert "\\ud800" in (pytester.path / "r.html").read_text(encoding="utf-8")
        else:
            what = {"under-a-file": "json", "unwritable": "html", "step-summary": "step summary"}[case]
            result.stdout.fnmatch_lines([f"dspex {what} report not written: *"])

    def test_a_golden_that_cannot_be_written_is_one_line_and_compiled_once(self, pytester, server, mode):
        source = DATASET_TEST.replace('name="triage")', 'name="triage", trainset="data/dev.jsonl")')
        project(pytester, threshold=0.4, source=source)
        (pytester.path / "__dspex__").mkdir()
        (pytester.path / "__dspex__/test_triage").write_text("")  # the golden's folder is a file
        result = run(pytester, server, *mode, "-p", "no:cacheprovider", "--dspex-compile", "--dspex-candidates=0")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines([
            "*__dspex__/test_triage/triage.json: golden not written: cannot write in *__dspex__/test_triage*"
        ])  # fmt: skip
        assert "Traceback" not in result.stdout.str() and "tempfile" not in result.stdout.str()
