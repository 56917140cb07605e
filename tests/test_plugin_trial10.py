"""Trial 10 (a new user's first runs on a noisy endpoint): what a run that did not gate every program
says about the goldens it did not reach, and what a budget-stopped run says about its comparison.

Every scenario runs with ``-n 2`` and with ``-p no:xdist`` (a crashed worker: with ``-n 2`` only)."""

from __future__ import annotations

import json
import re
from html import unescape

from .test_plugin import TRIAGE_PROGRAM, fake, mode, project, run  # noqa: F401

# two programs in one test module: ``router`` (a whole-dataset test) and ``triage`` (per-example)
TWO_PROGRAMS = TRIAGE_PROGRAM + '''
class Router(dspex.Signature):
    """Route a customer message to the team that should handle it."""
    message: str = dspex.InputField()
    team: str = dspex.OutputField()

router = dspex.Predict(Router)

@pytest.mark.dspex_program(router, name="router", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
def test_router(dspex_evaluate):
    dspex_evaluate("data/dev.jsonl")

MIDDLE

@pytest.mark.dspex_program(triage, name="triage", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.8)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_triage_each(dspex_example, dspex_predict):
    assert dspex_predict(dspex_example).team
'''


def two_programs(write, middle: str = "", *, router_field: str = "team") -> None:
    source = TWO_PROGRAMS.replace("MIDDLE", middle)
    if router_field != "team":  # only Router's output field renamed (its golden goes stale)
        head, tail = source.split("class Router", 1)
        source = head + "class Router" + tail.replace("    team: str = dspex.OutputField()", f"    {router_field}: str = dspex.OutputField()", 1)
    write(source=source)


def test_a_stale_golden_is_not_called_unused(pytester, project, fake, mode):  # noqa: F811
    """T10-1: the test that names the stale golden used it; "golden unused" beside it read as "delete it"."""
    two_programs(project)
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    two_programs(project, router_field="department")
    result = run(pytester, fake, mode, "--dspex-report=r.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*router.json: golden is stale*"])
    assert "golden unused" not in result.stdout.str()
    assert json.loads((pytester.path / "r.json").read_text())["unused_goldens"] == []


def test_a_run_stopped_before_a_test_does_not_call_its_golden_unused(pytester, project, fake, mode):  # noqa: F811
    """T10-1: -x stopped the run before triage's test: its golden was not reached, not unused (the
    JSON report said both, ``not_gated`` and ``unused_goldens``)."""
    two_programs(project)
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    two_programs(project, "def test_a_plain_failure():\n    assert False\n")
    result = run(pytester, fake, mode, "-x", "--dist=loadfile", "--dspex-report=r.json") if "-n" in mode else run(
        pytester, fake, mode, "-x", "--dspex-report=r.json")  # fmt: skip
    assert result.ret in (1, 2)  # xdist says -x as an interrupt
    assert "golden unused" not in result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["complete"] is False and report["unused_goldens"] == []


def test_a_crashed_workers_golden_is_not_called_unused(pytester, project, fake, monkeypatch):  # noqa: F811
    """T10-1: a worker crashed while triage's examples were evaluated: "incomplete", and its golden not "unused"."""
    two_programs(project)
    assert run(pytester, fake, ["-n", "2"], "--dspex-compile").ret == 0
    source = (pytester.path / "test_triage.py").read_text()
    crashing = ("def crash_on_case_3(example, prediction, trace=None):\n    import os\n"
                "    if 'case 3' in example.message and os.environ.get('CRASH'):\n        os._exit(3)\n"
                "    return team_matches(example, prediction)\n\n")
    source = source.replace("@pytest.mark.dspex_metric(team_matches, threshold=0.8)\n@pytest.mark.dspex_dataset",
                            "@pytest.mark.dspex_metric(crash_on_case_3, threshold=0.8)\n@pytest.mark.dspex_dataset")
    project(source=source.replace("class Router", crashing + "class Router"))
    monkeypatch.setenv("CRASH", "1")
    result = run(pytester, fake, ["-n", "2"])
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crashed while*"])
    assert "golden unused" not in result.stdout.str(), result.stdout.str()


