"""Reports written by a real pytest run: ``--dspex-html``, ``--dspex-markdown``, ``$GITHUB_STEP_SUMMARY``
and JUnit properties, in both test modes, with ``-n 2`` and with ``-p no:xdist``.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_dspex.testing.fake_server import FakeLMServer

from .needs import CHROMIUM_INSTALL, need
from .test_plugin import MODES, TEST_FILE, make_responder, rows

CANARY = "canary-pw-31337"


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-CANARY-reports")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makefile(".jsonl", **{"data/train": rows(10, 100), "data/dev": rows(10)})

    def write(threshold: float = 0.8) -> None:
        pytester.makepyfile(test_triage=TEST_FILE.replace("THRESHOLD", str(threshold)))

    write()
    return write


def run(
    pytester: pytest.Pytester, server: FakeLMServer, mode: list[str], *args: str, ini: str = ""
) -> pytest.RunResult:
    # the endpoint carries a user:password — it must reach no report
    url = server.base_url.replace("://", f"://user:{CANARY}@", 1)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n" + f"dspex_base_url = {url}\n" + ini)
    opts = ["--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, *mode, *args, timeout=120)


def properties(junit: Path) -> dict[str, dict[str, str]]:
    """Each test case's properties, by test name."""
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        out[case.get("name", "")] = props
    return out


def no_secrets_or_absolute_paths(pytester: pytest.Pytester, *files: Path) -> None:
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert CANARY not in text and "sk-CANARY" not in text, f"a secret reached {f.name}"
        assert str(pytester.path) not in text and os.path.realpath(pytester.path) not in text, (
            f"an absolute path in {f.name}"
        )


def test_html_markdown_json_and_step_summary_from_one_run(pytester, project, server_factory, mode, monkeypatch):
    fake = server_factory(make_responder())
    assert run(pytester, fake, mode, "--dspex-compile", "--dspex-report=c.json", "--dspex-html=c.html").ret == 0
    compiled = json.loads((pytester.path / "c.json").read_text(encoding="utf-8"))
    assert compiled["goldens"]["__dspex__/test_triage/triage.json"]["outcome"] == "created"
    no_secrets_or_absolute_paths(pytester, pytester.path / "c.json", pytester.path / "c.html")  # goldens, candidates
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.mkdir("sub")
    monkeypatch.chdir(pytester.path / "sub")  # report paths are relative to the invocation directory
    result = run(pytester, fake, mode, "../test_triage.py", "--dspex-html=out/r.html", "--dspex-report=out/r.json",
                 ini="dspex_markdown = out/r.md\n", )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    out = pytester.path / "sub" / "out"
    html, md, js = out / "r.html", out / "r.md", out / "r.json"
    result.stdout.fnmatch_lines(["*dspex html report: *r.html", "*dspex markdown report: *r.md"])
    report = json.loads(js.read_text(encoding="utf-8"))
    assert sorted(r["mode"] for r in report["programs"]) == ["dataset", "per-example"]
    assert report["model"] == {"model": "fake-model", "base_url": report["model"]["base_url"]}
    assert "***@127.0.0.1" in report["model"]["base_url"] and report["plugin_version"] and report["created"]
    for row in report["programs"]:
        assert row["dataset"] == "data/dev.jsonl" and row["golden"] == "__dspex__/test_triage/triage.json"
        assert row["test"].startswith("test_triage.py::") and row["verdict"]["passed"] is True
    text = md.read_text(encoding="utf-8")
    assert text.startswith("### ✅ pytest-dspex: 1 program passed (2 tests)")  # one program in two modes (issue 23)
    assert "| triage | dataset | test\\_triage.py::test\\_triage |" in text and "| triage | per-example |" in text
    assert text.count("| triage |") == 2 and "fake-model" in text
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + text  # appended, same text
    page = html.read_text(encoding="utf-8")
    assert "<!doctype html>" in page and "test_triage.py::test_triage_each" in page and "fake-model" in page
    no_secrets_or_absolute_paths(pytester, html, md, js, summary)


