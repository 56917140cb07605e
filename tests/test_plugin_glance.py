"""Reports a reviewer reads at a glance (issue 23), through pytest: words that agree, baseline on the
shared examples, normalised paths, a table that fits 120 columns, no "vs golden" against a golden
the run has just written."""

from __future__ import annotations

import json

import pytest

from .test_plugin import MODES, TRIAGE_PROGRAM, make_responder, rows

BOTH = (
    TRIAGE_PROGRAM
    + '''
@pytest.mark.dspex_program(triage, name="triage", trainset="../data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
def test_triage(dspex_evaluate):
    dspex_evaluate("../data/dev.jsonl")

@pytest.mark.dspex_program(triage, name="triage", trainset="../data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=THRESHOLD)
@pytest.mark.dspex_dataset("../data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    dspex_predict(dspex_example)
'''
)


@pytest.fixture(params=list(MODES))
def mode(request) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makefile(".jsonl", **{"tests/data/train": rows(10, 100), "tests/data/dev": rows(120, ids=True)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def write(threshold: float = 0.5) -> None:
        path = pytester.path / "tests/triage/test_triage.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BOTH.replace("THRESHOLD", str(threshold)))

    write()
    return write


def run(pytester, server, *args: str) -> pytest.RunResult:
    opts = ["--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, f"--dspex-base-url={server.base_url}", *args, timeout=180)


def dspex_section(out: str) -> list[str]:
    return out.split("= dspex =", 1)[1].splitlines()[1:]


def test_compile_does_not_compare_with_the_golden_it_wrote_and_paths_are_normalised(pytester, project, server_factory, mode):
    fake = server_factory(make_responder())
    result = run(pytester, fake, *mode, "--dspex-compile", "--dspex-report=r.json")
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert "vs golden" not in out  # the golden was just written from this very run
    result.stdout.fnmatch_lines(["golden created: tests/triage/__dspex__/test_triage/triage.json*"])
    report = json.loads((pytester.path / "r.json").read_text())
    assert {row["dataset"] for row in report["programs"]} == {"tests/data/dev.jsonl"}  # not tests/triage/../data
    golden = (pytester.path / "tests/triage/__dspex__/test_triage/triage.json").read_text()
    assert "127.0.0.1" not in golden and "http" not in golden  # the endpoint goes to the run report, not the golden
    assert json.loads(golden)["model"]["name"] == "fake-model" and "127.0.0.1" in json.dumps(report["model"])
    again = run(pytester, fake, *mode)
    assert again.ret == 0 and again.stdout.str().count("vs golden") == 2  # a later run compares


def test_both_checks_named_baseline_on_shared_examples_and_the_table_fits(pytester, project, server_factory, mode):
    assert run(pytester, server_factory(make_responder()), *mode, "--dspex-compile").ret == 0
    (pytester.path / "tests/data/dev.jsonl").write_text(rows(130, ids=True))  # the dev set grew since compiling
    project(threshold=0.95)
    worse = server_factory(make_responder(wrong=set(range(0, 130, 7))))  # 19 of 130 wrong, 18 of them shared
    result = run(pytester, worse, *mode, "--dspex-markdown=r.md", "--dspex-html=r.html")
    assert result.ret == 1
    table = [line for line in dspex_section(result.stdout.str()) if line.startswith("triage ")][:2]
    assert len(table) == 2
    for line in table:
        assert "1.000 (-0.150)" in line, line  # the golden's score on the 120 shared examples, not "-"
        assert line.endswith("FAIL"), line
    assert max(len(line) for line in dspex_section(result.stdout.str())[:4]) <= 120
    # the failed gate's sentence is said once, under FAILURES, naming both checks
    result.stdout.fnmatch_lines([
        "dspex gate FAILED for 'triage': score 0.854*below threshold (0.854 < 0.950); and regression against the golden: 18 of 120 shared examples went pass -> fail*",
    ])  # fmt: skip
    md = (pytester.path / "r.md").read_text()
    assert "below threshold (0.854 &lt; 0.95); regressed: 18 of 120 shared examples worse" in md
    assert "| triage | dataset | test\\_triage.py::test\\_triage |" in md and "| triage | per-example | test\\_triage.py::test\\_each |" in md
    assert "1 of 1 program failed (2 tests)" in md
    html = (pytester.path / "r.html").read_text()
    assert "FAIL: below threshold (0.854 &lt; 0.95); regressed: 18 of 120 shared examples worse" in html
    assert "below_threshold" not in html.split("<script", 1)[0]  # words, not the code


def test_a_different_temperature_is_named_and_repeats_at_zero_are_flagged(pytester, project, server_factory, mode):
    fake = server_factory(make_responder())
    assert run(pytester, fake, *mode, "--dspex-compile").ret == 0  # at temperature 0
    worse = server_factory(make_responder(wrong=set(range(0, 120, 5))))
    hot = run(pytester, worse, *mode, "--dspex-temperature=0.7")
    assert hot.ret == 1
    out = hot.stdout.str()
    assert "sampled at temperature 0.7, the golden at 0: a difference from the golden may be the sampling" in out
    hot.stdout.fnmatch_lines(["*note: sampled at temperature 0.7, the golden at 0*"])  # said once, beside the failed gate
    assert "--dspex-repeats" not in out
    repeated = run(pytester, fake, *mode, "--dspex-repeats=2", "-k", "test_triage and not each")
    repeated.stdout.fnmatch_lines(["dspex: --dspex-repeats=2 at temperature 0: a greedy model gives every repeat the same answer*"])
    assert "repeats=2 at temperature" not in run(pytester, fake, *mode, "--dspex-repeats=2", "--dspex-temperature=0.5", "-k", "not each").stdout.str()