def test_an_unused_golden_is_still_listed_beside_a_stale_one(pytester, project, fake, mode):  # noqa: F811
    """The fix exempts the goldens of the selected tests only: one no test gates is still "unused"."""
    two_programs(project)
    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    old = pytester.path / "__dspex__/test_triage/old_program.json"
    old.write_text((pytester.path / "__dspex__/test_triage/triage.json").read_text())
    two_programs(project, router_field="department")
    result = run(pytester, fake, mode)
    result.stdout.fnmatch_lines(["*golden unused: __dspex__/test_triage/old_program.json*"])
    assert "golden unused: __dspex__/test_triage/router.json" not in result.stdout.str()


def test_a_budget_stop_does_not_read_as_a_regression_under_the_table(pytester, project, fake, server_factory, mode):  # noqa: F811
    """T10-2: --dspex-max-calls spent mid-run: the gate said "LM errors … (not a low score)", while the line
    under the table said, in red, "vs golden: regression by the tolerance" (or "regressed") of the answered part."""
    from .test_plugin import make_responder

    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    worse = server_factory(make_responder(wrong=set(range(10))))
    result = run(pytester, worse, mode, "-k", "test_triage and not each", "--dspex-max-calls=5")
    out = result.stdout.str()
    assert result.ret == 1, out
    result.stdout.fnmatch_lines(["*LM errors: * of 10 examples could not be answered (budget: *not a low score*"])
    lines = [t for t in out.splitlines() if "vs golden:" in t]
    assert lines and all("not judged (LM errors decide this gate, not a score)" in t or "none measured" in t for t in lines), out
    assert "vs golden: regress" not in out, out


def flipping_responder(wrong_every: int):
    """A triage model right on every case but case 1, which it gets wrong on its 1st, (1 + wrong_every)th, …
    request: a noisy endpoint whose baseline draws disagree on one example, deterministically."""
    import re

    asked = {"case 1": 0}

    def respond(body):
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        right = "billing" if "charged" in last else "technical"
        case = re.search(r"case (\d+)", last)
        if case is not None and case.group(1) == "1":
            asked["case 1"] += 1
            if (asked["case 1"] - 1) % wrong_every == 0:
                return " technical" if right == "billing" else " billing"
        return f" {right}"

    return respond


def test_a_recompile_of_the_same_program_on_a_noisy_endpoint_leaves_the_golden_untouched(pytester, project, server_factory, mode):  # noqa: F811
    """T10-3: recompiling an unchanged program on a noisy endpoint chose the same demos and instructions, yet
    replaced the golden whenever its baseline draws came out higher ("replaced because this run's baseline
    0.846 is higher than the golden's 0.839", the comparison beside it "no change"): a diff to review for
    nothing. The same program on the same model, gate set and metric now replaces it only when improved."""
    project(threshold=0.1)
    args = ("--dspex-compile", "--dspex-optimizer=labeled", "-k", "test_triage and not each")
    first = run(pytester, server_factory(flipping_responder(2)), mode, *args)  # case 1: 4 of 8 draws wrong
    assert first.ret == 0, first.stdout.str()
    first.stdout.fnmatch_lines(["*baseline measured after the choice on the gate set: 10 examples x 8 draws, score 0.950*"])
    path = pytester.path / "__dspex__/test_triage/triage.json"
    before = path.read_bytes()
    result = run(pytester, server_factory(flipping_responder(3)), mode, *args)  # 3 of 8 wrong: 0.9625
    assert result.ret == 0, result.stdout.str()
    assert path.read_bytes() == before, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*golden unchanged: __dspex__/test_triage/triage.json*same demos and instructions as the golden file, on the "
        "same model and gate set: this run's baseline 0.963 against the golden's 0.950 is no significant change*",
        "*this run vs the golden's baseline: no change*",
    ])  # fmt: skip
    forced = run(pytester, server_factory(flipping_responder(3)), mode, *args, "--dspex-force")
    assert forced.ret == 0 and path.read_bytes() != before


