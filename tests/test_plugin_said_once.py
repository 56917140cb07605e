"""One failure per cause (issue 23): a missing or stale golden, or a bad dataset, is said once.

A per-example test of 60 examples whose program was renamed, whose test file moved, or whose golden
went stale fails its first item once (naming the orphaned golden that looks like the missing one);
its other items are skipped and counted; no traceback is chained, no path is absolute.
"""

from __future__ import annotations

import pytest

from pytest_dspex.testing.fake_server import triage_responder

from .test_plugin import MODES, TRIAGE_PROGRAM, make_responder, rows

EACH = (
    TRIAGE_PROGRAM
    + """
@pytest.mark.dspex_program(triage, name="NAME", trainset="data/train.jsonl")
@pytest.mark.dspex_metric(team_matches, threshold=0.5)
@pytest.mark.dspex_dataset("data/dev.jsonl")
def test_each(dspex_example, dspex_predict):
    assert dspex_predict(dspex_example).team
"""
)


@pytest.fixture(params=list(MODES))
def mode(request) -> list[str]:
    return MODES[request.param]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makefile(".jsonl", **{"tests/data/train": rows(10, 100), "tests/data/dev": rows(60, ids=True)})
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")

    def write(name: str = "triage", where: str = "tests/test_triage.py", source: str = EACH) -> None:
        path = pytester.path / where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source.replace("NAME", name))

    return write


def run(pytester: pytest.Pytester, server, *args: str) -> pytest.RunResult:
    opts = ["--dspex-model=fake-model", "--dspex-cache=off", "--dspex-retries=0", "-p", "no:cacheprovider"]
    return pytester.runpytest_subprocess(*opts, f"--dspex-base-url={server.base_url}", *args, timeout=120)


@pytest.fixture
def fake(server_factory):
    return server_factory(make_responder())


def compiled(pytester, project, fake) -> None:
    project()
    done = run(pytester, fake, "-p", "no:xdist", "--dspex-compile")
    assert done.ret == 0, done.stdout.str()
    assert (pytester.path / "tests/__dspex__/test_triage/triage.json").exists()


def failure_section(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "FAILURES" in line)
    return lines[start:]


class TestSaidOnce:
    def test_renamed_program_fails_once_naming_the_orphaned_golden(self, pytester, project, fake, mode):
        compiled(pytester, project, fake)
        project(name="triage_v2")
        result = run(pytester, fake, *mode)
        assert result.ret == 1
        result.assert_outcomes(failed=1, skipped=59)
        out = result.stdout.str()
        assert out.count("no golden file for program 'triage_v2'") == 1
        result.stdout.fnmatch_lines([
            "*orphaned golden with this program's fields: tests/__dspex__/test_triage/triage.json;*"
            "*git mv tests/__dspex__/test_triage/triage.json tests/__dspex__/test_triage/triage_v2.json*",
            "*its other 59 selected example(s) are skipped*",
        ])  # fmt: skip
        assert len(failure_section(out)) <= 30, out
        assert "During handling" not in out

    def test_skipped_items_point_at_the_one_failure(self, pytester, project, fake):
        compiled(pytester, project, fake)
        project(name="triage_v2")
        result = run(pytester, fake, "-p", "no:xdist", "-rs")
        result.stdout.re_match_lines(
            [
                r"SKIPPED \[59\] tests/test_triage.py:\d+: program 'triage_v2' not ready: reported once, at tests/test_triage.py::test_each\[ex-0\]$"
            ]
        )

    def test_moved_test_file_names_the_golden_left_behind(self, pytester, project, fake, mode):
        compiled(pytester, project, fake)
        (pytester.path / "tests/test_triage.py").unlink()
        project(where="tests/unit/test_triage.py", source=EACH.replace("data/", "../data/"))
        result = run(pytester, fake, *mode)
        assert result.ret == 1
        result.assert_outcomes(failed=1, skipped=59)
        result.stdout.fnmatch_lines([
            "*no golden file for program 'triage': tests/unit/__dspex__/test_triage/triage.json*",
            "*git mv tests/__dspex__/test_triage/triage.json tests/unit/__dspex__/test_triage/triage.json*",
        ])  # fmt: skip

    def test_a_golden_still_used_by_another_module_is_named_in_use(self, pytester, project, fake, mode):
        # the same program gated from a second test module: the first module's golden is in use there,
        # so moving it (the orphan hint) would break that test; say so and how to get this module's own
        compiled(pytester, project, fake)
        project(where="tests/test_again.py")
        result = run(pytester, fake, *mode, "tests/test_again.py")
        assert result.ret == 1
        out = result.stdout.str()
        assert "an orphaned golden" not in out and "git mv" not in out, out
        result.stdout.fnmatch_lines([
            "*no golden file for program 'triage': tests/__dspex__/test_again/triage.json*",
            "*the same program has a golden for tests/test_triage.py (tests/__dspex__/test_triage/triage.json), still in use there*"
            "*pytest --dspex-compile=triage tests/test_again.py*"
            "*cp tests/__dspex__/test_triage/triage.json tests/__dspex__/test_again/triage.json*",
        ])  # fmt: skip
        assert (pytester.path / "tests/__dspex__/test_triage/triage.json").exists()

    def test_a_golden_of_another_shape_is_not_named(self, pytester, project, fake):
        compiled(pytester, project, fake)
        other = EACH.replace("team: str = dspex.OutputField()", "queue: str = dspex.OutputField()")
        project(
            name="router", source=other.replace("prediction.team", "prediction.queue").replace(".team\n", ".queue\n")
        )
        result = run(pytester, fake, "-p", "no:xdist")
        assert result.ret == 1
        assert "orphaned" not in result.stdout.str()
        result.stdout.fnmatch_lines(["*run `pytest --dspex-compile` (or --dspex-compile=router)*"])

    def test_stale_golden_fails_once_with_a_relative_path_and_no_chained_traceback(self, pytester, project, fake, mode):
        compiled(pytester, project, fake)
        stale = EACH.replace(
            "team: str = dspex.OutputField()", "team: str = dspex.OutputField()\n    urgency: str = dspex.OutputField()"
        )
        project(source=stale)
        result = run(pytester, fake, *mode)
        assert result.ret == 1
        result.assert_outcomes(failed=1, skipped=59)
        out = result.stdout.str()
        assert out.count("golden is stale") == 1, out
        assert "During handling" not in out
        assert str(pytester.path / "tests") not in out
        result.stdout.fnmatch_lines(["*tests/__dspex__/test_triage/triage.json: golden is stale*'urgency'*"])

    def test_a_bad_dataset_row_is_said_once(self, pytester, project, fake, mode):
        project()
        (pytester.path / "tests/data/dev.jsonl").write_text('{"message": "a", "team": "billing"}\n{not json\n')
        result = run(pytester, fake, *mode)
        assert result.ret != 0
        out = result.stdout.str()
        assert "During handling" not in out
        assert out.count("dev.jsonl:2") == 1, out
        result.stdout.fnmatch_lines(["*test_each?dataset-error?*", "tests/data/dev.jsonl:2: not valid JSON*"])
        assert str(pytester.path) not in out.split("ERRORS", 1)[1]