def test_junit_says_the_golden_score_after_the_dev_set_grew(pytester, project, server_factory, mode):
    # trial3 T3: one dev row added since the compile: the terminal and markdown said golden 1.000 (its
    # score on the shared examples) and JUnit gave dspex_delta without dspex_golden_score
    assert run(pytester, server_factory(make_responder()), mode, "--dspex-compile").ret == 0
    pytester.makefile(".jsonl", **{"data/dev": rows(11)})
    project(threshold=0.95)
    wrong = server_factory(make_responder(wrong={3}))
    result = run(pytester, wrong, mode, "--junitxml=junit.xml", "--dspex-report=r.json")
    assert result.ret == 1, result.stdout.str()
    row = next(r for r in json.loads((pytester.path / "r.json").read_text())["programs"] if r["mode"] == "dataset")
    assert row["golden_score"] is None and row["comparison"]["shared"] == 10  # the golden was measured on 10 rows
    props = properties(pytester.path / "junit.xml")
    whole, aggregate = props["test_triage"], props["test_triage_each"]
    assert (whole["dspex_golden_score"], whole["dspex_delta"]) == ("1", "-0.1000"), whole
    assert (aggregate["dspex_aggregate_golden_score"], aggregate["dspex_aggregate_delta"]) == ("1", "-0.1000"), aggregate
    result.stdout.fnmatch_lines(["*golden 1.000 (delta -0.100*"])