def alternating_responder(cases: set[int]):
    """Right on every case but ``cases``, which it gets wrong on its 1st, 3rd, 5th … request for each: a noisy
    endpoint (draws that disagree) whose first answers are all wrong, deterministically."""
    import re

    asked: dict[int, int] = {}

    def respond(body):
        last = body["messages"][-1]["content"].rsplit("Message:", 1)[-1]
        right = "billing" if "charged" in last else "technical"
        found = re.search(r"case (\d+)", last)
        case = int(found.group(1)) if found else -1
        if case in cases:
            asked[case] = asked.get(case, 0) + 1
            if asked[case] % 2 == 1:
                return " technical" if right == "billing" else " billing"
        return f" {right}"

    return respond


def test_an_unchanged_programs_chance_failure_of_its_threshold_says_so(pytester, project, server_factory, mode):  # noqa: F811
    """T10-4: 1 run in 8 of an unchanged program failed "below threshold (0.775 < 0.800)" on a noisy endpoint,
    the paired comparison beside it "no change": the failure now says that the golden's baseline is within
    the endpoint's own noise of the threshold, so it does not read as a quality drop."""
    project(threshold=0.75)
    args = ("--dspex-optimizer=labeled", "-k", "test_triage and not each")
    compiled = run(pytester, server_factory(alternating_responder({0, 1, 2, 3})), mode, "--dspex-compile", *args)
    # (its own gate, after the 8 draws, may fail the floor by the same chance)
    compiled.stdout.fnmatch_lines(["*10 examples x 8 draws, score 0.800*"])
    result = run(pytester, server_factory(alternating_responder({0, 1, 2, 3})), mode, *args)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*dspex gate FAILED for 'triage': score 0.600*below threshold (0.600 < 0.750); the paired comparison with "
        "the golden says no change (delta *): the golden's baseline 0.800 is within this endpoint's own noise (+-*) "
        "of the threshold 0.75, so the unchanged program falls below it in some runs*",
    ])  # fmt: skip


def test_an_instructions_diff_is_said_once_in_a_failing_run(pytester, project, fake, server_factory, mode):  # noqa: F811
    """T10-6: only the instructions edited, and the gate regressed: the diff was printed under FAILURES (the
    whole-dataset test's failure) and again under the table (README: "an instructions diff once per program").
    It stays with the failure that it explains; the line under the table points there. With --tb=no (no
    FAILURES) it is under the table, once."""
    from .test_plugin import TEST_FILE, make_responder
    from .test_plugin_terminal_once import DOC

    assert run(pytester, fake, mode, "--dspex-compile").ret == 0
    project(source=TEST_FILE.replace(DOC, "Route a customer message to the right team."))
    worse = server_factory(make_responder(wrong=set(range(6))))  # 6 of 10 pass -> fail: regressed
    result = run(pytester, worse, mode, "--dspex-markdown=s.md", "--dspex-html=r.html")
    out = result.stdout.str()
    assert result.ret == 1, out
    failures, summary = out.split("short test summary info")[0].split("= dspex =", 1)
    assert out.count("+Route a customer message to the right team.") == 1, out
    assert out.count("triage: the instructions differ from the golden's") == 1, out
    assert "+Route a customer message to the right team." in failures, out
    assert "triage: instructions differ from the golden's: the diff is under FAILURES (test_triage.py::test_triage)" in summary, out
    assert (pytester.path / "s.md").read_text().count("+Route a customer message to the right team.") == 1
    html = (pytester.path / "r.html").read_text()  # once (each test's section showed it), the other points there
    assert html.count("+Route a customer message to the right team.") == 1 and 'the diff is in <a href="#p' in html
    quiet = run(pytester, worse, mode, "--tb=no").stdout.str()
    assert quiet.count("+Route a customer message to the right team.") == 1, quiet
    assert quiet.count("triage: the instructions differ from the golden's") == 1, quiet
    assert "the diff is under FAILURES" not in quiet, quiet