class TestMissEvidence:
    """A miss in per-example mode shows expected vs got (and the parse error): -rA and JUnit (issue 23)."""

    def test_rA_and_junit_show_expected_and_got(self, pytester, project, server_factory, mode):
        import xml.etree.ElementTree as ET

        project()
        server = server_factory(make_responder(zero_shot_ok=True, wrong={3}, garbage={5}))
        args = ["--dspex-missing-golden=zero-shot", "-rA", "-k", "ex-3 or ex-4 or ex-5", "--junitxml=j.xml"]
        result = run(pytester, server, *mode, *args)
        out = result.stdout.str()
        result.stdout.fnmatch_lines([
            "*= MISSES =*",
            "*test_each?ex-3?*",
            "example ex-3",
            "  input    message: I was charged twice, case 3",
            "  expected team: billing",
            "  got      team: technical",
            "*test_each?ex-5?*",
            "  expected team: billing",
            "  got      team: -",
            "  parse error: *",
        ])  # fmt: skip
        assert "test_each[ex-4]" not in out.split("MISSES", 1)[1].split("dspex", 1)[0]  # a pass is not a miss
        props = {
            case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
            for case in ET.parse(pytester.path / "j.xml").getroot().iter("testcase")
        }
        assert props["test_each[ex-3]"]["dspex_expected"] == "billing"
        assert props["test_each[ex-3]"]["dspex_got"] == "technical"
        assert props["test_each[ex-5]"]["dspex_got"] == "-" and props["test_each[ex-5]"]["dspex_error_kind"] == "parse"
        assert "dspex_expected" not in props["test_each[ex-4]"]

    def test_after_an_output_rename_got_shows_what_the_prediction_has(self, pytester, project, server_factory, mode):
        # trial finding 4: the output renamed team -> department, the dataset still says team: the miss
        # said "got team: -" as if nothing was parsed, though the model answered department: other
        renamed = EACH.replace("team: str = dspex.OutputField()", "department: str = dspex.OutputField()")
        renamed = renamed.replace("example.team == prediction.team", "example.team == prediction.department")
        project(source=renamed.replace("dspex_predict(dspex_example).team", "dspex_predict(dspex_example).department"))
        server = server_factory(lambda body: triage_responder(body).replace("technical", "other").replace("team", "department"))
        result = run(pytester, server, *mode, "--dspex-missing-golden=zero-shot", "-rm", "-k", "ex-1")
        result.stdout.fnmatch_lines([
            "*= MISSES =*",
            "*test_each?ex-10?*",
            "example ex-10",
            "  input    message: the app crashes, case 10",
            "  expected team: technical",
            "  got      team: - (no such field in the prediction)",
            "  got      department: other",
        ])  # fmt: skip

    def test_without_rA_no_miss_section(self, pytester, project, server_factory):
        project()
        server = server_factory(make_responder(zero_shot_ok=True, wrong={3}))
        result = run(pytester, server, "-p", "no:xdist", "--dspex-missing-golden=zero-shot", "-k", "ex-3")
        assert "MISSES" not in result.stdout.str()
        assert run(pytester, server, "-p", "no:xdist", "--dspex-missing-golden=zero-shot", "-k", "ex-3", "-rm").stdout.str().count("expected team: billing") == 1