def test_failing_gates_show_in_every_report_and_in_junit(pytester, project, server_factory, mode):
    assert run(pytester, server_factory(make_responder()), mode, "--dspex-compile").ret == 0
    project(threshold=0.95)
    wrong = server_factory(make_responder(wrong={3}, garbage={4}))  # one miss, one unparseable answer
    result = run(pytester, wrong, mode, "--dspex-html=r.html", "--dspex-markdown=r.md", "--junitxml=junit.xml")
    assert result.ret == 1
    text = (pytester.path / "r.md").read_text(encoding="utf-8")
    assert "1 of 1 program failed (2 tests)" in text and text.count("❌") >= 3  # counts programs (issue 23)
    assert '"passed": false' in (pytester.path / "r.html").read_text(encoding="utf-8") or "failed" in text
    props = properties(pytester.path / "junit.xml")
    whole = props["test_triage"]
    assert whole["dspex_program"] == "triage" and whole["dspex_score"] == "0.8" and whole["dspex_n"] == "10"
    assert whole["dspex_verdict"] != "pass" and whole["dspex_verdict_reason"]
    assert whole["dspex_ci95"] and whole["dspex_golden_score"] == "1" and whole["dspex_delta"] == "-0.2000"
    assert len(whole) == len(set(whole))
    items = {name: p for name, p in props.items() if name.startswith("test_triage_each[")}
    assert len(items) == 10
    outcomes = sorted(p["dspex_outcome"] for p in items.values())
    assert outcomes == ["miss"] * 2 + ["pass"] * 8  # the wrong answer and the unparseable one: misses
    parse = next(p for p in items.values() if p.get("dspex_error_kind") == "parse")
    assert parse["dspex_score"] == "0" and parse["dspex_error"]
    # a failed aggregate is a test case of its own (issue 19: it sat on the last example, whose own outcome
    # was pass), with its properties, renamed so they do not collide with an item's
    aggregate_props = props["test_triage_each"]
    assert aggregate_props["dspex_aggregate_score"] == "0.8" and aggregate_props["dspex_aggregate_verdict"] != "pass"
    assert aggregate_props["dspex_program"] == "triage"
    assert not any("dspex_aggregate_score" in p for p in items.values())
    root = ET.parse(pytester.path / "junit.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failures = {c.get("name"): c.find("failure") for c in suite.iter("testcase") if c.find("failure") is not None}
    aggregate = failures["test_triage_each"]
    assert aggregate.get("message").startswith("dspex gate FAILED for 'triage on ")
    assert "0.800" in aggregate.get("message") and aggregate.text
    assert not [n for n in failures if n.startswith("test_triage_each[")]  # misses are not failures
    assert len(failures) == result.parseoutcomes()["failed"]  # JUnit and the terminal agree
    assert int(suite.get("failures")) == len(failures) and int(suite.get("tests")) == len(list(suite.iter("testcase")))
    no_secrets_or_absolute_paths(
        pytester, pytester.path / "r.html", pytester.path / "r.md", pytester.path / "junit.xml"
    )


def test_an_lm_error_is_an_error_not_a_miss_in_junit(pytester, project, server_factory):
    assert run(pytester, server_factory(make_responder()), MODES["xdist"], "--dspex-compile").ret == 0
    down = server_factory(make_responder())
    down.stop()
    result = run(pytester, down, MODES["xdist"], "-k", "each", "--junitxml=junit.xml", "--dspex-markdown=r.md")
    assert result.ret == 1
    items = {name: p for name, p in properties(pytester.path / "junit.xml").items() if "[" in name}
    assert {p["dspex_outcome"] for p in items.values()} == {"error"}
    assert {p["dspex_error_kind"] for p in items.values()} == {"lm_unavailable"}
    assert "LM errors" in (pytester.path / "r.md").read_text(encoding="utf-8") or "lm_unavailable" in (
        pytester.path / "r.md"
    ).read_text(encoding="utf-8")


def test_no_step_summary_when_no_program_ran(pytester, server_factory, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    assert run(pytester, server_factory(make_responder()), MODES["no-xdist"]).ret == 0
    assert not summary.exists()


def test_the_html_of_a_real_run_in_a_browser(pytester, project, server_factory, tmp_path_factory):
    """What a person sees in the HTML a pytest run wrote: both programs, their examples, the misses."""
    from .chromium import Chromium, find_chromium

    need("chromium", "no chromium executable" if find_chromium() is None else None, CHROMIUM_INSTALL)
    assert run(pytester, server_factory(make_responder()), MODES["xdist"], "--dspex-compile").ret == 0
    project(threshold=0.95)
    wrong = server_factory(make_responder(wrong={3}, garbage={4}))
    assert run(pytester, wrong, MODES["xdist"], "--dspex-html=report.html").ret == 1
    with Chromium.launch(tmp_path_factory.mktemp("chromium-profile")) as browser:
        page = browser.new_page()
        page.goto((pytester.path / "report.html").as_uri())
        assert page.evaluate("document.body.dataset.ready") == "true"
        summary = page.evaluate("Array.from(document.querySelectorAll('#summary tbody tr')).map(tr => tr.innerText)")
        assert len(summary) == 2 and all("triage" in s and "FAIL" in s for s in summary)
        assert "failed" in page.evaluate("document.getElementById('status').innerText")
        for section in ("#p0", "#p1"):
            assert page.evaluate(f"document.querySelectorAll('{section} table.examples tbody tr').length") == 10
            page.evaluate(f"document.querySelector('{section} [data-filter=miss]').click()")
            shown = page.evaluate(
                f"Array.from(document.querySelectorAll('{section} table.examples tbody tr')).map(tr => tr.innerText)"
            )
            assert len(shown) == 2 and any("case 3" in s for s in shown) and any("case 4" in s for s in shown)
        meta = page.evaluate("document.querySelector('header dl').innerText")
        assert "fake-model" in meta and "127.0.0.1" in meta and CANARY not in meta and "user" not in meta
        assert page.evaluate("performance.getEntriesByType('resource').length") == 0


def _commit_all(path: Path) -> str:
    """``git init`` the project, commit every file, return the commit (skips without git)."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git executable")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True).stdout.strip()


def test_run_metadata_names_the_git_commit(pytester, project, server_factory):
    head = _commit_all(pytester.path)
    server = server_factory(make_responder(zero_shot_ok=True))
    result = run(pytester, server, MODES["no-xdist"], "--dspex-missing-golden=zero-shot", "--dspex-report=r.json", "--dspex-markdown=r.md")
    assert result.ret == 0
    assert json.loads((pytester.path / "r.json").read_text())["git_commit"] == head
    assert f"commit {head[:12]}" in (pytester.path / "r.md").read_text(encoding="utf-8")


def test_the_reports_say_when_the_commit_does_not_hold_what_ran(pytester, project, server_factory, mode):
    """Trial12 T12-4: a run made on edited files (a prompt edited, pytest run before the commit) named the
    commit alone in every report: a reader signs it believing it describes the commit."""
    head = _commit_all(pytester.path)
    (pytester.path / "notes.txt").write_text("an untracked file is not what ran\n")
    server = server_factory(make_responder(zero_shot_ok=True))
    reports = ("--dspex-missing-golden=zero-shot", "--dspex-report=r.json", "--dspex-markdown=r.md", "--dspex-html=r.html")
    clean = run(pytester, server, mode, *reports)
    assert clean.ret == 0, clean.stdout.str()
    assert json.loads((pytester.path / "r.json").read_text())["git_dirty"] is False
    assert f"commit {head[:12]} · pytest-dspex" in (pytester.path / "r.md").read_text(encoding="utf-8")
    assert "uncommitted" not in (pytester.path / "r.md").read_text(encoding="utf-8") + (pytester.path / "r.html").read_text(encoding="utf-8")
    project(threshold=0.7)  # the user's edit, not committed
    edited = run(pytester, server, mode, *reports)
    assert edited.ret == 0, edited.stdout.str()
    data = json.loads((pytester.path / "r.json").read_text())
    assert (data["git_commit"], data["git_dirty"]) == (head, True)
    assert f"commit {head[:12]} (uncommitted changes)" in (pytester.path / "r.md").read_text(encoding="utf-8")
    assert f"{head} (uncommitted changes)" in (pytester.path / "r.html").read_text(encoding="utf-8")


def test_the_reports_of_a_run_that_stopped_early_say_so_never_passed(pytester, project, server_factory):
    """trial 4 F2: -x (or Ctrl-C) after one program was gated: the markdown read "⚠️ 1 program passed" and the
    HTML "no program was evaluated", neither saying the run stopped (only the JSON's ``stopped`` did)."""
    fake = server_factory(make_responder())
    project(0.0)  # zero-shot on the fake server scores nothing: the gate passes on its threshold
    pytester.makepyfile(test_u_fails="def test_fails():\n    assert False\n")  # after test_triage.py
    pytester.makepyfile(test_w_later="def test_later():\n    pass\n")  # never runs (T6-6: a test left out)
    result = run(pytester, fake, ["-p", "no:xdist"], "-x", "--dspex-missing-golden=zero-shot", "--dspex-html=r.html",
                 "--dspex-markdown=r.md", "--dspex-report=r.json", "test_triage.py", "test_u_fails.py",
                 "test_w_later.py")  # fmt: skip
    assert result.ret == 1, result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert report["programs"] and report["stopped"].startswith("the run stopped early")
    md = (pytester.path / "r.md").read_text(encoding="utf-8")
    headline = md.splitlines()[0]
    assert headline.startswith("### ⚠️ pytest-dspex: incomplete run: the run stopped early: stopping after 1 failures"), md
    assert "not every test ran" in headline and "1 program passed" in headline  # what was gated before it
    page = (pytester.path / "r.html").read_text(encoding="utf-8")
    status = page.split('id="status">')[1].split("</span>")[0]
    assert status.startswith("incomplete run: the run stopped early: stopping after 1 failures"), status
    assert "no program was evaluated" not in page


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_x_stopping_on_the_last_test_is_a_complete_run(pytester, project, server_factory, xdist):
    """New-user trial 6, T6-6: ``-x`` whose failure was the last test left nothing out, yet every report
    said "incomplete run: the run stopped early: stopping after 1 failures; not every test ran"."""
    fake = server_factory(make_responder())
    project(0.0)
    pytester.makepyfile(test_u_fails="def test_fails():\n    assert False\n")  # after test_triage.py: the last
    result = run(pytester, fake, xdist, "-x", "--dspex-missing-golden=zero-shot", "--dspex-markdown=r.md",
                 "--dspex-report=r.json", "test_triage.py", "test_u_fails.py")  # fmt: skip
    out = result.stdout.str()
    assert result.ret in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED), out
    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert report["complete"] is True and report["stopped"] in (None, ""), report["stopped"]
    assert report["programs"] and all(p["verdict"]["passed"] for p in report["programs"])
    headline = (pytester.path / "r.md").read_text(encoding="utf-8").splitlines()[0]
    assert "incomplete" not in headline and "not every test ran" not in headline, headline
    assert "incomplete report" not in out


OTHER_PROGRAM = """
import pytest
import pytest_dspex as dspex

@pytest.mark.dspex_program(dspex.Predict("message -> team"), name="other")
@pytest.mark.dspex_metric(lambda e, p, t=None: True, threshold=0.0)
def test_other(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")
"""


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "1"]], ids=["no-xdist", "n1"])
def test_a_run_that_stopped_early_names_the_programs_it_never_gated(pytester, project, server_factory, xdist):
    """trial 4 F3 (known since trial 3): after -x or Ctrl-C the table listed what was gated and nothing said
    that another program's tests never ended (under xdist the controller collects nothing: a worker tells it)."""
    fake = server_factory(make_responder())
    project(0.0)
    pytester.makepyfile(test_u_fails="def test_fails():\n    assert False\n")  # after test_triage.py
    pytester.makepyfile(test_v_other=OTHER_PROGRAM)  # never runs
    result = run(pytester, fake, xdist, "-x", "--dspex-missing-golden=zero-shot", "--dspex-markdown=r.md",
                 "--dspex-report=r.json", "test_triage.py", "test_u_fails.py", "test_v_other.py")  # fmt: skip
    out = result.stdout.str()
    assert result.ret in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED), out  # xdist's -x: interrupted
    result.stdout.fnmatch_lines(["*other: not gated (the run stopped early: stopping after 1 failures): "
                                 "test_v_other.py::test_other gave no verdict*"])  # fmt: skip
    assert "triage: not gated" not in out  # gated before the stop: its rows say so
    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert report["not_gated"] == {"other": ["test_v_other.py::test_other"]}
    assert (pytester.path / "r.md").read_text(encoding="utf-8").splitlines()[0].endswith("; not gated: other")