def test_a_threshold_above_the_goldens_own_baseline_says_so(pytester, project, server_factory, mode):  # noqa: F811
    """T10-6: the threshold raised to 0.95 over a golden whose baseline is 0.800: every run of the unchanged
    program fails "below threshold", and nothing said that the golden itself never met it."""
    from .test_plugin import make_responder

    project(threshold=0.5)
    server = server_factory(make_responder(wrong={1, 2}))  # 8 of 10: the golden's baseline 0.800
    assert run(pytester, server, mode, "--dspex-compile").ret == 0
    project(threshold=0.95)
    result = run(pytester, server, mode, "--dspex-report=r.json", "--dspex-markdown=s.md", "--dspex-html=r.html")
    out = result.stdout.str()
    assert result.ret == 1, out
    said = "the golden's own baseline 0.800 is below the threshold 0.95: lower the threshold or recompile (pytest --dspex-compile=triage)"
    result.stdout.fnmatch_lines([f"*dspex gate FAILED for 'triage'*below threshold (0.800 < 0.950); {said}*"])
    assert len(said) <= 120 + len("triage") and max(len(t) for t in out.splitlines() if t.startswith("triage ")) <= 120
    reasons = [p["verdict"]["reason"] for p in json.loads((pytester.path / "r.json").read_text())["programs"]]
    assert reasons and all(said in r for r in reasons), reasons
    short = "below threshold (0.800 < 0.95), as is the golden's own baseline 0.800: lower the threshold or recompile"
    for name in ("s.md", "r.html"):  # each report's verdict words (markdown and HTML escape the text: unescaped)
        assert short in unescape((pytester.path / name).read_text()), name
    quiet = run(pytester, server, mode, "--tb=no").stdout.str()  # no FAILURES: the sentence under the table says it
    assert short in quiet, quiet


def test_the_chance_threshold_sentence_is_in_markdown_and_html(pytester, project, server_factory, mode):  # noqa: F811
    """T10-4's leftover: the terminal and JSON said that an unchanged program's threshold failure was within the
    endpoint's own noise; the markdown and HTML verdicts kept only "FAIL: below threshold"."""
    project(threshold=0.75)
    args = ("--dspex-optimizer=labeled", "-k", "test_triage and not each")
    compiled = run(pytester, server_factory(alternating_responder({0, 1, 2, 3})), mode, "--dspex-compile", *args)
    compiled.stdout.fnmatch_lines(["*10 examples x 8 draws, score 0.800*"])
    result = run(pytester, server_factory(alternating_responder({0, 1, 2, 3})), mode, *args, "--dspex-markdown=s.md",
                 "--dspex-html=r.html")  # fmt: skip
    assert result.ret == 1, result.stdout.str()
    said = re.compile(r"FAIL: below threshold \(0\.600 < 0\.75\), within this endpoint's own noise \(\+-0\.\d+\) of the "
                      r"golden's baseline 0\.800 \(paired: no change\)")  # fmt: skip
    for name in ("s.md", "r.html"):  # each report's verdict words (markdown and HTML escape the text: unescaped)
        text = unescape((pytester.path / name).read_text())
        assert said.search(text), text


def test_an_in_sample_goldens_provenance_is_said_once_in_a_failing_run(pytester, project, fake, server_factory, mode):  # noqa: F811
    """A golden chosen in-sample (``--dspex-select=in-sample``) warns where its numbers come from: in a run
    whose whole-dataset test failed, that line was under FAILURES (the failure's own text) and again under
    the table. It stays with the failure; with --tb=no (no FAILURES) it is under the table, once."""
    from .test_plugin import make_responder

    assert run(pytester, fake, mode, "--dspex-compile", "--dspex-select=in-sample").ret == 0
    worse = server_factory(make_responder(wrong=set(range(6))))  # 6 of 10 pass -> fail: regressed
    result = run(pytester, worse, mode)
    out = result.stdout.str()
    assert result.ret == 1, out
    failures = out.split("short test summary info")[0].split("= dspex =", 1)[0]
    said = "golden: chosen on the gate's own examples (IN-SAMPLE"
    assert out.count(said) == 1 and said in failures, out
    quiet = run(pytester, worse, mode, "--tb=no").stdout.str()
    assert quiet.count(said) == 1, quiet
